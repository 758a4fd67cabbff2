"""An HTTPS fake of the Azure Resource Manager for one Azure ML workspace, on 127.0.0.1.

The real ``azure.ai.ml.MLClient`` (with a fake credential) talks to it as to
``management.azure.com``. It keeps everything in memory (:mod:`fake_arm_state`), records every
request, and answers the routes azure-ai-ml 1.35.2 uses (several api-versions; the fake records
the version and does not check it):

- the workspace (GET, list), its datastores (``workspaceblobstore``: Azurite's ``devstoreaccount1``)
  and ``listSecrets``; a discovery document;
- model, code, environment and component containers and versions (GET/PUT/DELETE/list with ``$top``,
  ``$orderBy``, ``hash``, ``version``, ``listViewType``) and ``codes/.../startPendingUpload``
  (a container SAS URI into Azurite, one new container per upload);
- online endpoints and deployments (:mod:`fake_online`), whose deployments really run what was
  uploaded (:mod:`fake_provisioning`);
- the long-running operations' status (``retry-after-ms`` hints keep pollers fast);
- ``locations/{loc}/vmSizes`` and ``locations/{loc}/usages`` from editable state;
- compute targets and (pipeline) jobs (:mod:`fake_jobs`): a job is kept as submitted, never run;
- Azure Monitor autoscale settings of the resource group (``Microsoft.Insights/autoscaleSettings``:
  list, GET, PUT, DELETE), which must target an existing deployment of the workspace, one setting each;
- an App Service style managed-identity token endpoint (``GET /msi/token``).

A request without a bearer token gets 401. An unknown route gets 404 ``FakeRouteNotImplemented``
(and a warning in the log). Secrets (endpoint keys, the storage key) are never logged; recorded
headers leave out ``Authorization`` and ``X-IDENTITY-HEADER``.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import re
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite
from certs import TEST_DOMAIN, LoopbackHttpsServer, LoopbackPki
from fake_arm_state import (
    AML_AUDIENCE,
    DEFAULT_VM_SIZES,
    PROVIDER,
    Call,
    FakeArmState,
    FakeCredential,
    Fault,
    Operation,
    RecordedRequest,
    Reply,
    VmSize,
    audience_of_scope,
    error_body,
    make_jwt,
    now_iso,
    system_data,
)
from fake_jobs import PipelineJobRoutes
from fake_online import OnlineEndpointRoutes
from fake_provisioning import Provisioner
from front import ScoringFront

__all__ = [
    "DEFAULT_VM_SIZES",
    "FakeArm",
    "FakeArmState",
    "FakeCredential",
    "Fault",
    "RecordedRequest",
    "VmSize",
    "make_jwt",
]

logger = logging.getLogger(__name__)

#: Poll again after 10 ms. No ``Retry-After: 0`` beside it: azure-core reads ``Retry-After`` first and
#: takes 0 for "no hint", falling back to its default interval (30 s, or azure-ai-ml's 5 s).
_FAST_POLL = {"retry-after-ms": "10"}
#: Request headers never recorded (secrets).
_SECRET_HEADERS = {"authorization", "x-identity-header"}


class FakeArm(OnlineEndpointRoutes, PipelineJobRoutes):
    """The fake Resource Manager: state, routes, the HTTPS server, the fronts and the provisioning."""

    def __init__(
        self,
        *,
        root: Path,
        pki: LoopbackPki,
        azurite: Azurite,
        front: ScoringFront,
        subscription_id: str = "00000000-0000-0000-0000-000000000001",
        resource_group: str = "rg-mii-test",
        workspace_name: str = "ws-mii-test",
        location: str = "eastus",
        tenant_id: str = "00000000-0000-0000-0000-0000000000aa",
    ) -> None:
        self.pki = pki
        self.azurite = azurite
        self.front = front
        container = f"azureml-blobstore-{uuid.uuid5(uuid.NAMESPACE_URL, workspace_name)}"
        self.state = FakeArmState(
            root=root,
            subscription_id=subscription_id,
            resource_group=resource_group,
            workspace_name=workspace_name,
            location=location,
            tenant_id=tenant_id,
            blob_container=container,
        )
        self.provisioner = Provisioner(self.state, azurite, front)
        self._server = LoopbackHttpsServer(_handler_for(self), pki, max_threads=64, name="fake-arm")
        self._routes = self._build_routes()

    # -------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:<port>`` (the cloud's ``resource_manager``)."""
        return self._server.base_url

    @property
    def port(self) -> int:
        """The port the fake listens on."""
        return self._server.port

    @property
    def msi_endpoint(self) -> str:
        """The managed-identity token endpoint (``IDENTITY_ENDPOINT``)."""
        return f"{self.base_url}/msi/token"

    @property
    def storage_endpoint(self) -> str:
        """The cloud's ``storage_endpoint``: blob URLs become ``https://<account>.blob.<this>``."""
        return f"core.{TEST_DOMAIN}:{self.azurite.port}"

    @property
    def account_url(self) -> str:
        """The production-style blob account URL the SDK uses."""
        return f"https://{ACCOUNT_NAME}.blob.{self.storage_endpoint}"

    def start(self) -> "FakeArm":
        """Create the datastore container in Azurite and start serving."""
        self.azurite.create_containers([self.state.blob_container])
        self._server.start()
        logger.info("fake ARM at %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop the servers the fake started, the fronts, and the HTTPS server."""
        self.state.stop_servers()
        self.front.stop()
        self._server.stop()

    def reset(self) -> None:
        """Fresh state for the next test: servers and fronts stopped, Azurite emptied (the workspace and
        its datastore container stay)."""
        self.state.reset()
        self.front.stop()
        self.azurite.clear(keep=[self.state.blob_container])

    # -------------------------------------------------------------- dispatch

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Callable[[Call], Reply]]]:
        sub = r"/subscriptions/(?P<sub>[^/]+)"
        rg = sub + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices"
        ws = rg + r"/workspaces/(?P<ws>[^/]+)"
        loc = sub + r"/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)"
        asset = r"/(?P<kind>models|codes|environments|components)"
        endpoint = ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)"
        deployment = endpoint + r"/deployments/(?P<deployment>[^/]+)"
        autoscale = sub + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Insights/autoscaleSettings"
        table: list[tuple[str, str, Callable[[Call], Reply]]] = [
            ("GET", r"/msi/token", self._msi_token),
            ("GET", r"/discovery", self._discovery),
            ("GET", loc + r"/vmSizes", self._vm_sizes),
            ("GET", loc + r"/usages", self._usages),
            ("GET", loc + r"/mfeOperationsStatus/(?P<op>[^/]+)", self._operation_status),
            ("GET", loc + r"/mfeOperationResults/(?P<op>[^/]+)", self._operation_result),
            ("GET", rg + r"/workspaces", self._workspace_list),
            ("GET", ws, self._workspace_get),
            ("GET", ws + r"/datastores", self._datastore_list),
            ("GET", ws + r"/datastores/(?P<name>[^/]+)", self._datastore_get),
            ("POST", ws + r"/datastores/(?P<name>[^/]+)/listSecrets", self._datastore_secrets),
            ("GET", ws + asset, self._container_list),
            ("GET", ws + asset + r"/(?P<name>[^/]+)", self._container_get),
            ("PUT", ws + asset + r"/(?P<name>[^/]+)", self._container_put),
            ("GET", ws + asset + r"/(?P<name>[^/]+)/versions", self._version_list),
            ("GET", ws + asset + r"/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._version_get),
            ("PUT", ws + asset + r"/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._version_put),
            ("DELETE", ws + asset + r"/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._version_delete),
            ("POST", ws + r"/codes/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/startPendingUpload",
             self._start_pending_upload),
            ("GET", ws + r"/onlineEndpoints", self._endpoint_list),
            ("GET", endpoint, self._endpoint_get),
            ("PUT", endpoint, self._endpoint_put),
            ("PATCH", endpoint, self._endpoint_patch),
            ("DELETE", endpoint, self._endpoint_delete),
            ("POST", endpoint + r"/listKeys", self._endpoint_keys),
            ("POST", endpoint + r"/regenerateKeys", self._endpoint_regenerate_keys),
            ("POST", endpoint + r"/token", self._endpoint_token),
            ("GET", endpoint + r"/deployments", self._deployment_list),
            ("GET", deployment, self._deployment_get),
            ("PUT", deployment, self._deployment_put),
            ("PATCH", deployment, self._deployment_patch),
            ("DELETE", deployment, self._deployment_delete),
            ("POST", deployment + r"/getLogs", self._deployment_logs),
            ("GET", ws + r"/computes", self._compute_list),
            ("GET", ws + r"/computes/(?P<name>[^/]+)", self._compute_get),
            ("GET", ws + r"/jobs", self._job_list),
            ("GET", ws + r"/jobs/(?P<name>[^/]+)", self._job_get),
            ("PUT", ws + r"/jobs/(?P<name>[^/]+)", self._job_put),
            ("POST", ws + r"/jobs/(?P<name>[^/]+)/cancel", self._job_cancel),
            ("GET", autoscale, self._autoscale_list),
            ("GET", autoscale + r"/(?P<name>[^/]+)", self._autoscale_get),
            ("PUT", autoscale + r"/(?P<name>[^/]+)", self._autoscale_put),
            ("DELETE", autoscale + r"/(?P<name>[^/]+)", self._autoscale_delete),
        ]
        return [(method, re.compile(f"^{pattern}/?$", re.I), handler) for method, pattern, handler in table]

    def dispatch(self, call: Call) -> Reply:
        """Answer one request: an injected fault, the matching route, or 404 for an unknown route."""
        fault = self.state.take_fault(call.method, call.path)
        if fault is not None:
            return Reply(fault.status, copy.deepcopy(fault.body), dict(fault.headers))
        if call.path != "/msi/token" and not call.bearer:
            return Reply(401, error_body("AuthenticationFailed", "Authentication failed: no bearer token was sent."),
                         {"WWW-Authenticate": 'Bearer authorization_uri="https://127.0.0.1/", error="invalid_token"'})
        for method, pattern, handler in self._routes:
            match = pattern.match(call.path)
            if match and method == call.method:
                call.params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                problem = self._check_scope(call.params)
                if problem is not None:
                    return problem
                return handler(call)
        logger.warning("fake ARM has no route for %s %s", call.method, call.path)
        return Reply(404, error_body("FakeRouteNotImplemented", f"The fake Resource Manager has no route for "
                                                                f"{call.method} {call.path}."))

    def _check_scope(self, params: dict[str, str]) -> Optional[Reply]:
        state = self.state
        if "sub" in params and params["sub"].lower() != state.subscription_id.lower():
            return Reply(404, error_body("SubscriptionNotFound", f"The subscription '{params['sub']}' could not be found."))
        if "rg" in params and params["rg"].lower() != state.resource_group.lower():
            return Reply(404, error_body("ResourceGroupNotFound", f"Resource group '{params['rg']}' could not be found."))
        if "ws" in params and params["ws"].lower() != state.workspace_name.lower():
            return Reply(404, error_body("ResourceNotFound", f"Workspace '{params['ws']}' was not found."))
        if "loc" in params and params["loc"].lower() != state.location.lower():
            return Reply(400, error_body("LocationNotAvailableForResourceType",
                                         f"The fake workspace's region is {state.location}, not {params['loc']}."))
        return None

    # -------------------------------------------------------------- long-running operations

    def _operation_headers(self, operation: Operation) -> dict[str, str]:
        base = (
            f"{self.base_url}/subscriptions/{self.state.subscription_id}/providers/{PROVIDER}"
            f"/locations/{self.state.location}"
        )
        return {
            "Azure-AsyncOperation": f"{base}/mfeOperationsStatus/{operation.id}?api-version=2025-12-01",
            "Location": f"{base}/mfeOperationResults/{operation.id}?api-version=2025-12-01",
            **_FAST_POLL,
        }

    def _new_operation(self, status: Callable[[], tuple[str, Optional[dict[str, Any]]]],
                       poll_ms: int = 10) -> Operation:
        operation = Operation(id=str(uuid.uuid4()), status=status, started=now_iso(), poll_ms=poll_ms)
        with self.state.lock:
            self.state.operations[operation.id] = operation
        return operation

    def _operation_status(self, call: Call) -> Reply:
        operation = self.state.operations.get(call.params["op"])
        if operation is None:
            return Reply(404, error_body("NotFound", "Operation not found."))
        status, error = operation.status()
        body: dict[str, Any] = {"id": operation.id, "name": operation.id, "status": status,
                                "startTime": operation.started}
        if status not in ("InProgress", "Running"):
            body["endTime"] = now_iso()
        if error:
            body["error"] = error
        return Reply(200, body, {"retry-after-ms": str(operation.poll_ms)})

    def _operation_result(self, call: Call) -> Reply:
        operation = self.state.operations.get(call.params["op"])
        if operation is None:
            return Reply(404, error_body("NotFound", "Operation not found."))
        status, error = operation.status()
        if status in ("InProgress", "Running"):
            return Reply(202, None, self._operation_headers(operation))
        if error:
            return Reply(400, {"error": error})
        return Reply(204)

    # -------------------------------------------------------------- identity and workspace

    def _msi_token(self, call: Call) -> Reply:
        if call.identity_header != self.state.identity_header:
            return Reply(401, {"error": "invalid_request", "error_description": "X-IDENTITY-HEADER is wrong."})
        resource = call.query.get("resource") or AML_AUDIENCE
        token, expires = make_jwt(audience_of_scope(resource), tenant_id=self.state.tenant_id,
                                  object_id=str(uuid.uuid5(uuid.NAMESPACE_URL, "managed-identity")))
        return Reply(200, {"access_token": token, "expires_on": str(expires), "resource": resource,
                           "token_type": "Bearer"})

    def _discovery(self, call: Call) -> Reply:
        base = self.base_url
        return Reply(200, {key: base for key in ("api", "catalog", "experimentation", "history", "modelmanagement",
                                                  "pipelines", "studio")})

    def _workspace_resource(self) -> dict[str, Any]:
        state = self.state
        sub_rg = f"/subscriptions/{state.subscription_id}/resourceGroups/{state.resource_group}/providers"
        return {
            "id": state.workspace_id,
            "name": state.workspace_name,
            "type": f"{PROVIDER}/workspaces",
            "location": state.location,
            "kind": "Default",
            "tags": {},
            "sku": {"name": "Basic", "tier": "Basic"},
            "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, "ws-identity")),
                         "tenantId": state.tenant_id},
            "systemData": system_data(),
            "properties": {
                "workspaceId": state.workspace_guid,
                "friendlyName": state.workspace_name,
                "description": "Fake workspace of the mii_azure tests",
                "provisioningState": "Succeeded",
                "tenantId": state.tenant_id,
                "storageAccount": f"{sub_rg}/Microsoft.Storage/storageAccounts/{ACCOUNT_NAME}",
                "keyVault": f"{sub_rg}/Microsoft.KeyVault/vaults/kvmiitest",
                "applicationInsights": f"{sub_rg}/Microsoft.Insights/components/aimiitest",
                "containerRegistry": f"{sub_rg}/Microsoft.ContainerRegistry/registries/crmiitest",
                "discoveryUrl": f"{self.base_url}/discovery",
                "mlFlowTrackingUri": f"azureml://127.0.0.1:{self._server.port}/mlflow/v1.0{state.workspace_id}",
                "hbiWorkspace": False,
                "v1LegacyMode": False,
                "publicNetworkAccess": "Enabled",
                "storageHnsEnabled": False,
                "systemDatastoresAuthMode": "accesskey",
                "enableDataIsolation": False,
            },
        }

    def _workspace_get(self, call: Call) -> Reply:
        return Reply(200, self._workspace_resource())

    def _workspace_list(self, call: Call) -> Reply:
        return Reply(200, {"value": [self._workspace_resource()]})

    def _datastore_resource(self, name: str) -> dict[str, Any]:
        state = self.state
        return {
            "id": f"{state.workspace_id}/datastores/{name}",
            "name": name,
            "type": f"{PROVIDER}/workspaces/datastores",
            "systemData": system_data(),
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": ACCOUNT_NAME,
                "containerName": state.blob_container,
                "endpoint": self.storage_endpoint,
                "protocol": "https",
                "credentials": {"credentialsType": "AccountKey"},
                "isDefault": True,
                "serviceDataAccessAuthIdentity": "None",
                "subscriptionId": state.subscription_id,
                "resourceGroup": state.resource_group,
                "description": "Azurite's devstoreaccount1 (the fake's workspace blob store)",
                "tags": {},
                "properties": {},
            },
        }

    def _datastore_list(self, call: Call) -> Reply:
        return Reply(200, {"value": [self._datastore_resource("workspaceblobstore")]})

    def _datastore_get(self, call: Call) -> Reply:
        name = call.params["name"]
        if name.lower() != "workspaceblobstore":
            return Reply(404, error_body("UserError", f"Datastore '{name}' was not found in the workspace."))
        return Reply(200, self._datastore_resource("workspaceblobstore"))

    def _datastore_secrets(self, call: Call) -> Reply:
        if call.params["name"].lower() != "workspaceblobstore":
            return Reply(404, error_body("UserError", f"Datastore '{call.params['name']}' was not found."))
        return Reply(200, {"secretsType": "AccountKey", "key": ACCOUNT_KEY})

    # -------------------------------------------------------------- assets (models, codes, environments)

    def _container_resource(self, kind: str, name: str) -> Optional[dict[str, Any]]:
        with self.state.lock:
            container = self.state.assets[kind].get(name)
            versions = self.state.versions[kind].get(name, {})
            if container is None:
                return None
            resource = copy.deepcopy(container)
            numeric = [int(v) for v in versions if v.isdigit()]
            latest = max(versions.values(), key=lambda r: r["systemData"]["createdAt"])["name"] if versions else None
            resource["properties"]["latestVersion"] = latest
            resource["properties"]["nextVersion"] = str(max(numeric) + 1) if numeric else "1"
            return resource

    def _ensure_container(self, kind: str, name: str, properties: Optional[dict[str, Any]] = None) -> None:
        with self.state.lock:
            if name not in self.state.assets[kind]:
                self.state.assets[kind][name] = {
                    "id": f"{self.state.workspace_id}/{kind}/{name}",
                    "name": name,
                    "type": f"{PROVIDER}/workspaces/{kind}",
                    "systemData": system_data(),
                    "properties": {"isArchived": False, "provisioningState": "Succeeded", "tags": {},
                                   "properties": {}, "description": None},
                }
            if properties:
                merged = self.state.assets[kind][name]["properties"]
                merged.update({k: v for k, v in properties.items() if k not in ("latestVersion", "nextVersion")})

    def _container_list(self, call: Call) -> Reply:
        kind = call.params["kind"]
        names = list(self.state.assets[kind])
        return Reply(200, {"value": [r for r in (self._container_resource(kind, n) for n in names) if r]})

    def _container_get(self, call: Call) -> Reply:
        resource = self._container_resource(call.params["kind"], call.params["name"])
        if resource is None:
            return Reply(404, error_body("UserError", f"{call.params['kind'][:-1].capitalize()} container "
                                                      f"'{call.params['name']}' was not found."))
        return Reply(200, resource)

    def _container_put(self, call: Call) -> Reply:
        kind, name = call.params["kind"], call.params["name"]
        existed = name in self.state.assets[kind]
        self._ensure_container(kind, name, (call.body or {}).get("properties") or {})
        return Reply(200 if existed else 201, self._container_resource(kind, name))

    def _version_list(self, call: Call) -> Reply:
        kind, name = call.params["kind"], call.params["name"]
        query = call.query
        with self.state.lock:
            if "hash" in query:
                # A content-hash lookup searches the whole workspace: anonymous code gets a new name
                # each time, and the SDK takes the name and version from the id of what is found.
                candidates = [r for versions in self.state.versions[kind].values() for r in versions.values()]
            else:
                candidates = list(self.state.versions[kind].get(name, {}).values())
            resources = [copy.deepcopy(r) for r in candidates]
        if "hash" in query:
            resources = [r for r in resources if (r["properties"].get("properties") or {}).get("hash_sha256") ==
                         query["hash"]]
        if "version" in query:
            resources = [r for r in resources if r["name"] == query["version"]]
        view = (query.get("listViewType") or "ActiveOnly").lower()
        if view == "activeonly":
            resources = [r for r in resources if not r["properties"].get("isArchived")]
        elif view == "archivedonly":
            resources = [r for r in resources if r["properties"].get("isArchived")]
        order = (query.get("$orderBy") or query.get("$orderby") or "").lower()
        resources.sort(key=lambda r: r["systemData"]["createdAt"], reverse="desc" in order or not order)
        if "$top" in query:
            resources = resources[: int(query["$top"])]
        return Reply(200, {"value": resources})

    def _version_get(self, call: Call) -> Reply:
        kind, name, version = call.params["kind"], call.params["name"], call.params["version"]
        with self.state.lock:
            resource = self.state.versions[kind].get(name, {}).get(version)
        if resource is None:
            return Reply(404, error_body("UserError", f"{kind[:-1].capitalize()} {name}:{version} was not found."))
        return Reply(200, copy.deepcopy(resource))

    def _version_put(self, call: Call) -> Reply:
        kind, name, version = call.params["kind"], call.params["name"], call.params["version"]
        body = call.body if isinstance(call.body, dict) else {}
        properties = copy.deepcopy(body.get("properties") or {})
        properties["provisioningState"] = "Succeeded"
        # The service answers with every collection present, and azure-ai-ml relies on it.
        for key, default in (("isArchived", False), ("isAnonymous", False), ("tags", {}), ("properties", {})):
            if properties.get(key) is None:
                properties[key] = default
        if kind == "models" and properties.get("flavors") is None:
            properties["flavors"] = {}
        if kind == "environments" and isinstance(properties.get("build"), dict):
            properties["build"]["dockerfilePath"] = properties["build"].get("dockerfilePath") or "Dockerfile"
        self._ensure_container(kind, name)
        with self.state.lock:
            existing = self.state.versions[kind].setdefault(name, {}).get(version)
            resource = {
                "id": f"{self.state.workspace_id}/{kind}/{name}/versions/{version}",
                "name": version,
                "type": f"{PROVIDER}/workspaces/{kind}/versions",
                "systemData": system_data(existing["systemData"] if existing else None),
                "properties": properties,
            }
            self.state.versions[kind][name][version] = resource
        return Reply(200 if existing else 201, copy.deepcopy(resource))

    def _version_delete(self, call: Call) -> Reply:
        kind, name, version = call.params["kind"], call.params["name"], call.params["version"]
        with self.state.lock:
            removed = self.state.versions[kind].get(name, {}).pop(version, None)
        return Reply(200 if removed else 204)

    def _start_pending_upload(self, call: Call) -> Reply:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        upload_id = uuid.uuid4().hex
        container = f"code-{upload_id[:24]}"
        self.azurite.create_containers([container])
        sas = generate_container_sas(
            account_name=ACCOUNT_NAME,
            container_name=container,
            account_key=ACCOUNT_KEY,
            permission=ContainerSasPermissions(read=True, write=True, list=True, add=True, create=True, delete=True),
            expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2),
        )
        blob_uri = f"{self.account_url}/{container}"
        with self.state.lock:
            self.state.pending_uploads[upload_id] = {"container": container, "name": call.params["name"],
                                                     "version": call.params["version"]}
        sub_rg = f"/subscriptions/{self.state.subscription_id}/resourceGroups/{self.state.resource_group}/providers"
        return Reply(200, {
            "blobReferenceForConsumption": {
                "blobUri": blob_uri,
                "storageAccountArmId": f"{sub_rg}/Microsoft.Storage/storageAccounts/{ACCOUNT_NAME}",
                "credential": {"credentialType": "SAS", "sasUri": f"{blob_uri}?{sas}"},
            },
            "pendingUploadId": upload_id,
            "pendingUploadType": "TemporaryBlobReference",
        })

    # -------------------------------------------------------------- Azure Monitor autoscale settings

    def _autoscale_id(self, name: str) -> str:
        state = self.state
        return (f"/subscriptions/{state.subscription_id}/resourceGroups/{state.resource_group}"
                f"/providers/microsoft.insights/autoscalesettings/{name}")

    def _autoscale_list(self, call: Call) -> Reply:
        with self.state.lock:
            value = [copy.deepcopy(resource) for resource in self.state.autoscale_settings.values()]
        return Reply(200, {"value": value})

    def _autoscale_get(self, call: Call) -> Reply:
        with self.state.lock:
            resource = self.state.autoscale_settings.get(call.params["name"].lower())
        if resource is None:
            return Reply(404, error_body("ResourceNotFound", f"The autoscale setting '{call.params['name']}' was not found."))
        return Reply(200, copy.deepcopy(resource))

    def _autoscale_put(self, call: Call) -> Reply:
        """Create or replace a setting; like Azure Monitor, refuse a missing target, a second setting on one
        target and a capacity whose default is outside [minimum, maximum]."""
        name = call.params["name"]
        body = call.body if isinstance(call.body, dict) else {}
        properties = copy.deepcopy(body.get("properties") or {})
        target = str(properties.get("targetResourceUri") or "")
        if not body.get("location"):
            return Reply(400, error_body("InvalidRequestContent", "The autoscale setting needs a location."))
        match = re.search(r"/onlineEndpoints/([^/]+)/deployments/([^/]+)$", target, re.I)
        with self.state.lock:
            exists = bool(match) and (match.group(1).lower(), match.group(2).lower()) in self.state.deployments
            if not target.lower().startswith(self.state.workspace_id.lower() + "/") or not exists:
                return Reply(400, error_body("TargetResourceNotFound", f"The target resource id '{target}' was not found."))
            other = next((r["name"] for key, r in self.state.autoscale_settings.items()
                          if key != name.lower() and r["properties"]["targetResourceUri"].lower() == target.lower()), None)
            if other is not None:
                return Reply(400, error_body("AutoscaleSettingAlreadyExists",
                                             f"The autoscale setting '{other}' already targets '{target}'; a resource "
                                             "has at most one autoscale setting."))
            for profile in properties.get("profiles") or []:
                capacity = profile.get("capacity") or {}
                low, high, default = (int(capacity.get(k, 0)) for k in ("minimum", "maximum", "default"))
                if not 0 <= low <= default <= high:
                    return Reply(400, error_body("InvalidAutoscaleCapacity",
                                                 f"Profile '{profile.get('name')}': default {default} is not within "
                                                 f"minimum {low} and maximum {high}."))
            existed = name.lower() in self.state.autoscale_settings
            properties["name"] = name
            properties.setdefault("enabled", False)
            properties.setdefault("notifications", [])
            resource = {
                "id": self._autoscale_id(name),
                "name": name,
                "type": "Microsoft.Insights/autoscaleSettings",
                "location": body["location"],
                "tags": body.get("tags") or {},
                "properties": properties,
            }
            self.state.autoscale_settings[name.lower()] = resource
        return Reply(200 if existed else 201, copy.deepcopy(resource))

    def _autoscale_delete(self, call: Call) -> Reply:
        with self.state.lock:
            removed = self.state.autoscale_settings.pop(call.params["name"].lower(), None)
        return Reply(200 if removed else 204)

    # -------------------------------------------------------------- compute

    def _vm_sizes(self, call: Call) -> Reply:
        with self.state.lock:
            sizes = [size.to_rest() for size in self.state.vm_sizes.values()]
        return Reply(200, {"value": sizes})

    def _usages(self, call: Call) -> Reply:
        state = self.state
        base = f"/subscriptions/{state.subscription_id}/providers/{PROVIDER}/locations/{state.location}/usages"
        with state.lock:
            families = dict(state.quota)
        value = [
            {
                "id": f"{base}/{family}",
                "amlWorkspaceLocation": state.location,
                "type": f"{PROVIDER}/vmFamily/usages",
                "unit": "Count",
                "currentValue": state.usage_of(family),
                "limit": entry["limit"],
                "name": {"value": family, "localizedValue": f"{family} vCPUs"},
            }
            for family, entry in sorted(families.items())
        ]
        return Reply(200, {"value": value})


