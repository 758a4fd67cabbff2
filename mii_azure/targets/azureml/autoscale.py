"""Azure Monitor autoscale settings on Azure ML deployments, through azure-mgmt-monitor (imported lazily).

A setting targets the deployment's Resource Manager id; its rules read the deployment's metric (or the
endpoint's, for request latency). Azure keeps an autoscale setting when its target is deleted, and a
later deployment under the same name would inherit it, so deleting a deployment (or an endpoint) deletes
every setting of the resource group that targets it, whoever made it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from ...autoscale import AutoscalePlan, autoscale_setting_name
from ...errors import MissingDependencyError
from .boundary import azure_errors
from .workspace import AZURE_INSTALL, Workspace

__all__ = ["AutoscaleSettings", "describe_setting", "monitor_client", "deployment_resource_id", "endpoint_resource_id", "require_monitor"]

_PROVIDER = "Microsoft.MachineLearningServices"
_TAG = "mii_azure_autoscale"


def require_monitor() -> None:
    """MissingDependencyError naming the install command unless azure-mgmt-monitor imports."""
    try:
        import azure.mgmt.monitor  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"Autoscale needs azure-mgmt-monitor (Azure Monitor's management SDK); install it with: {AZURE_INSTALL}",
            install=AZURE_INSTALL,
        ) from None


def monitor_client(workspace: Workspace) -> Any:
    """A ``MonitorManagementClient`` for the workspace's subscription, on the MLClient's cloud and credential.

    azure-ai-ml (1.35) keeps an MLClient's Resource Manager URL and credential private. The URL is the
    one the MLClient sends its own Resource Manager calls to (``MLClient._base_url``, which follows a
    custom cloud and ``AZUREML_DEV_URL_MFE``), else its cloud's ``resource_manager`` from azure-ai-ml's
    cloud metadata; the token scope is that cloud's Resource Manager, as azure-ai-ml asks for it; the
    credential is :meth:`Workspace.credential`. Only these two know those private names.
    """
    require_monitor()
    from azure.ai.ml._azure_environments import _get_base_url_from_metadata
    from azure.mgmt.monitor import MonitorManagementClient

    ml_client = workspace.ml_client
    cloud = getattr(ml_client, "_cloud", None)
    with azure_errors("find the Azure cloud of the workspace", workspace=workspace.name):
        resource_manager = _get_base_url_from_metadata(cloud_name=cloud).rstrip("/")
    base_url = str(getattr(ml_client, "_base_url", None) or resource_manager).rstrip("/")
    return MonitorManagementClient(
        workspace.credential(),
        str(ml_client.subscription_id),
        base_url=base_url,
        credential_scopes=[f"{resource_manager}/.default"],
    )


def endpoint_resource_id(ml_client: Any, endpoint: str) -> str:
    """The Resource Manager id of ``endpoint`` in the MLClient's workspace."""
    return (
        f"/subscriptions/{ml_client.subscription_id}/resourceGroups/{ml_client.resource_group_name}/providers/"
        f"{_PROVIDER}/workspaces/{ml_client.workspace_name}/onlineEndpoints/{endpoint}"
    )


def deployment_resource_id(ml_client: Any, endpoint: str, deployment: str) -> str:
    """The Resource Manager id of ``endpoint``/``deployment`` (the autoscale setting's target)."""
    return f"{endpoint_resource_id(ml_client, endpoint)}/deployments/{deployment}"


