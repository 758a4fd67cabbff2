"""The public surface: what `import mii_azure` offers, and what it does not drag in."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import mii_azure
from mii_azure import errors

PUBLIC_API = {
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
}


def test_all_is_pinned():
    assert set(mii_azure.__all__) == PUBLIC_API
    assert len(mii_azure.__all__) == len(PUBLIC_API)
    for name in mii_azure.__all__:
        assert hasattr(mii_azure, name), name


def test_every_error_derives_from_the_root():
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, errors.MiiAzureError), name


def test_errors_carry_their_facts():
    error = errors.PayloadTooLargeError("too many", inputs=40, limit=32)
    assert (error.inputs, error.limit) == (40, 32)
    assert error.facts == {"inputs": 40, "limit": 32}
    assert error.to_body() == {"error": {"code": "payload_too_large", "message": "too many"}}


def test_import_needs_neither_torch_nor_azure():
    code = (
        "import sys, mii_azure, mii_azure.tasks;"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'azure', 'azure.ai.ml') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_wheel_ships_the_scoring_script(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mii_azure-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mii_azure/scoring/score.py" in names
    assert "mii_azure/runtime/service.py" in names
    assert not any(name.startswith(("tests/", "scoring/")) for name in names)
