"""The in-memory state of the fake Resource Manager, and the shapes its routes pass around.

:class:`FakeArmState` holds the workspace's identity, its assets, endpoints and deployments, the
Azure Monitor autoscale settings of its resource group, the long-running operations, the region's VM sizes and quota, every recorded request, and the fault
injection API the failure-path tests use: :meth:`FakeArmState.fail_next_deployment`,
:meth:`FakeArmState.hang_next_deployment`, :meth:`FakeArmState.inject`, :meth:`FakeArmState.remove_size`,
:meth:`FakeArmState.add_size`, :meth:`FakeArmState.set_quota`; compute clusters for jobs come from
:meth:`FakeArmState.add_compute`, and submitted jobs are kept in :attr:`FakeArmState.jobs`. Endpoint and deployment keys of the
dictionaries are lower-case (``state.deployments[("my-endpoint", "blue")]``).

It also makes the tokens the fakes hand out: :func:`make_jwt` and :class:`FakeCredential`.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, AccessTokenInfo

__all__ = [
    "AML_AUDIENCE",
    "Call",
    "DEFAULT_VM_SIZES",
    "DeploymentRecord",
    "EndpointRecord",
    "FakeArmState",
    "FakeCredential",
    "Fault",
    "Operation",
    "PROVIDER",
    "QUOTA_RESERVE",
    "RecordedRequest",
    "Reply",
    "VmSize",
    "audience_of_scope",
    "error_body",
    "iso_duration_ms",
    "make_jwt",
    "now_iso",
    "stop_server",
    "system_data",
]

logger = logging.getLogger(__name__)

PROVIDER = "Microsoft.MachineLearningServices"
AML_AUDIENCE = "https://ml.azure.com"


# ------------------------------------------------------------------------------------------ tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(audience: str, *, tenant_id: str, object_id: str, lifetime_s: int = 3600) -> tuple[str, int]:
    """An unsigned JWT (``alg: none``) for ``audience`` and its expiry (epoch seconds).

    azure-ai-ml decodes the credential's token (without verifying it) and reads ``aud``/``tid``.
    """
    now = int(time.time())
    expires = now + lifetime_s
    header = {"alg": "none", "typ": "JWT"}
    payload = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": now,
        "nbf": now,
        "exp": expires,
        "tid": tenant_id,
        "oid": object_id,
        "sub": object_id,
        "appid": object_id,
        "idtyp": "app",
        "ver": "1.0",
    }
    token = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(payload).encode())}."
    return token, expires


def audience_of_scope(scope: str) -> str:
    """``https://ml.azure.com/.default`` -> ``https://ml.azure.com`` (no trailing slash)."""
    resource = scope[: -len("/.default")] if scope.endswith("/.default") else scope
    return resource.rstrip("/")


class FakeCredential:
    """A credential that hands out unsigned JWTs for any scope and records the scopes asked for."""

    def __init__(self, tenant_id: str, object_id: Optional[str] = None) -> None:
        self.tenant_id = tenant_id
        self.object_id = object_id or str(uuid.uuid4())
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> "AccessToken":
        """azure-core's TokenCredential protocol."""
        from azure.core.credentials import AccessToken

        self.scopes.append(tuple(scopes))
        token, expires = make_jwt(
            audience_of_scope(scopes[0]) if scopes else AML_AUDIENCE,
            tenant_id=self.tenant_id,
            object_id=self.object_id,
        )
        return AccessToken(token, expires)

    def get_token_info(self, *scopes: str, options: Optional[dict] = None) -> "AccessTokenInfo":
        """azure-core's SupportsTokenInfo protocol."""
        from azure.core.credentials import AccessTokenInfo

        access = self.get_token(*scopes)
        return AccessTokenInfo(access.token, access.expires_on)

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> "FakeCredential":
        return self

    def __exit__(self, *args: object) -> None:
        return None


