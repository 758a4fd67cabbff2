"""mii_azure: DeepSpeed-Inference optimized model serving on Azure ML, tested locally first.

The public API is what ``__all__`` lists; everything else is internal.
"""

from .api import deploy, get_deployment, list_deployments, mii_query_handle
from .pipeline import BatchScoreSummary, batch_score
from . import pipeline  # noqa: F401  mii_azure.pipeline.batch_score_component & submit; import azure-ai-ml only when called
from . import mlflow  # noqa: F401  mii_azure.mlflow.log_model & co.; imports mlflow only when called
from .autoscale import Autoscale
from .config import ServingSettings
from .cost import estimate_cost
from .cost_report import CostReport, SkuEstimate
from .deployment import Deployment, TextStream
from .errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    EndpointNotFoundError,
    InvalidModelError,
    MiiAzureError,
    MissingDependencyError,
    ModelLoadError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    ScoringError,
    ServiceUnavailableError,
    SkuDoesNotFitError,
    SkuNotAvailableError,
    TaskMismatchError,
    TooManyRequestsError,
)
from .hardware import Hardware
from .models import TASKS, ModelFacts, ModelRef, ModelSource, resolve_model, resolve_task
from .packaging import Package, package
from .planner import OptimizationPlan, plan
from .pricing import PriceSheet
from .skus import Sku, get_sku
from .workload import ModelShape, Workload

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "TASKS",
    "ModelFacts",
    "ModelRef",
    "ModelSource",
    "ServingSettings",
    "resolve_model",
    "resolve_task",
    "plan",
    "OptimizationPlan",
    "Hardware",
    "Sku",
    "get_sku",
    "deploy",
    "get_deployment",
    "list_deployments",
    "mii_query_handle",
    "Deployment",
    "TextStream",
    "batch_score",
    "BatchScoreSummary",
    "package",
    "Package",
    "estimate_cost",
    "Workload",
    "ModelShape",
    "Autoscale",
    "CostReport",
    "SkuEstimate",
    "PriceSheet",
    "MiiAzureError",
    "ConfigError",
    "TaskMismatchError",
    "SkuNotAvailableError",
    "SkuDoesNotFitError",
    "ModelNotFoundError",
    "InvalidModelError",
    "ModelLoadError",
    "MissingDependencyError",
    "RequestError",
    "BadRequestError",
    "PayloadTooLargeError",
    "ServiceUnavailableError",
    "TooManyRequestsError",
    "RequestTimeoutError",
    "ScoringError",
    "AuthenticationError",
    "EndpointNotFoundError",
]
