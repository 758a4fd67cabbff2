"""The top-level verbs: deploy a model (locally or to Azure ML), find deployments, the MII query handle."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from .autoscale import Autoscale
from .config import ServingSettings
from .deployment import Deployment
from .errors import ConfigError
from .models import resolve_model
from .packaging import MANIFEST_FILE, Package, check_name, deployment_name, package
from .targets.local import LocalTarget, state_home

if TYPE_CHECKING:
    from .targets.azureml.dry_run import DryRun
    from .targets.azureml.poller import DeploymentPoller
    from .targets.azureml.workspace import Workspace

__all__ = ["deploy", "get_deployment", "list_deployments", "mii_query_handle"]

ModelLike = Union[str, "os.PathLike[str]", Package]
Progress = Union[bool, Callable[[str], None], None]
_DEPLOYMENT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")


def deploy(
    model: ModelLike,
    *,
    local: bool = False,
    sku: Optional[str] = None,
    name: Optional[str] = None,
    endpoint: Optional[str] = None,
    deployment: Optional[str] = None,
    task: Optional[str] = None,
    ml_client: Any = None,
    subscription_id: Optional[str] = None,
    resource_group: Optional[str] = None,
    workspace: Optional[str] = None,
    credential: Any = None,
    instance_count: int = 1,
    auth_mode: str = "key",
    request_timeout_s: Optional[float] = None,
    environment_variables: Optional[Mapping[str, str]] = None,
    strict: bool = False,
    dry_run: bool = False,
    output: Optional[Union[str, "os.PathLike[str]"]] = None,
    on_failure: str = "delete",
    timeout_s: Optional[float] = None,
    traffic: Optional[int] = None,
    mirror_traffic: Optional[int] = None,
    max_usd_per_hour: Optional[float] = None,
    workload: Any = None,
    prices: Any = None,
    autoscale: Optional[Autoscale] = None,
    port: Optional[int] = None,
    grpc_port: Optional[int] = None,
    api_key: Optional[str] = None,
    wait: bool = True,
    progress: Progress = None,
    settings: Optional[ServingSettings] = None,
    **overrides: Any,
) -> Union[Deployment, "DryRun", "DeploymentPoller"]:
    """Deploy ``model`` (a model reference, a package folder or a :class:`Package`).

    To Azure ML (the default): ``sku`` names the VM size (full name, alias such as ``"ND96"`` or
    ``"NC24ads"``); the workspace is ``ml_client``, or ``subscription_id``/``resource_group``/
    ``workspace`` with ``credential`` (default ``DefaultAzureCredential``), or a ``config.json`` found
    from the working directory upwards. ``endpoint`` (default: ``name`` or the model's name) and
    ``deployment`` (default ``"blue"``) are chosen here: a package deploys under any names. Waits
    until the deployment is ready, showing each stage (``progress=False`` for none); on a failure or
    Ctrl-C, ``on_failure="delete"`` removes what this call created, ``"keep"`` leaves it (it bills).
    ``dry_run=True`` writes the package and its YAML and returns the ``az ml`` commands, without a
    workspace or network. ``wait=False`` returns a :class:`DeploymentPoller` at once (``status()``,
    ``done()``, ``result()``), like azure-ai-ml's ``begin_*`` operations. On an endpoint that already
    serves, ``traffic`` is the new deployment's share (the others scaled in proportion; default 0) and
    ``mirror_traffic`` a share of live traffic copied to it; ``max_usd_per_hour`` refuses, before anything
    is created, instances that would bill more. ``sku="auto"`` with a ``workload`` (:class:`Workload`)
    picks the cheapest size and instance count that meet it, from :func:`estimate_cost`, among the sizes
    the workspace's region offers (``prices`` for the region's prices), and says why. ``autoscale``
    (:class:`Autoscale`) adds an Azure Monitor autoscale setting to the deployment once it is ready
    (its unset values come from the instance count, e.g. the one ``sku="auto"`` chose); it is deleted
    with the deployment.

    With ``local=True`` it runs on this machine through the same package, scoring script and
    inference server that Azure ML runs, on 127.0.0.1 (HTTP ``/score``, the OpenAI-compatible routes,
    ``/metrics`` and OIP-v2 gRPC), as ``name``. With ``api_key``, every route but the health probe
    requires ``Authorization: Bearer <api_key>`` (the returned handle sends it; the key is never
    written to a file or log). On Azure ML the endpoint's own key or token guards every route.

    Plan ``overrides`` (dtype, max_batch_size, ...) go to the planner.
    """
    choices = {"task": task, "settings": settings, **overrides}
    if local:
        azure_only = {
            "dry_run": dry_run or None,
            "deployment": deployment,
            "ml_client": ml_client,
            "subscription_id": subscription_id,
            "resource_group": resource_group,
            "workspace": workspace,
            "credential": credential,
            "instance_count": instance_count if instance_count != 1 else None,
            "auth_mode": auth_mode if auth_mode != "key" else None,
            "request_timeout_s": request_timeout_s,
            "environment_variables": environment_variables,
            "output": output,
            "timeout_s": timeout_s,
            "strict": strict or None,
            "traffic": traffic,
            "mirror_traffic": mirror_traffic,
            "max_usd_per_hour": max_usd_per_hour,
            "workload": workload,
            "prices": prices,
            "autoscale": autoscale,
        }
        given = sorted(key for key, value in azure_only.items() if value is not None)
        if given:
            raise ConfigError(
                f"{', '.join(given)} apply to Azure ML deployments, not local ones; drop them or drop local=True.",
                conflict=given[0],
            )
        return _deploy_locally(
            model, name=endpoint or name, sku=sku, choices=choices, port=port, grpc_port=grpc_port, api_key=api_key,
            wait=wait, progress=progress,
        )
    if port is not None or grpc_port is not None:
        raise ConfigError("port and grpc_port are for local deployments (local=True).", conflict="port")
    if api_key is not None:
        raise ConfigError(
            "api_key is for local deployments (local=True); an Azure ML endpoint is guarded by its own keys or "
            "tokens (auth_mode=).",
            conflict="api_key",
        )
    if autoscale is not None and not isinstance(autoscale, Autoscale):
        raise ConfigError(f"autoscale={autoscale!r}: pass mii_azure.Autoscale(min=..., max=...).", conflict="autoscale")
    deployment_name_ = _check_deployment_name(deployment or "blue")
    if endpoint or name:
        check_name(endpoint or name)
    connected: Optional["Workspace"] = None
    auto_lines: tuple[str, ...] = ()
    if sku is not None and sku.lower() == "auto":
        from .targets.azureml.auto_sku import choose_for_workload

        if _existing_package(model) is not None:
            raise ConfigError('A package is planned for its size already; sku="auto" sizes a model reference, not a package.', conflict="sku")
        if not dry_run:
            connected = _workspace(ml_client, subscription_id, resource_group, workspace, credential)
        overrides_given = {key: value for key, value in overrides.items() if value is not None}
        auto = choose_for_workload(
            resolve_model(model),
            workload,
            ml_client=connected.ml_client if connected else None,
            location=connected.location if connected else None,
            task=task,
            overrides=overrides_given,
            prices=prices,
        )
        sku, instance_count, auto_lines = auto.instance_type, auto.instances, auto.lines
    elif workload is not None or prices is not None:
        raise ConfigError('workload= and prices= size a deployment with sku="auto"; drop them or pass sku="auto".', conflict="workload")
    bundle, sku_note, chosen = _package_for_azure(model, sku=sku, name=endpoint or name, strict=strict, output=output, choices=choices)
    endpoint_name = check_name(endpoint or name or bundle.name)
    from .azureml_specs import AzureNames

    notes = (*auto_lines, *((sku_note,) if sku_note else ()))
    if dry_run:
        from .targets.azureml.dry_run import dry_run as write_dry_run

        return write_dry_run(
            bundle,
            AzureNames(endpoint_name, deployment_name_),
            instance_count=instance_count,
            auth_mode=auth_mode,
            request_timeout_s=request_timeout_s,
            environment_variables=environment_variables,
            notes=notes,
            autoscale=autoscale,
        )
    from .targets.azureml import AzureMLTarget

    target = AzureMLTarget(connected or _workspace(ml_client, subscription_id, resource_group, workspace, credential))

    def run(report: Progress) -> Deployment:
        return target.deploy(
            bundle,
            endpoint=endpoint_name,
            deployment=deployment_name_,
            sku=chosen,
            instance_count=instance_count,
            auth_mode=auth_mode,
            request_timeout_s=request_timeout_s,
            environment_variables=environment_variables,
            on_failure=on_failure,
            timeout_s=timeout_s,
            progress=report,
            notes=notes,
            traffic=traffic,
            mirror_traffic=mirror_traffic,
            max_usd_per_hour=max_usd_per_hour,
            autoscale=autoscale,
        )

    if wait:
        return run(True if progress is None else progress)
    from .targets.azureml.poller import DeploymentPoller

    def background(track: Callable[[str], None]) -> Deployment:
        def report(line: str) -> None:
            track(line)
            if callable(progress):
                progress(line)

        return run(report)

    return DeploymentPoller(background, name=f"{endpoint_name}/{deployment_name_}")


def get_deployment(
    name: str,
    *,
    deployment: Optional[str] = None,
    ml_client: Any = None,
    subscription_id: Optional[str] = None,
    resource_group: Optional[str] = None,
    workspace: Optional[str] = None,
    credential: Any = None,
    azure: bool = False,
    api_key: Optional[str] = None,
) -> Deployment:
    """The deployment called ``name``: a running local one, or (given a workspace, or ``azure=True``
    to use config.json) the Azure ML endpoint ``name`` and its ``deployment`` (default: the one taking
    the most traffic). Works from any process. ``api_key``: the key a local deployment was started
    with, for the handle to send."""
    if azure or _any_workspace(ml_client, subscription_id, resource_group, workspace, credential):
        if api_key is not None:
            raise ConfigError(
                "api_key is a local deployment's key; an Azure ML endpoint's handle gets the endpoint's own keys.",
                conflict="api_key",
            )
        from .targets.azureml import AzureMLTarget

        return AzureMLTarget(_workspace(ml_client, subscription_id, resource_group, workspace, credential)).get(name, deployment)
    if deployment is not None:
        raise ConfigError("deployment= names a deployment of an Azure ML endpoint; pass ml_client= (or azure=True) too.", conflict="deployment")
    return LocalTarget().get(name, api_key=api_key)


def list_deployments(
    *,
    ml_client: Any = None,
    subscription_id: Optional[str] = None,
    resource_group: Optional[str] = None,
    workspace: Optional[str] = None,
    credential: Any = None,
    azure: bool = False,
) -> list[Deployment]:
    """Every running local deployment, or (given a workspace, or ``azure=True``) every deployment of
    the workspace's managed online endpoints."""
    if azure or _any_workspace(ml_client, subscription_id, resource_group, workspace, credential):
        from .targets.azureml import AzureMLTarget

        return AzureMLTarget(_workspace(ml_client, subscription_id, resource_group, workspace, credential)).list()
    return LocalTarget().list()