# ------------------------------------------------------------------------------------------ HTTP handler


def _handler_for(arm: FakeArm) -> type[BaseHTTPRequestHandler]:
    class Handler(_ArmHandler):
        fake = arm

    return Handler


class _ArmHandler(BaseHTTPRequestHandler):
    """Parses, records and answers one request to the fake Resource Manager."""

    fake: FakeArm
    protocol_version = "HTTP/1.1"
    timeout = 30
    server_version = "fake-arm"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        logger.debug("fake ARM: " + format, *args)

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        headers = {name.lower(): value for name, value in self.headers.items() if name.lower() not in _SECRET_HEADERS}
        recorded = RecordedRequest(self.command, parts.path, query, body, headers)
        self.fake.state.record(recorded)
        authorization = self.headers.get("Authorization") or ""
        call = Call(
            self.command,
            parts.path,
            query,
            body,
            headers,
            bearer=authorization.lower().startswith("bearer ") and bool(authorization[7:].strip()),
            identity_header=self.headers.get("X-IDENTITY-HEADER"),
        )
        try:
            reply = self.fake.dispatch(call)
        except Exception as exc:  # noqa: BLE001 - a bug in the fake answers 500 with its message
            logger.exception("fake ARM failed on %s %s", self.command, parts.path)
            reply = Reply(500, error_body("FakeInternalError", f"{type(exc).__name__}: {exc}"))
        recorded.status = reply.status
        logger.info("fake ARM %s %s -> %d", self.command, parts.path, reply.status)
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        client_request_id = self.headers.get("x-ms-client-request-id")
        if client_request_id:
            self.send_header("x-ms-client-request-id", client_request_id)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