class AutoscaleSettings:
    """The autoscale settings of one workspace's deployments (its resource group's, in Azure Monitor)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The Azure Monitor client (made on first use)."""
        if self._client is None:
            self._client = monitor_client(self.workspace)
        return self._client

    @property
    def _resource_group(self) -> str:
        return str(self.workspace.ml_client.resource_group_name)

    def apply(self, plan: AutoscalePlan, endpoint: str, deployment: str) -> str:
        """Create (or replace) the setting of ``endpoint``/``deployment``; its name.

        A setting made elsewhere for the same deployment is replaced under its own name (Azure Monitor
        allows one per resource).
        """
        from azure.mgmt.monitor.models import (
            AutoscaleProfile,
            AutoscaleSettingResource,
            MetricTrigger,
            ScaleAction,
            ScaleCapacity,
            ScaleRule,
        )

        ml_client = self.workspace.ml_client
        target = deployment_resource_id(ml_client, endpoint, deployment)
        source = endpoint_resource_id(ml_client, endpoint) if plan.metric_on == "endpoint" else target
        existing = self.targeting(endpoint, deployment)
        name = str(existing[0].name) if existing else autoscale_setting_name(endpoint, deployment)

        def rule(operator: str, threshold: float, direction: str) -> Any:
            return ScaleRule(
                metric_trigger=MetricTrigger(
                    metric_name=plan.metric,
                    metric_resource_uri=source,
                    time_grain=dt.timedelta(minutes=1),
                    statistic="Average",
                    time_window=dt.timedelta(minutes=plan.minutes),
                    time_aggregation="Average",
                    operator=operator,
                    threshold=threshold,
                ),
                scale_action=ScaleAction(
                    direction=direction,
                    type="ChangeCount",
                    value=str(plan.step),
                    cooldown=dt.timedelta(minutes=plan.cooldown_minutes),
                ),
            )

        setting = AutoscaleSettingResource(
            location=self.workspace.location,
            tags={_TAG: f"{endpoint}/{deployment}"},
            profiles=[
                AutoscaleProfile(
                    name="mii-azure",
                    capacity=ScaleCapacity(minimum=str(plan.minimum), maximum=str(plan.maximum), default=str(plan.default)),
                    rules=[
                        rule("GreaterThan", plan.scale_out_above, "Increase"),
                        rule("LessThan", plan.scale_in_below, "Decrease"),
                    ],
                )
            ],
            enabled=True,  # the SDK's default is False: a setting that never scales
            target_resource_uri=target,
            target_resource_location=self.workspace.location,
        )
        with azure_errors(f"create the autoscale setting {name} of {endpoint}/{deployment}", endpoint=endpoint, deployment=deployment):
            self.client.autoscale_settings.create_or_update(self._resource_group, name, setting)
        return name

    def targeting(self, endpoint: str, deployment: Optional[str] = None) -> list[Any]:
        """The settings whose target is ``endpoint``/``deployment`` (any deployment of ``endpoint`` if None)."""
        ml_client = self.workspace.ml_client
        if deployment is None:
            prefix = endpoint_resource_id(ml_client, endpoint).lower() + "/deployments/"
            matches = lambda uri: uri.startswith(prefix) and "/" not in uri[len(prefix):]  # noqa: E731
        else:
            wanted = deployment_resource_id(ml_client, endpoint, deployment).lower()
            matches = lambda uri: uri == wanted  # noqa: E731
        return [item for item in self.all() if matches(str(getattr(item, "target_resource_uri", "") or "").lower())]

    def all(self) -> list[Any]:
        """Every autoscale setting of the workspace's resource group."""
        with azure_errors(f"list the autoscale settings of resource group {self._resource_group}"):
            return list(self.client.autoscale_settings.list_by_resource_group(self._resource_group))

    def details_by_target(self) -> dict[str, dict[str, Any]]:
        """:func:`describe_setting` of every setting of the resource group, by lower-case target id."""
        return {str(item.target_resource_uri or "").lower(): describe_setting(item) for item in self.all()}

    def remove(self, endpoint: str, deployment: Optional[str] = None) -> list[str]:
        """Delete the settings that target ``endpoint``/``deployment`` (every deployment of ``endpoint`` if
        None); the names deleted. Nothing to delete is not an error."""
        names = []
        for item in self.targeting(endpoint, deployment):
            name = str(item.name)
            with azure_errors(f"delete the autoscale setting {name}", endpoint=endpoint, deployment=deployment):
                self.client.autoscale_settings.delete(self._resource_group, name)
            names.append(name)
        return names

    def details(self, endpoint: str, deployment: str) -> Optional[dict[str, Any]]:
        """:func:`describe_setting` of the deployment's setting, or None."""
        found = self.targeting(endpoint, deployment)
        return describe_setting(found[0]) if found else None


def describe_setting(setting: Any) -> dict[str, Any]:
    """``{"name", "min", "max", "default", "metric", "enabled"}`` of an autoscale setting (its first profile)."""
    profile = (getattr(setting, "profiles", None) or [None])[0]
    capacity = getattr(profile, "capacity", None)
    rules = getattr(profile, "rules", None) or []
    metric = getattr(getattr(rules[0], "metric_trigger", None), "metric_name", None) if rules else None
    return {
        "name": str(getattr(setting, "name", "")),
        "min": _int(getattr(capacity, "minimum", None)),
        "max": _int(getattr(capacity, "maximum", None)),
        "default": _int(getattr(capacity, "default", None)),
        "metric": metric,
        "enabled": bool(getattr(setting, "enabled", False)),
    }


def _int(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