def mii_query_handle(name: str) -> Deployment:
    """DeepSpeed-MII compatibility: ``mii_query_handle(name).query({"query": ...}, **kwargs)``."""
    return get_deployment(name)


# --- internals -------------------------------------------------------------------------------
def _deploy_locally(
    model: ModelLike,
    *,
    name: Optional[str],
    sku: Optional[str],
    choices: dict[str, Any],
    port: Optional[int],
    grpc_port: Optional[int],
    api_key: Optional[str],
    wait: bool,
    progress: Progress,
) -> Deployment:
    target = LocalTarget()
    existing = _existing_package(model)
    if existing is not None:
        _refuse_changes(existing, {"sku": sku, **choices})
        bundle = existing
    else:
        facts = resolve_model(model)
        package_name = check_name(name or deployment_name(facts))
        target.ensure_free(package_name)  # never rebuild the package under a running deployment
        bundle = package(facts, output=target.home / "packages" / package_name, name=package_name, overwrite=True, sku=sku, **choices)
    report = print if progress is True else (progress or None)
    return target.deploy(bundle, name=name, port=port, grpc_port=grpc_port, api_key=api_key, wait=wait, progress=report)


def _package_for_azure(
    model: ModelLike,
    *,
    sku: Optional[str],
    name: Optional[str],
    strict: bool,
    output: Optional[Union[str, "os.PathLike[str]"]],
    choices: dict[str, Any],
) -> tuple[Package, Optional[str], Any]:
    """The package to deploy, the note on how its size was chosen, and the catalog SKU (if any)."""
    from .skus import get_sku

    existing = _existing_package(model)
    if existing is not None:
        _refuse_changes(existing, {"sku": sku if sku is not None and not _same_size(existing, sku) else None, **choices})
        chosen = get_sku(existing.plan.hardware.name) if existing.plan.hardware.kind == "gpu" else None
        return existing, None, chosen
    if sku is None:
        raise ConfigError(
            "Deploying to Azure ML needs sku= (a VM size such as 'Standard_NC24ads_A100_v4', or an alias such as "
            "'NC24ads', 'A100' or 'ND96'); or pass local=True to run it on this machine.",
            conflict="sku",
        )
    facts = resolve_model(model)
    choice = _choose(facts, sku, strict, choices)
    package_name = check_name(name or deployment_name(facts))
    destination = Path(output).expanduser() if output else state_home() / "packages" / "azureml" / package_name
    bundle = package(
        facts,
        output=destination,
        name=package_name,
        overwrite=True,
        sku=choice.sku.instance_type,
        **choices,
    )
    return bundle, choice.reason, choice.sku