# ------------------------------------------------------------------------------------------ state


@dataclass
class RecordedRequest:
    """One request the fake received (secrets left out)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    status: int = 0

    @property
    def api_version(self) -> Optional[str]:
        """The ``api-version`` query parameter."""
        return self.query.get("api-version")


@dataclass
class Fault:
    """An injected answer: the next ``count`` requests matching ``method`` and ``path`` get ``status``."""

    method: str
    path: re.Pattern[str]
    status: int
    count: int
    headers: dict[str, str]
    body: Any
    hits: int = 0


@dataclass(frozen=True)
class VmSize:
    """A VM size the region offers."""

    name: str
    family: str
    vcpus: int
    gpus: int
    memory_gb: float

    def to_rest(self) -> dict[str, Any]:
        """The ``VirtualMachineSize`` JSON."""
        return {
            "name": self.name,
            "family": self.family,
            "vCPUs": self.vcpus,
            "gpus": self.gpus,
            "osVhdSizeMB": 1047552,
            "maxResourceVolumeMB": 344064,
            "memoryGB": self.memory_gb,
            "lowPriorityCapable": True,
            "premiumIO": True,
            "supportedComputeTypes": ["ComputeInstance", "AmlCompute", "ManagedOnlineEndpoint"],
        }


#: VM sizes offered in the fake region by default (names and families as Azure spells them).
DEFAULT_VM_SIZES: tuple[VmSize, ...] = (
    VmSize("Standard_DS3_v2", "standardDSv2Family", 4, 0, 14),
    VmSize("Standard_F4s_v2", "standardFSv2Family", 4, 0, 8),
    VmSize("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", 4, 1, 28),
    VmSize("Standard_NC8as_T4_v3", "standardNCASv3_T4Family", 8, 1, 56),
    VmSize("Standard_NC16as_T4_v3", "standardNCASv3_T4Family", 16, 1, 110),
    VmSize("Standard_NC64as_T4_v3", "standardNCASv3_T4Family", 64, 4, 440),
    VmSize("Standard_NV36ads_A10_v5", "standardNVADSA10v5Family", 36, 1, 440),
    VmSize("Standard_NC24ads_A100_v4", "standardNCADSA100v4Family", 24, 1, 220),
    VmSize("Standard_NC48ads_A100_v4", "standardNCADSA100v4Family", 48, 2, 440),
    VmSize("Standard_NC96ads_A100_v4", "standardNCADSA100v4Family", 96, 4, 880),
    VmSize("Standard_NC40ads_H100_v5", "standardNCadsH100v5Family", 40, 1, 320),
    VmSize("Standard_ND40rs_v2", "standardNDSv2Family", 40, 8, 672),
    VmSize("Standard_ND96asr_v4", "standardNDASv4_A100Family", 96, 8, 900),
    VmSize("Standard_ND96amsr_A100_v4", "standardNDAMSv4_A100Family", 96, 8, 1900),
    VmSize("Standard_ND96isr_H100_v5", "standardNDSH100v5Family", 96, 8, 1900),
)
#: vCPU quota of every family by default.
DEFAULT_QUOTA = 1000
#: Managed online endpoints reserve 20% extra compute for upgrades (Azure ML "manage quotas" page;
#: the rounding up is the fake's assumption).
QUOTA_RESERVE = 1.2


@dataclass
class Operation:
    """A long-running operation; ``status`` is asked each time the client polls."""

    id: str
    status: Callable[[], tuple[str, Optional[dict[str, Any]]]]
    started: str
    #: The ``retry-after-ms`` hint while it runs (deployments take seconds: no need to poll every 10 ms).
    poll_ms: int = 10


@dataclass
class DeploymentRecord:
    """One online deployment: its resource JSON and what the fake runs for it.

    ``state`` is the provisioning state (Creating, Updating, Succeeded, Failed); ``error`` the
    operation's error when it failed; ``root`` the folder laid out like the Azure container
    (``code/``, ``azureml-models/``); ``log_path`` the inference server's log (``getLogs``);
    ``storage_log`` what the download step did (``getLogs`` of the storage initializer); ``server``
    the running :class:`mii_azure.targets.server_process.InferenceServerProcess`. ``generation``
    counts PUTs, so a superseded provisioning gives up.
    """

    endpoint: str
    name: str
    resource: dict[str, Any]
    state: str = "Creating"
    error: Optional[dict[str, Any]] = None
    generation: int = 0
    root: Optional[Path] = None
    log_path: Optional[Path] = None
    storage_log: list[str] = field(default_factory=list)
    server: Any = None
    vcpus_in_use: int = 0
    family: Optional[str] = None
    deleted: bool = False


@dataclass
class EndpointRecord:
    """One online endpoint: its resource JSON, keys, tokens and the time it finishes provisioning."""

    name: str
    resource: dict[str, Any]
    keys: dict[str, str]
    ready_at: float
    state: str = "Creating"
    #: The scoring URI's path: ``/score``, or a custom container's scoring route once one is deployed.
    scoring_path: str = "/score"


class FakeArmState:
    """Everything the fake knows: workspace identity, assets, endpoints, recorded requests, faults."""

    def __init__(
        self,
        *,
        root: Path,
        subscription_id: str,
        resource_group: str,
        workspace_name: str,
        location: str,
        tenant_id: str,
        blob_container: str,
    ) -> None:
        self.root = Path(root)
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace_name = workspace_name
        self.location = location
        self.tenant_id = tenant_id
        self.workspace_guid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{subscription_id}/{resource_group}/{workspace_name}"))
        self.blob_container = blob_container
        self.lock = threading.RLock()
        self.identity_header = secrets.token_hex(16)
        self._init_mutable()

    def _init_mutable(self) -> None:
        """Everything :meth:`reset` puts back: settings, assets, endpoints, faults, recorded requests."""
        #: Seconds an endpoint PUT/PATCH takes to reach Succeeded.
        self.endpoint_provisioning_s = 0.05
        #: Seconds a deployment's inference server may take to get ready before provisioning fails.
        self.ready_timeout_s = 240.0
        #: ``retry-after-ms`` while a deployment provisions (other operations: 10 ms).
        self.deployment_poll_ms = 100
        #: Whether deleting a deployment that has traffic is refused (Azure refuses it).
        self.refuse_delete_with_traffic = True
        self.requests: list[RecordedRequest] = []
        self.assets: dict[str, dict[str, dict[str, Any]]] = {"models": {}, "codes": {}, "environments": {}, "components": {}}
        self.versions: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
            "models": {}, "codes": {}, "environments": {}, "components": {}
        }
        #: Compute targets of the workspace by lower-case name (the resource JSON); see :meth:`add_compute`.
        self.computes: dict[str, dict[str, Any]] = {}
        #: Jobs by lower-case name (the resource JSON the last PUT left, with the fake's status).
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pending_uploads: dict[str, dict[str, str]] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.deployments: dict[tuple[str, str], DeploymentRecord] = {}
        #: Azure Monitor autoscale settings of the resource group, by lower-case name (the resource JSON).
        self.autoscale_settings: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, Operation] = {}
        self.faults: list[Fault] = []
        self.vm_sizes: dict[str, VmSize] = {size.name.lower(): size for size in DEFAULT_VM_SIZES}
        families = sorted({size.family for size in DEFAULT_VM_SIZES})
        self.quota: dict[str, dict[str, int]] = {family: {"limit": DEFAULT_QUOTA, "current": 0} for family in families}
        self._next_failure: list[str] = []
        self._next_hang = 0

    # -------------------------------------------------------------- identity

    @property
    def workspace_id(self) -> str:
        """The workspace's ARM id."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{PROVIDER}/workspaces/{self.workspace_name}"
        )

    # -------------------------------------------------------------- recorded requests

    def record(self, request: RecordedRequest) -> None:
        """Append ``request`` to :attr:`requests`."""
        with self.lock:
            self.requests.append(request)

    def requests_to(self, method: Optional[str] = None, path: Optional[str] = None) -> list[RecordedRequest]:
        """Recorded requests with ``method`` whose path matches the regex ``path`` (search, any case)."""
        pattern = re.compile(path, re.I) if path else None
        with self.lock:
            return [
                request
                for request in self.requests
                if (method is None or request.method == method.upper())
                and (pattern is None or pattern.search(request.path))
            ]

    # -------------------------------------------------------------- fault injection

    def inject(
        self,
        method: str,
        path: str,
        status: int,
        *,
        count: int = 1,
        retry_after_s: Optional[float] = None,
        body: Any = None,
        headers: Optional[dict[str, str]] = None,
    ) -> Fault:
        """Answer the next ``count`` requests of ``method`` whose path matches regex ``path`` with ``status``.

        ``retry_after_s`` adds a ``retry-after-ms`` header, and ``Retry-After`` (whole seconds) when it
        is 1 s or more (azure-core reads ``Retry-After`` first). The fault is matched before the real
        route, and the request is still recorded.
        """
        extra = dict(headers or {})
        if retry_after_s is not None:
            extra.setdefault("retry-after-ms", str(max(1, int(retry_after_s * 1000))))
            if retry_after_s >= 1:
                extra.setdefault("Retry-After", str(int(math.ceil(retry_after_s))))
        payload = body if body is not None else {
            "error": {"code": "InjectedFault", "message": f"Injected {status} by the test."}
        }
        fault = Fault(method.upper(), re.compile(path, re.I), status, count, extra, payload)
        with self.lock:
            self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str) -> Optional[Fault]:
        """The first live fault matching this request, with one use consumed."""
        with self.lock:
            for fault in self.faults:
                if fault.count > 0 and fault.method == method and fault.path.search(path):
                    fault.count -= 1
                    fault.hits += 1
                    return fault
        return None

    def fail_next_deployment(self, message: str) -> None:
        """The next deployment PUT fails provisioning with ``message`` (its logs show it too)."""
        with self.lock:
            self._next_failure.append(message)

    def hang_next_deployment(self) -> None:
        """The next deployment PUT never gets ready: it stays Creating/Updating until deleted."""
        with self.lock:
            self._next_hang += 1

    def take_deployment_fate(self) -> tuple[Optional[str], bool]:
        """(failure message or None, hang?) for a new deployment PUT, consuming the injection."""
        with self.lock:
            if self._next_failure:
                return self._next_failure.pop(0), False
            if self._next_hang:
                self._next_hang -= 1
                return None, True
            return None, False

    # -------------------------------------------------------------- compute catalog and quota

    def remove_size(self, name: str) -> None:
        """The region no longer offers VM size ``name``."""
        with self.lock:
            self.vm_sizes.pop(name.lower(), None)

    def add_size(self, size: VmSize) -> None:
        """The region offers ``size`` (its family gets the default quota unless it has one)."""
        with self.lock:
            self.vm_sizes[size.name.lower()] = size
            self.quota.setdefault(size.family, {"limit": DEFAULT_QUOTA, "current": 0})

    def set_quota(self, family: str, *, limit: int, current: Optional[int] = None) -> None:
        """vCPU quota of ``family`` (as the VM size's ``family`` spells it) and its usage by others."""
        with self.lock:
            entry = self.quota.setdefault(family, {"limit": DEFAULT_QUOTA, "current": 0})
            entry["limit"] = int(limit)
            if current is not None:
                entry["current"] = int(current)

    def usage_of(self, family: str) -> int:
        """vCPUs of ``family`` in use: the quota's ``current`` plus the fake's own deployments."""
        with self.lock:
            own = sum(record.vcpus_in_use for record in self.deployments.values() if record.family == family)
            return self.quota.get(family, {}).get("current", 0) + own

    # -------------------------------------------------------------- compute targets

    def add_compute(self, name: str, *, vm_size: str, max_instances: int = 4, min_instances: int = 0,
                    kind: str = "AmlCompute") -> dict[str, Any]:
        """A compute target of the workspace: an AmlCompute cluster of ``vm_size`` (``kind`` may be
        ``ComputeInstance`` too), in the workspace's region. Returns its resource JSON."""
        compute_id = f"{self.workspace_id}/computes/{name}"
        properties: dict[str, Any] = {"vmSize": vm_size, "vmPriority": "Dedicated", "osType": "Linux"}
        if kind == "AmlCompute":
            properties.update({
                "scaleSettings": {"maxNodeCount": int(max_instances), "minNodeCount": int(min_instances),
                                  "nodeIdleTimeBeforeScaleDown": "PT2M"},
                "currentNodeCount": 0, "targetNodeCount": 0, "allocationState": "Steady",
                "remoteLoginPortPublicAccess": "NotSpecified", "enableNodePublicIp": True,
            })
        resource = {
            "id": compute_id,
            "name": name,
            "type": f"{PROVIDER}/workspaces/computes",
            "location": self.location,
            "tags": {},
            "properties": {
                "computeType": kind,
                "computeLocation": self.location,
                "provisioningState": "Succeeded",
                "description": None,
                "disableLocalAuth": True,
                "properties": properties,
            },
        }
        with self.lock:
            self.computes[name.lower()] = resource
        return resource

    # -------------------------------------------------------------- lifecycle

    def stop_servers(self) -> None:
        """Stop every inference server the fake started (provisioning still running gives up)."""
        with self.lock:
            records = list(self.deployments.values())
            for record in records:
                record.deleted = True
        for record in records:
            stop_server(record)

    def reset(self) -> None:
        """Forget everything but the workspace: stop servers, drop assets, endpoints, faults, requests."""
        self.stop_servers()
        with self.lock:
            self._init_mutable()


