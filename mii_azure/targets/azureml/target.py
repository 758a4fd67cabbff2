"""AzureMLTarget: deploy a package as an Azure ML managed online endpoint, find, query and delete it.

Every Azure call goes through azure-ai-ml (the workspace's ``MLClient``) and is translated at the
boundary (:mod:`.boundary`). A deployment runs in stages, each shown with its elapsed time:
preflight (region and quota), model, environment, endpoint, deployment (provisioning until ready),
traffic (100% for an endpoint's first deployment). The deployment's YAML is written into the
package's ``azureml/`` folder and loaded back with azure-ai-ml's own loader before it is submitted,
so what a dry run shows is what is deployed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from ...autoscale import Autoscale, AutoscalePlan
from ...azureml_specs import AzureNames, DEFAULT_DEPLOYMENT, deployment_spec, expected_load_s, write_specs
from ...config import HUB_MODEL_ENV
from ...deployment import Deployment
from ...errors import ConfigError, DeploymentFailedError, DeploymentNotFoundError, MiiAzureError, MissingDependencyError
from ...models import ModelSource
from ...packaging import Package
from ...skus import Sku
from .assets import code_folder, environment_asset, model_asset
from .autoscale import AutoscaleSettings, deployment_resource_id, require_monitor
from .boundary import azure_errors, scrub
from .preflight import check_capacity, check_hub_access
from .progress import ProgressLike, StageReporter, describe_wait
from .spend import HourlyCost, check_spend, deployment_details, describe_billing, hourly_cost
from .traffic import PREVIOUS_TRAFFIC_TAG, check_split, decode_split, describe_split, encode_split, with_share
from .workspace import Workspace

__all__ = ["AzureMLTarget", "OnFailure", "DEFAULT_TIMEOUT_S"]

logger = logging.getLogger(__name__)

OnFailure = str  # "delete" | "keep"
#: Building the image on first use takes most of a first deployment's time (20-40 min for a GPU image).
DEFAULT_TIMEOUT_S = 3600.0
_POLL_S = 5.0
_LOG_LINES = 50
_BILLING_NOTE = "A provisioned instance bills until it is deleted."


class AzureMLTarget:
    """Deploys packages to the managed online endpoints of one Azure ML workspace."""

    name = "azureml"

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.ml_client = workspace.ml_client
        self.autoscale_settings = AutoscaleSettings(workspace)

    # --- deploy ------------------------------------------------------------------------------
    def deploy(
        self,
        bundle: Package,
        *,
        endpoint: str,
        deployment: str = DEFAULT_DEPLOYMENT,
        sku: Optional[Sku] = None,
        instance_count: int = 1,
        auth_mode: str = "key",
        request_timeout_s: Optional[float] = None,
        environment_variables: Optional[Mapping[str, str]] = None,
        on_failure: OnFailure = "delete",
        timeout_s: Optional[float] = None,
        progress: ProgressLike = True,
        notes: tuple[str, ...] = (),
        traffic: Optional[int] = None,
        mirror_traffic: Optional[int] = None,
        max_usd_per_hour: Optional[float] = None,
        autoscale: Optional[Autoscale] = None,
    ) -> Deployment:
        """Create (or update) ``endpoint``/``deployment`` serving ``bundle`` and wait until it is ready.

        On a failure, a timeout or an interrupt (Ctrl-C), ``on_failure="delete"`` deletes what this call
        created (the deployment, and the endpoint if it created it); ``"keep"`` leaves it for inspection.
        ``traffic`` is the new deployment's share of an existing endpoint's traffic (the others are
        scaled in proportion; default 0, and 100 for an endpoint's first deployment); ``mirror_traffic``
        copies that share of live traffic to it instead. ``max_usd_per_hour`` refuses, before anything is
        created, a deployment whose instances would bill more per hour (with ``autoscale``: at its maximum).
        ``autoscale`` adds an Azure Monitor autoscale setting once the deployment is ready; it is deleted
        with the deployment.
        """
        if on_failure not in ("delete", "keep"):
            raise ConfigError(f"on_failure={on_failure!r}: use 'delete' or 'keep'.", conflict="on_failure")
        bundle.verify()
        names = AzureNames(endpoint, deployment)
        spec = deployment_spec(
            bundle.manifest,
            names,
            instance_count=instance_count,
            request_timeout_s=request_timeout_s,
            environment_variables=dict(environment_variables or {}),
        )
        # The YAML a dry run shows; both the endpoint and the deployment are loaded back from it.
        specs = write_specs(bundle.path, bundle.manifest, spec, auth_mode=auth_mode)
        billing = hourly_cost(sku, spec.instance_count, spec.instance_type)
        scaling = resolve_autoscale(autoscale, bundle, spec.instance_count)
        # With autoscale, the budget guards the most it may scale out to.
        check_spend(hourly_cost(sku, scaling.maximum, spec.instance_type) if scaling else billing, max_usd_per_hour)
        deadline = time.monotonic() + (timeout_s or DEFAULT_TIMEOUT_S)
        created = _Created()
        with StageReporter(progress, title=f"{endpoint}/{deployment}") as report:
            for note in (*notes, *spec.notes):
                report.note(note)
            report.note(describe_billing(billing))
            if scaling is not None:
                report.note(describe_scaling(scaling, hourly_cost(sku, scaling.maximum, spec.instance_type)))
            try:
                with report.stage("preflight", f"{spec.instance_count} x {spec.instance_type} in the workspace's region"):
                    self._check_traffic_request(endpoint, deployment, traffic, mirror_traffic)
                    capacity = check_capacity(self.ml_client, self.workspace.location, spec.instance_type, spec.instance_count, sku=sku)
                    report.note(capacity.describe())
                with report.stage("model", f"{bundle.manifest.model.reference}") as update:
                    if bundle.manifest.model.source is ModelSource.HUB:
                        check_hub_access(self.workspace.outbound_allowed_to, bundle.manifest.model.reference)
                    model_id = model_asset(self.ml_client, bundle, asset_name=endpoint)
                    update(model_id or f"fetched from the hub at start-up ({bundle.manifest.model.reference})")
                with report.stage("environment", "serving image") as update:
                    environment_id = environment_asset(self.ml_client, bundle)
                    update(environment_id)
                with report.stage("endpoint", endpoint) as update:
                    first = self._ensure_endpoint(names, specs[0], created)
                    update(f"{endpoint} ({'created' if created.endpoint else 'exists'})")
                with report.stage("deployment", f"{deployment}: provisioning (expected load {describe_wait(expected_load_s(bundle.plan))})") as update:
                    self._create_deployment(bundle, spec, specs[1], model_id, environment_id, deadline, created, update)
                if scaling is not None:
                    with report.stage("autoscale", f"{scaling.minimum} to {scaling.maximum} instances on {scaling.metric}") as update:
                        name = self.autoscale_settings.apply(scaling, endpoint, deployment)
                        update(f"{name}: {scaling.describe()}")
                with report.stage("traffic", endpoint) as update:
                    if first:
                        self.set_split(endpoint, {deployment: 100})
                        update(f"100% to {deployment}")
                    elif traffic:
                        update(describe_split(self.set_traffic(endpoint, deployment, traffic)))
                    else:
                        update(f"{deployment} takes no live traffic; the endpoint's split is unchanged")
                    if mirror_traffic:
                        update(f"{describe_split(self.set_traffic(endpoint, deployment, mirror_traffic, mirror=True))} mirrored")
            except KeyboardInterrupt:
                message = self._clean_up(names, created, on_failure, why="interrupted")
                logger.warning("Deployment %s/%s interrupted. %s", endpoint, deployment, message)
                report.note(message)
                raise
            except DeploymentFailedError as exc:
                message = self._clean_up(names, created, on_failure, why="failed")
                raise DeploymentFailedError(f"{exc.message} {message}", **{**exc.facts, "kept": on_failure == "keep"}) from exc.__cause__
            except MiiAzureError as exc:
                if not (created.endpoint or created.deployment or created.updated):
                    raise
                message = self._clean_up(names, created, on_failure, why="failed")
                raise type(exc)(f"{exc.message} {message}", **exc.facts) from exc
        return self._handle(endpoint, deployment, plan=bundle.plan)

    def _ensure_endpoint(self, names: AzureNames, endpoint_file: Path, created: "_Created") -> bool:
        """Create the endpoint unless it exists; whether it has no deployment taking traffic yet."""
        from azure.ai.ml import load_online_endpoint

        existing = self._find_endpoint(names.endpoint)
        if existing is not None:
            return not any(share > 0 for share in (existing.traffic or {}).values())
        entity = load_online_endpoint(source=endpoint_file)
        with azure_errors(f"create the endpoint {names.endpoint}", endpoint=names.endpoint):
            self.ml_client.online_endpoints.begin_create_or_update(entity).result()
        created.endpoint = True
        return True

    def _create_deployment(
        self,
        bundle: Package,
        spec: Any,
        deployment_file: Path,
        model_id: Optional[str],
        environment_id: str,
        deadline: float,
        created: "_Created",
        update: Any,
    ) -> None:
        from azure.ai.ml import load_online_deployment

        names = spec.names
        entity = load_online_deployment(source=deployment_file)
        entity.model = model_id
        entity.environment = environment_id
        entity.tags = {"mii_azure_task": bundle.manifest.task, "mii_azure_version": bundle.manifest.mii_azure_version}
        existed = not created.endpoint and names.deployment in self._deployment_names(names.endpoint)
        if existed:
            self._check_same_model(names, model_id, bundle)
        try:
            with code_folder(bundle) as code, azure_errors(
                f"create the deployment {names.deployment}", endpoint=names.endpoint, deployment=names.deployment
            ):
                entity.code_configuration.code = str(code)
                poller = self.ml_client.online_deployments.begin_create_or_update(entity)
            # An update of an existing deployment is never deleted on failure: only what this call made.
            created.deployment = not existed
            created.updated = existed
            started = time.monotonic()
            while not poller.done():
                if time.monotonic() >= deadline:
                    raise DeploymentFailedError(
                        f"Deployment {names.endpoint}/{names.deployment} was not ready after "
                        f"{describe_wait(time.monotonic() - started)}. Last log lines:\n{self._log_tail(names)}\n"
                        "Check that the model loads within the probes' delay, the image built (Azure ML studio, "
                        "the environment's build log), and the quota.",
                        endpoint=names.endpoint,
                        deployment=names.deployment,
                        reason="timeout",
                        logs=self._log_tail(names),
                    )
                with azure_errors(f"provision the deployment {names.deployment}", endpoint=names.endpoint, deployment=names.deployment):
                    poller.wait(timeout=min(_POLL_S, max(0.1, deadline - time.monotonic())))
                update(f"{names.deployment}: provisioning ({describe_wait(time.monotonic() - started)})")
            with azure_errors(f"provision the deployment {names.deployment}", endpoint=names.endpoint, deployment=names.deployment):
                poller.result()
        except MiiAzureError as exc:
            if isinstance(exc, DeploymentFailedError):
                raise
            logs = self._log_tail(names)
            raise DeploymentFailedError(
                f"Deployment {names.endpoint}/{names.deployment} failed to provision: {exc.message}\n"
                f"Last log lines:\n{logs}\nCheck the scoring script's start-up (the log above), the instance "
                "type's quota and the environment's image build.",
                endpoint=names.endpoint,
                deployment=names.deployment,
                reason="provisioning",
                logs=logs,
            ) from exc

    def _clean_up(self, names: AzureNames, created: "_Created", on_failure: OnFailure, *, why: str) -> str:
        """Apply ``on_failure`` to what this call created; the sentence that says what is left."""
        if created.updated:
            return (
                f"{names.endpoint}/{names.deployment} existed before this call and is not deleted: check its state in "
                f"Azure ML studio, deploy again, or delete it with `mii-azure delete {names.endpoint} --azure "
                f"--deployment {names.deployment}`. {_BILLING_NOTE}"
            )
        if not (created.deployment or created.endpoint):
            return "Nothing was created."
        what = f"{names.endpoint}/{names.deployment}" if created.deployment else names.endpoint
        if on_failure == "keep":
            return (
                f"The deployment was {why}; {what} is kept as it is for inspection. {_BILLING_NOTE} Delete it with "
                f"mii_azure.get_deployment({names.endpoint!r}, deployment={names.deployment!r}, ml_client=...).delete()."
            )
        problems = []
        try:
            if created.endpoint:
                self._delete_endpoint(names.endpoint)
            elif created.deployment:
                self._delete_deployment(names.endpoint, names.deployment)
        except MiiAzureError as exc:
            problems.append(exc.message)
        if problems:
            return (
                f"Deleting {what} failed ({'; '.join(problems)}). {_BILLING_NOTE} Delete it in Azure ML studio or with "
                f"`mii-azure delete {names.endpoint} --azure`."
            )
        return f"{what} was deleted (on_failure='delete'), so nothing is left that bills."

    # --- traffic -----------------------------------------------------------------------------
    def set_traffic(self, endpoint: str, deployment: str, percent: int, *, mirror: bool = False) -> dict[str, int]:
        """Give ``deployment`` ``percent`` of ``endpoint``'s live traffic (the others scaled in proportion),
        or with ``mirror`` of its mirrored traffic; the previous live split is kept for a roll-back."""
        with azure_errors(f"read the endpoint {endpoint}", endpoint=endpoint):
            entity = self.ml_client.online_endpoints.get(endpoint)
        live = {name: int(share) for name, share in (entity.traffic or {}).items()}
        names = self._deployment_names(endpoint)
        if deployment not in names:
            raise DeploymentNotFoundError(f"Endpoint {endpoint!r} has no deployment {deployment!r}.", endpoint=endpoint, deployment=deployment)
        if mirror:
            check_mirror(live, deployment, percent)
            mirrored = {name: int(share) for name, share in (entity.mirror_traffic or {}).items() if name != deployment}
            entity.mirror_traffic = {**mirrored, **({deployment: int(percent)} if percent else {})}
            with azure_errors(f"mirror traffic of {endpoint} to {deployment}", endpoint=endpoint):
                self.ml_client.online_endpoints.begin_create_or_update(entity).result()
            return dict(entity.mirror_traffic)
        mirrored = int((entity.mirror_traffic or {}).get(deployment, 0) or 0)
        if mirrored and percent:
            raise ConfigError(
                f"{deployment} receives {mirrored}% mirrored traffic; a deployment cannot take live and mirrored "
                f"traffic at once. Stop the mirror first (mirror_traffic(0)).",
                conflict="traffic",
            )
        split = check_split(with_share({name: live.get(name, 0) for name in names}, deployment, percent), names)
        self._apply_split(entity, endpoint, split, previous=live)
        return split

    def set_split(self, endpoint: str, split: Mapping[str, int]) -> dict[str, int]:
        """Set ``endpoint``'s whole live split (it must add up to 100)."""
        shares = check_split(split, self._deployment_names(endpoint))
        with azure_errors(f"read the endpoint {endpoint}", endpoint=endpoint):
            entity = self.ml_client.online_endpoints.get(endpoint)
        self._apply_split(entity, endpoint, shares, previous={k: int(v) for k, v in (entity.traffic or {}).items()})
        return shares

    def rollback_traffic(self, endpoint: str) -> dict[str, int]:
        """Restore the live split from before the last change mii_azure made to ``endpoint``."""
        with azure_errors(f"read the endpoint {endpoint}", endpoint=endpoint):
            entity = self.ml_client.online_endpoints.get(endpoint)
        previous = decode_split((entity.tags or {}).get(PREVIOUS_TRAFFIC_TAG))
        if previous is None:
            raise ConfigError(
                f"Endpoint {endpoint!r} has no earlier split recorded by mii_azure to roll back to.",
                conflict="rollback",
                endpoint=endpoint,
            )
        names = self._deployment_names(endpoint)
        restored = check_split({name: share for name, share in previous.items() if name in names}, names)
        self._apply_split(entity, endpoint, restored, previous={k: int(v) for k, v in (entity.traffic or {}).items()})
        return restored

    def _apply_split(self, entity: Any, endpoint: str, split: dict[str, int], *, previous: dict[str, int]) -> None:
        entity.traffic = dict(split)
        live = {name: share for name, share in previous.items() if share}
        if live:  # an endpoint that served nothing before has no split to roll back to
            entity.tags = {**(entity.tags or {}), PREVIOUS_TRAFFIC_TAG: encode_split(live)}
        with azure_errors(f"set the traffic of {endpoint} to {describe_split(split)}", endpoint=endpoint):
            self.ml_client.online_endpoints.begin_create_or_update(entity).result()

    def _check_traffic_request(self, endpoint: str, deployment: str, traffic: Optional[int], mirror: Optional[int]) -> None:
        """Refuse, before anything is created, traffic that cannot work."""
        if traffic is not None and not 0 <= traffic <= 100:
            raise ConfigError(f"traffic={traffic}: a share is 0 to 100 percent.", conflict="traffic", nearest=max(0, min(100, traffic)))
        if traffic and mirror:
            raise ConfigError("A deployment takes live traffic or mirrored traffic, not both; pass one of traffic= and mirror_traffic=.", conflict="traffic")
        existing = self._find_endpoint(endpoint)
        if existing is None or not any(share > 0 for share in (existing.traffic or {}).values()):
            if traffic not in (None, 100):
                raise ConfigError(
                    f"{deployment} is the first deployment of {endpoint!r} to take traffic, so it takes all of it; "
                    f"traffic={traffic} would leave {100 - traffic}% to nobody. Use traffic=100 (or leave it out).",
                    conflict="traffic",
                    nearest=100,
                )
            if mirror:
                raise ConfigError(
                    f"Nothing serves {endpoint!r} yet, so there is no live traffic to mirror to {deployment}.",
                    conflict="mirror_traffic",
                )
        elif mirror:
            check_mirror({}, deployment, mirror)

    def _check_same_model(self, names: AzureNames, model_id: Optional[str], bundle: Package) -> None:
        with azure_errors(f"read the deployment {names.endpoint}/{names.deployment}", endpoint=names.endpoint):
            current = self.ml_client.online_deployments.get(name=names.deployment, endpoint_name=names.endpoint)
        before = _model_key(getattr(current, "model", None)) or (current.environment_variables or {}).get(HUB_MODEL_ENV)
        after = _model_key(model_id) or bundle.manifest.model.reference
        if before and after and before != after:
            raise ConfigError(
                f"Deployment {names.endpoint}/{names.deployment} serves {before}, not {after}. Deploy the new model as "
                f"another deployment (deployment='green', traffic=10) and move traffic to it, or delete "
                f"{names.deployment} first.",
                conflict="deployment",
                current_model=before,
                new_model=after,
            )

    # --- find --------------------------------------------------------------------------------
    def get(self, endpoint: str, deployment: Optional[str] = None) -> Deployment:
        """The handle of ``endpoint``'s ``deployment`` (default: the one taking the most traffic)."""
        found = self._find_endpoint(endpoint)
        if found is None:
            raise DeploymentNotFoundError(
                f"No Azure ML endpoint named {endpoint!r} in workspace {self.workspace.name!r}. List them with "
                "mii_azure.list_deployments(ml_client=...) or `mii-azure list --azure`.",
                endpoint=endpoint,
                workspace=self.workspace.name,
            )
        names = self._deployment_names(endpoint)
        if deployment is None:
            traffic = found.traffic or {}
            ranked = sorted(names, key=lambda name: -int(traffic.get(name, 0)))
            if not ranked:
                raise DeploymentNotFoundError(f"Endpoint {endpoint!r} has no deployment.", endpoint=endpoint)
            deployment = ranked[0]
        elif deployment not in names:
            raise DeploymentNotFoundError(
                f"Endpoint {endpoint!r} has no deployment named {deployment!r} (it has: {', '.join(names) or 'none'}).",
                endpoint=endpoint,
                deployment=deployment,
            )
        return self._handle(endpoint, deployment, scoring_uri=found.scoring_uri, details=self._details(found, deployment))

    def list(self) -> list[Deployment]:
        """A handle per deployment of every endpoint of the workspace, each with its ``details``: instance
        type and count, traffic and mirrored share, $/h while it runs, and age."""
        with azure_errors("list the endpoints", workspace=self.workspace.name):
            endpoints = list(self.ml_client.online_endpoints.list())
        handles = []
        scaling = self._autoscale_by_target() if endpoints else {}
        for endpoint in endpoints:
            with azure_errors(f"list the deployments of {endpoint.name}", endpoint=endpoint.name):
                deployments = list(self.ml_client.online_deployments.list(endpoint_name=endpoint.name))
            for item in sorted(deployments, key=lambda d: d.name):
                handles.append(
                    self._handle(endpoint.name, item.name, scoring_uri=endpoint.scoring_uri, details=self._details(endpoint, item.name, item, scaling))
                )
        return handles

    def _details(self, endpoint: Any, deployment: str, entity: Any = None, scaling: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        if entity is None:
            with azure_errors(f"read the deployment {endpoint.name}/{deployment}", endpoint=endpoint.name):
                entity = self.ml_client.online_deployments.get(name=deployment, endpoint_name=endpoint.name)
        if scaling is None:
            scaling = self._autoscale_by_target()
        target = deployment_resource_id(self.ml_client, endpoint.name, deployment).lower()
        return {**deployment_details(endpoint, entity), "autoscale": scaling.get(target)}

    def _autoscale_by_target(self) -> dict[str, dict[str, Any]]:
        """The resource group's autoscale settings by target (empty where Azure Monitor cannot be read)."""
        try:
            return self.autoscale_settings.details_by_target()
        except MiiAzureError as exc:
            logger.debug("No autoscale details: %s", exc.message)
            return {}

    # --- backend of the handles -------------------------------------------------------------
    def logs(self, endpoint: str, deployment: str, lines: int = 50) -> str:
        """The last ``lines`` lines of the deployment's inference-server log."""
        with azure_errors(f"read the logs of {endpoint}/{deployment}", endpoint=endpoint, deployment=deployment):
            return scrub(str(self.ml_client.online_deployments.get_logs(name=deployment, endpoint_name=endpoint, lines=lines)))

    def delete(self, endpoint: str, deployment: Optional[str] = None) -> None:
        """Delete ``deployment`` (and the endpoint once it has none left), or the whole endpoint."""
        if deployment is None:
            self._delete_endpoint(endpoint)
            return
        remaining = [name for name in self._deployment_names(endpoint) if name != deployment]
        if not remaining:
            self._delete_endpoint(endpoint)
            return
        self._delete_deployment(endpoint, deployment)

    # --- internals ---------------------------------------------------------------------------
    def _handle(
        self, endpoint: str, deployment: str, *, plan: Any = None, scoring_uri: Optional[str] = None, details: Optional[dict[str, Any]] = None
    ) -> Deployment:
        if scoring_uri is None:
            found = self._find_endpoint(endpoint)
            scoring_uri = found.scoring_uri if found is not None else None
        if not scoring_uri:
            raise DeploymentNotFoundError(f"Endpoint {endpoint!r} has no scoring URI yet.", endpoint=endpoint)
        return Deployment(
            endpoint,
            target=self.name,
            scoring_uri=scoring_uri,
            backend=_BoundBackend(self, endpoint, deployment),
            plan=plan,
            endpoint=endpoint,
            deployment=deployment,
            auth=EndpointAuth(self.ml_client, endpoint),
            timeout_s=200.0,
            details=details,
        )

    def _find_endpoint(self, endpoint: str) -> Any:
        try:
            with azure_errors(f"read the endpoint {endpoint}", endpoint=endpoint):
                return self.ml_client.online_endpoints.get(endpoint)
        except DeploymentNotFoundError:
            return None

    def _deployment_names(self, endpoint: str) -> list[str]:
        with azure_errors(f"list the deployments of {endpoint}", endpoint=endpoint):
            return sorted(item.name for item in self.ml_client.online_deployments.list(endpoint_name=endpoint))

    def _delete_deployment(self, endpoint: str, deployment: str) -> None:
        with azure_errors(f"delete the deployment {endpoint}/{deployment}", endpoint=endpoint, deployment=deployment):
            self.ml_client.online_deployments.begin_delete(name=deployment, endpoint_name=endpoint).result()
        self._remove_autoscale(endpoint, deployment)

    def _delete_endpoint(self, endpoint: str) -> None:
        with azure_errors(f"delete the endpoint {endpoint}", endpoint=endpoint):
            self.ml_client.online_endpoints.begin_delete(name=endpoint).result()
        self._remove_autoscale(endpoint, None)

    def _remove_autoscale(self, endpoint: str, deployment: Optional[str]) -> None:
        """Delete the autoscale settings that target what was just deleted (none is fine). The deployment is
        gone already, so a failure here is logged with what to do, not raised."""
        what = f"{endpoint}/{deployment}" if deployment else endpoint
        try:
            removed = self.autoscale_settings.remove(endpoint, deployment)
        except MissingDependencyError:
            logger.info("azure-mgmt-monitor is not installed: autoscale settings targeting %s were not looked for.", what)
            return
        except MiiAzureError as exc:
            logger.warning(
                "Could not delete the autoscale settings targeting %s: %s Delete them in the Azure portal "
                "(Monitor > Autoscale), or a new deployment under the same name inherits them.",
                what,
                exc.message,
            )
            return
        for name in removed:
            logger.info("Deleted the autoscale setting %s of %s.", name, what)

    def _log_tail(self, names: AzureNames) -> str:
        try:
            return self.logs(names.endpoint, names.deployment, _LOG_LINES) or "(the log is empty)"
        except MiiAzureError as exc:
            return f"(no logs: {exc.message})"


class _Created:
    """What one deploy() call created, for clean-up."""

    def __init__(self) -> None:
        self.endpoint = False
        self.deployment = False
        self.updated = False


class _BoundBackend:
    """The handle's backend for one (endpoint, deployment)."""

    def __init__(self, target: AzureMLTarget, endpoint: str, deployment: str) -> None:
        self._target, self._endpoint, self._deployment = target, endpoint, deployment

    def logs(self, name: str, lines: int) -> str:
        return self._target.logs(self._endpoint, self._deployment, lines)

    def delete(self, name: str) -> None:
        self._target.delete(self._endpoint, self._deployment)

    def set_traffic(self, name: str, percent: int) -> dict[str, int]:
        return self._target.set_traffic(self._endpoint, self._deployment, percent)

    def mirror_traffic(self, name: str, percent: int) -> dict[str, int]:
        return self._target.set_traffic(self._endpoint, self._deployment, percent, mirror=True)

    def rollback_traffic(self, name: str) -> dict[str, int]:
        return self._target.rollback_traffic(self._endpoint)


class EndpointAuth:
    """The ``Authorization`` header for an endpoint: its key (fetched once through azure-ai-ml), or an
    Azure ML token (fetched again shortly before it expires). Its repr shows no secret."""

    def __init__(self, ml_client: Any, endpoint: str) -> None:
        self._ml_client = ml_client
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._value: Optional[str] = None
        self._expires_at = float("inf")

    def __call__(self) -> Mapping[str, str]:
        with self._lock:
            if self._value is None or time.time() >= self._expires_at:
                self._value, self._expires_at = self._fetch()
            return {"Authorization": f"Bearer {self._value}"}

    def _fetch(self) -> tuple[str, float]:
        with azure_errors(f"get the keys of endpoint {self._endpoint}", endpoint=self._endpoint):
            credentials = self._ml_client.online_endpoints.get_keys(self._endpoint)
        key = getattr(credentials, "primary_key", None)
        if key:
            return str(key), float("inf")
        token = getattr(credentials, "access_token", None)
        if not token:
            raise DeploymentNotFoundError(f"Endpoint {self._endpoint!r} returned no key or token.", endpoint=self._endpoint)
        expiry = getattr(credentials, "expiry_time_utc", None)
        try:
            expires_at = float(expiry) - 60 if expiry else time.time() + 600
        except (TypeError, ValueError):
            expires_at = time.time() + 600
        return str(token), expires_at

    def __repr__(self) -> str:
        return f"EndpointAuth(endpoint={self._endpoint!r})"


def resolve_autoscale(autoscale: Optional[Autoscale], bundle: Package, instance_count: int) -> Optional[AutoscalePlan]:
    """The autoscale setting for ``bundle`` starting at ``instance_count`` instances (None without autoscale);
    refused before anything is created when it cannot work or azure-mgmt-monitor is missing."""
    if autoscale is None:
        return None
    if not isinstance(autoscale, Autoscale):
        raise ConfigError(
            f"autoscale={autoscale!r}: pass mii_azure.Autoscale(min=..., max=...).", conflict="autoscale"
        )
    plan = autoscale.resolve(
        instance_count=instance_count, gpu=bundle.plan.hardware.kind == "gpu", expected_load_s=expected_load_s(bundle.plan)
    )
    require_monitor()
    return plan


def describe_scaling(plan: AutoscalePlan, at_most: HourlyCost) -> str:
    """The autoscale line shown before anything is created: the setting and the most it may bill."""
    most = f"up to about ${at_most.usd_per_hour:,.2f}/h at {plan.maximum} instances" if at_most.usd_per_hour is not None else (
        f"up to {plan.maximum} instances"
    )
    return f"{plan.describe()}; bills {most}."


def check_mirror(live: Mapping[str, int], deployment: str, percent: int) -> None:
    """ConfigError unless ``percent`` is a mirror share Azure ML accepts for ``deployment``."""
    if not 0 <= int(percent) <= 50:
        raise ConfigError(f"mirror_traffic={percent}: Azure ML mirrors at most 50% of live traffic.", conflict="mirror_traffic", nearest=50)
    if percent and int(live.get(deployment, 0) or 0):
        raise ConfigError(
            f"{deployment} takes {live[deployment]}% live traffic; a deployment cannot take live and mirrored traffic "
            "at once. Set its traffic to 0 first.",
            conflict="mirror_traffic",
        )


def _model_key(model: Any) -> Optional[str]:
    """``name:version`` of a model id in any of its spellings (``azureml:n:v``, an ARM id, a registry id)."""
    if not model:
        return None
    text = str(model)
    if "/models/" in text:
        tail = text.split("/models/", 1)[1].split("/")
        if len(tail) >= 3 and tail[1] == "versions":
            return f"{tail[0]}:{tail[2]}"
        return tail[0]
    return text[len("azureml:") :] if text.startswith("azureml:") else text