def _choose(facts: Any, sku: str, strict: bool, choices: dict[str, Any]) -> Any:
    from .planner import PlanOverrides
    from .sku_choice import choose_sku

    overrides = {key: value for key, value in choices.items() if key not in ("task", "settings") and value is not None}
    try:
        plan_overrides = PlanOverrides(**overrides)
    except Exception as exc:  # pydantic's ValidationError or an unknown keyword
        raise ConfigError(f"Invalid plan override: {exc}", overrides=overrides) from None
    settings = choices.get("settings")
    task = choices.get("task") or (settings.task if settings else None)
    return choose_sku(facts, sku, task=task, overrides=plan_overrides, strict=strict)


def _same_size(bundle: Package, sku: str) -> bool:
    from .skus import get_sku

    try:
        return get_sku(sku).instance_type == bundle.plan.hardware.name
    except ConfigError:
        return False


def _existing_package(model: ModelLike) -> Optional[Package]:
    if isinstance(model, Package):
        return model
    folder = Path(os.fspath(model)).expanduser()
    return Package.load(folder) if (folder / MANIFEST_FILE).is_file() else None


def _refuse_changes(bundle: Package, choices: dict[str, Any]) -> None:
    """A package deploys as it was built (under any name); other choices mean rebuilding it."""
    changed = sorted(key for key, value in choices.items() if value is not None)
    if changed:
        raise ConfigError(
            f"A package is deployed as it was built; {', '.join(changed)} cannot be changed here (names can). "
            "Rebuild it with mii_azure.package(...) to change them.",
            conflict=changed[0],
        )


def _check_deployment_name(name: str) -> str:
    if not _DEPLOYMENT_NAME.match(name):
        raise ConfigError(
            f"Deployment name {name!r} is not valid: use 3 to 32 letters, digits and '-', starting with a letter "
            "and not ending with '-' (Azure ML's rule for deployment names).",
            name=name,
        )
    return name


def _any_workspace(*values: Any) -> bool:
    return any(value is not None for value in values)


def _workspace(ml_client: Any, subscription_id: Optional[str], resource_group: Optional[str], workspace: Optional[str], credential: Any) -> "Workspace":
    from .targets.azureml.workspace import connect

    return connect(ml_client, subscription_id=subscription_id, resource_group=resource_group, workspace=workspace, credential=credential)
