"""A dry run: the package and its Azure ML YAML for the names given, validated by azure-ai-ml's own
loaders, and the ``az ml`` commands that would deploy them. No workspace, no network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ...autoscale import Autoscale, AutoscalePlan, autoscale_setting_name
from ...azureml_specs import AzureNames, DeploymentSpec, az_commands, deployment_spec, expected_load_s, write_specs
from ...errors import ConfigError
from ...packaging import Package
from .workspace import require_azure

__all__ = ["DryRun", "dry_run"]


@dataclass(frozen=True)
class DryRun:
    """What a deployment would submit: the package, its YAML, and the matching ``az ml`` commands."""

    package: Package
    endpoint_file: Path
    deployment_file: Path
    commands: list[str]
    spec: DeploymentSpec
    notes: tuple[str, ...] = field(default=())
    #: The autoscale setting that would be created (its ``az monitor autoscale`` commands are in ``commands``).
    autoscale: Optional[AutoscalePlan] = None

    def describe(self) -> str:
        """The dry run as text: what would be deployed, where the files are, the commands."""
        plan = self.package.plan
        lines = [
            f"Dry run: {self.spec.names.endpoint}/{self.spec.names.deployment} on {self.spec.instance_count} x "
            f"{self.spec.instance_type} ({plan.dtype}, tensor_parallel={plan.tensor_parallel}, replicas={plan.replicas})",
            *(f"  note: {note}" for note in self.notes),
            f"  package:    {self.package.path}",
            f"  endpoint:   {self.endpoint_file}",
            f"  deployment: {self.deployment_file}",
            "  deploy with (after `az configure --defaults group=<resource group> workspace=<workspace>`):",
            *(f"    {command}" for command in self.commands),
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    def _repr_html_(self) -> str:  # notebooks
        import html

        return f"<pre>{html.escape(self.describe())}</pre>"


def dry_run(
    bundle: Package,
    names: AzureNames,
    *,
    instance_count: int = 1,
    auth_mode: str = "key",
    request_timeout_s: Optional[float] = None,
    environment_variables: Optional[Mapping[str, str]] = None,
    first_deployment: bool = True,
    notes: tuple[str, ...] = (),
    autoscale: Optional[Autoscale] = None,
) -> DryRun:
    """Write ``bundle``'s ``azureml/*.yml`` for ``names`` and check that azure-ai-ml loads them with the
    same fields."""
    require_azure()
    bundle.verify()
    spec = deployment_spec(
        bundle.manifest,
        names,
        instance_count=instance_count,
        request_timeout_s=request_timeout_s,
        environment_variables=dict(environment_variables or {}),
    )
    endpoint_file, deployment_file = write_specs(bundle.path, bundle.manifest, spec, auth_mode=auth_mode)
    _check_loads_back(endpoint_file, deployment_file, spec, auth_mode)
    commands = az_commands(endpoint_file, deployment_file, first_deployment=first_deployment)
    scaling = None
    if autoscale is not None:
        scaling = autoscale.resolve(
            instance_count=spec.instance_count, gpu=bundle.plan.hardware.kind == "gpu", expected_load_s=expected_load_s(bundle.plan)
        )
        endpoint, deployment = names.endpoint, names.deployment
        commands = [
            *commands,
            *scaling.az_commands(
                autoscale_setting_name(endpoint, deployment),
                f'"$(az ml online-deployment show -e {endpoint} -n {deployment} -o tsv --query id)"',
                f'"$(az ml online-endpoint show -n {endpoint} -o tsv --query id)"',
            ),
        ]
        notes = (*notes, scaling.describe())
    return DryRun(
        package=bundle,
        endpoint_file=endpoint_file,
        deployment_file=deployment_file,
        commands=commands,
        spec=spec,
        notes=(*notes, *spec.notes),
        autoscale=scaling,
    )


def _check_loads_back(endpoint_file: Path, deployment_file: Path, spec: DeploymentSpec, auth_mode: str) -> None:
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    endpoint = load_online_endpoint(source=endpoint_file)
    deployment = load_online_deployment(source=deployment_file)
    expected: dict[str, tuple[Any, Any]] = {
        "endpoint name": (endpoint.name, spec.names.endpoint),
        "auth_mode": (endpoint.auth_mode, auth_mode),
        "deployment name": (deployment.name, spec.names.deployment),
        "endpoint_name": (deployment.endpoint_name, spec.names.endpoint),
        "instance_type": (deployment.instance_type, spec.instance_type),
        "instance_count": (deployment.instance_count, spec.instance_count),
        "environment_variables": (dict(deployment.environment_variables or {}), spec.environment_variables),
        "request_timeout_ms": (deployment.request_settings.request_timeout_ms, spec.request_timeout_ms),
        "max_concurrent_requests_per_instance": (
            deployment.request_settings.max_concurrent_requests_per_instance,
            spec.max_concurrent_requests_per_instance,
        ),
        "liveness initial_delay": (deployment.liveness_probe.initial_delay, spec.probe_initial_delay_s),
        "readiness initial_delay": (deployment.readiness_probe.initial_delay, spec.probe_initial_delay_s),
    }
    different = {field: values for field, values in expected.items() if values[0] != values[1]}
    if different:
        raise ConfigError(
            f"azure-ai-ml read {deployment_file} differently from what mii_azure wrote: "
            + "; ".join(f"{field}: read {read!r}, wrote {wrote!r}" for field, (read, wrote) in different.items()),
            fields=sorted(different),
        )
