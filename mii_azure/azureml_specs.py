"""The Azure ML specifications of one deployment of a package: endpoint.yml and deployment.yml.

One source for both ways of deploying: ``mii_azure.deploy(..., sku=...)`` loads these same files with
azure-ai-ml's own loaders before it submits them, and a dry run (or ``mii-azure package``) leaves them
for ``az ml online-endpoint/online-deployment create -f``. Pure: no azure import, no network.

Names are chosen at deploy time: a package deploys under any endpoint and deployment name, and the
endpoint's name is what responses report as their ``model``.

Routes: the environment carries an ``inference_config`` (liveness, readiness and scoring routes on
the launcher's port; :func:`mii_azure.serving_image.inference_config`), so the image runs the
package's own launcher and the endpoint forwards every path (``/score``, ``/v1/...``) to it.

Probes: the container must not be restarted while it loads. The expected load time is
``LOAD_BASE_S + LOAD_S_PER_GB x (GB of weights per instance)`` (+ ``INJECTION_S`` with DeepSpeed
kernel injection); the liveness and readiness probes start after it, then tolerate
``PROBE_FAILURES`` failed probes ``PROBE_PERIOD_S`` apart.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import HUB_MODEL_ENV, ServingSettings
from .errors import ConfigError
from .models import ModelSource
from .planner import OptimizationPlan
from .serving_image import inference_config
from .sku_choice import AZURE_MAX_REQUEST_TIMEOUT_S, check_request_timeout

__all__ = [
    "AzureNames",
    "DeploymentSpec",
    "deployment_spec",
    "endpoint_spec",
    "expected_load_s",
    "write_specs",
    "az_commands",
    "AZURE_MAX_REQUEST_TIMEOUT_MS",
    "CPU_INSTANCE_TYPE",
    "DEFAULT_DEPLOYMENT",
]

#: Azure ML caps a managed online deployment's request timeout at 180 s.
AZURE_MAX_REQUEST_TIMEOUT_MS = AZURE_MAX_REQUEST_TIMEOUT_S * 1000
#: The instance type of a package planned for a CPU (this machine): a general-purpose size.
CPU_INSTANCE_TYPE = "Standard_DS3_v2"
DEFAULT_DEPLOYMENT = "blue"
LOAD_BASE_S = 120
LOAD_S_PER_GB = 12
INJECTION_S = 60
PROBE_PERIOD_S = 10
PROBE_TIMEOUT_S = 10
PROBE_FAILURES = 30
#: Azure ML's largest probe initial delay is not documented as smaller than this; stay under it.
MAX_INITIAL_DELAY_S = 3600
#: Secret references Azure ML resolves in a deployment's environment variables (secret injection).
SECRET_REFERENCE_PREFIX = "${{azureml://connections/"



@dataclass(frozen=True)
class AzureNames:
    """The endpoint and deployment one package is deployed as."""

    endpoint: str
    deployment: str = DEFAULT_DEPLOYMENT


@dataclass(frozen=True)
class DeploymentSpec:
    """Everything a deployment.yml says that the deploy path also needs as values."""

    names: AzureNames
    instance_type: str
    instance_count: int
    request_timeout_ms: int
    max_concurrent_requests_per_instance: int
    environment_variables: dict[str, str]
    probe_initial_delay_s: int
    notes: tuple[str, ...] = field(default=())


def expected_load_s(plan: OptimizationPlan) -> int:
    """Seconds one instance is expected to need from container start to serving (see the module doc)."""
    weights_gb = plan.memory.weights_gb * plan.tensor_parallel * plan.replicas + plan.memory.offloaded_gb
    seconds = LOAD_BASE_S + LOAD_S_PER_GB * weights_gb + (INJECTION_S if plan.kernel_inject else 0)
    return min(MAX_INITIAL_DELAY_S, int(math.ceil(seconds)))


def deployment_spec(
    manifest: Any,
    names: AzureNames,
    *,
    instance_count: int = 1,
    request_timeout_s: Optional[float] = None,
    environment_variables: Optional[dict[str, str]] = None,
) -> DeploymentSpec:
    """The values of one deployment of the package whose manifest is ``manifest``.

    ``environment_variables`` are added to the deployment's; secrets among them must be workspace
    connection references (``${{azureml://connections/<name>/credentials/key}}``), never literals.
    """
    from .packaging import worker_threads

    plan: OptimizationPlan = manifest.plan
    settings: ServingSettings = manifest.settings

    if instance_count < 1:
        raise ConfigError(f"instance_count={instance_count}: a deployment needs at least one instance.", conflict="instance_count")
    timeout_ms, note = check_request_timeout(
        request_timeout_s if request_timeout_s is not None else settings.request_timeout_s,
        explicit=request_timeout_s is not None,
    )
    extra = dict(environment_variables or {})
    literal_secrets = sorted(key for key in extra if _looks_secret(key) and not extra[key].startswith(SECRET_REFERENCE_PREFIX))
    if literal_secrets:
        raise ConfigError(
            f"Environment variable(s) {', '.join(literal_secrets)} look like secrets but are given as literal "
            "values, which would land in the deployment's definition. Store the secret in a workspace connection "
            "and pass its reference instead, e.g. '${{azureml://connections/<connection>/credentials/key}}'.",
            variables=literal_secrets,
        )
    variables = {
        # Responses report the endpoint's name as their model.
        "MII_AZURE_DEPLOYMENT_NAME": names.endpoint,
        "MII_AZURE_TASK": manifest.task,
        # One inference-server worker per model copy; each claims its own GPUs (mii_azure.runtime.replicas).
        "WORKER_COUNT": str(plan.replicas),
        # Threads let concurrent requests reach each copy's batcher (the server's workers are sync otherwise).
        "GUNICORN_CMD_ARGS": f"--threads {worker_threads(plan)}",
        # With Application Insights on, the server would log each response body, which reads a streamed
        # answer whole before sending its first byte.
        "APP_INSIGHTS_LOG_RESPONSE_ENABLED": "false",
        **extra,
    }
    if manifest.model.source is ModelSource.HUB:
        # No weights travel: the scoring script fetches the model from the hub at start-up.
        variables[HUB_MODEL_ENV] = manifest.model.reference
    return DeploymentSpec(
        names=names,
        instance_type=plan.hardware.name if plan.hardware.kind == "gpu" else CPU_INSTANCE_TYPE,
        instance_count=instance_count,
        request_timeout_ms=timeout_ms,
        # Enough to fill every copy's batches.
        max_concurrent_requests_per_instance=max(1, plan.replicas * plan.max_batch_size),
        environment_variables=variables,
        probe_initial_delay_s=expected_load_s(plan),
        notes=(note,) if note else (),
    )


def endpoint_spec(names: AzureNames, *, auth_mode: str = "key", secret_injection: bool = False) -> dict[str, Any]:
    """endpoint.yml (CLI v2 managedOnlineEndpoint schema)."""
    if auth_mode not in ("key", "aml_token"):
        raise ConfigError(
            f"auth_mode={auth_mode!r} is not supported; use 'key' (endpoint keys) or 'aml_token' (Azure ML tokens).",
            conflict="auth_mode",
        )
    spec: dict[str, Any] = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json",
        "name": names.endpoint,
        "auth_mode": auth_mode,
    }
    if secret_injection:
        # The endpoint's identity reads the workspace connections its deployments reference.
        spec["identity"] = {"type": "system_assigned"}
        spec["properties"] = {"enforce_access_to_default_secret_stores": "enabled"}
    return spec


def deployment_yaml(
    spec: DeploymentSpec,
    *,
    model: Any,
    environment: Any,
    code: str,
) -> dict[str, Any]:
    """deployment.yml (CLI v2 managedOnlineDeployment schema) for ``spec``; ``model``, ``environment``
    and ``code`` are as the YAML writes them (relative paths to the YAML file's folder, or asset ids)."""
    probe = {
        "initial_delay": spec.probe_initial_delay_s,
        "period": PROBE_PERIOD_S,
        "timeout": PROBE_TIMEOUT_S,
        "failure_threshold": PROBE_FAILURES,
        "success_threshold": 1,
    }
    document: dict[str, Any] = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
        "name": spec.names.deployment,
        "endpoint_name": spec.names.endpoint,
    }
    if model is not None:
        document["model"] = model
    document.update(
        {
            "code_configuration": {"code": code, "scoring_script": "score.py"},
            "environment": environment,
            "instance_type": spec.instance_type,
            "instance_count": spec.instance_count,
            "environment_variables": dict(spec.environment_variables),
            "request_settings": {
                "request_timeout_ms": spec.request_timeout_ms,
                "max_concurrent_requests_per_instance": spec.max_concurrent_requests_per_instance,
            },
            "liveness_probe": dict(probe),
            "readiness_probe": dict(probe),
        }
    )
    return document


def write_specs(package_dir: Path, manifest: Any, spec: DeploymentSpec, *, auth_mode: str = "key") -> tuple[Path, Path]:
    """Write ``azureml/endpoint.yml`` and ``azureml/deployment.yml`` of the package for ``spec``.

    Paths in them are relative to the ``azureml`` folder, so the package can move; a model whose
    folder could not be linked into the package is referenced by its absolute path.
    """
    import yaml

    folder = package_dir / "azureml"
    folder.mkdir(exist_ok=True)
    secret_injection = any(value.startswith(SECRET_REFERENCE_PREFIX) for value in spec.environment_variables.values())
    endpoint = endpoint_spec(spec.names, auth_mode=auth_mode, secret_injection=secret_injection)
    deployment = deployment_yaml(
        spec,
        model=_model_entry(package_dir, manifest),
        environment=_environment_entry(package_dir, manifest),
        code="..",
    )
    endpoint_file, deployment_file = folder / "endpoint.yml", folder / "deployment.yml"
    endpoint_file.write_text(yaml.safe_dump(endpoint, sort_keys=False), encoding="utf-8")
    deployment_file.write_text(yaml.safe_dump(deployment, sort_keys=False), encoding="utf-8")
    return endpoint_file, deployment_file


def az_commands(endpoint_file: Path, deployment_file: Path, *, first_deployment: bool = True) -> list[str]:
    """The ``az ml`` commands that deploy the written specs (workspace from ``az configure --defaults``)."""
    traffic = " --all-traffic" if first_deployment else ""
    return [
        f"az ml online-endpoint create -f {_shell_path(endpoint_file)}",
        f"az ml online-deployment create -f {_shell_path(deployment_file)}{traffic}",
    ]


def _model_entry(package_dir: Path, manifest: Any) -> Any:
    model = manifest.model
    if model.source is ModelSource.AZUREML:
        if model.reference.startswith("azureml://"):
            return model.reference  # a registry model, used as it is written
        return f"azureml:{model.name}" + (f":{model.version}" if model.version else f"@{model.label or 'latest'}")
    if model.source is ModelSource.HUB:
        return None  # fetched by the scoring script at start-up (MII_AZURE_HUB_MODEL)
    link = package_dir / "model"
    if os.path.lexists(link):
        return {"name": manifest.name, "path": "../model"}
    return {"name": manifest.name, "path": Path(model.linked_from).as_posix()}


def _environment_entry(package_dir: Path, manifest: Any) -> Any:
    build = package_dir / "environment" / "Dockerfile"
    if build.is_file():
        # The image runs the package's launcher; the routes make the endpoint forward every path to it.
        return {"build": {"path": "../environment", "dockerfile_path": "Dockerfile"}, "inference_config": inference_config()}
    return {"image": manifest.image, "conda_file": f"../{manifest.conda_file}"}


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in ("TOKEN", "SECRET", "PASSWORD", "API_KEY", "ACCESS_KEY", "CREDENTIAL"))


def _shell_path(path: Path) -> str:
    text = path.as_posix()
    return f'"{text}"' if " " in text else text