def stop_server(record: DeploymentRecord) -> None:
    server, record.server = record.server, None
    if server is not None:
        try:
            server.stop(timeout_s=10)
        except Exception:  # noqa: BLE001 - stopping is best effort at teardown
            logger.exception("stopping the server of deployment %s/%s failed", record.endpoint, record.name)


# ------------------------------------------------------------------------------------------ helpers


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def system_data(created: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    now = now_iso()
    data = {
        "createdAt": now,
        "createdBy": "fake-user@example.test",
        "createdByType": "User",
        "lastModifiedAt": now,
        "lastModifiedBy": "fake-user@example.test",
        "lastModifiedByType": "User",
    }
    if created:
        data["createdAt"] = created.get("createdAt", now)
        data["createdBy"] = created.get("createdBy", data["createdBy"])
    return data


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": [], "additionalInfo": []}}


_DURATION = re.compile(r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def iso_duration_ms(text: Optional[str], default_ms: int) -> int:
    """Milliseconds of an ISO 8601 duration such as ``PT5S`` or ``PT1M30.5S``."""
    if not text:
        return default_ms
    match = _DURATION.match(str(text).strip())
    if not match:
        return default_ms
    days, hours, minutes = (int(match.group(g) or 0) for g in ("d", "h", "m"))
    seconds = float(match.group("s") or 0)
    return int(((days * 24 + hours) * 60 + minutes) * 60_000 + seconds * 1000)


@dataclass
class Reply:
    """What a route answers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    """One request as the routes see it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    #: Whether an ``Authorization: Bearer <token>`` header came (the token itself is not kept).
    bearer: bool = False
    #: The ``X-IDENTITY-HEADER`` secret of a managed-identity token request.
    identity_header: Optional[str] = None
