"""The online endpoint and deployment routes of the fake Resource Manager.

PUT, PATCH and DELETE are long-running (201/202 with ``Azure-AsyncOperation`` and ``Location``);
GET, list, ``listKeys``, ``regenerateKeys``, ``token`` and ``getLogs`` answer at once. Like the
service, a PUT is checked first (traffic that adds up to 100 and names existing deployments; a VM
size the region offers; vCPU quota for the instances plus 20% reserved for upgrades, rounded up; a
request timeout of at most 180 s); deleting a deployment that still has traffic is refused. Each endpoint gets its own scoring front
(:mod:`front`); a deployment's server is started by :mod:`fake_provisioning`.
"""

from __future__ import annotations

import copy
import math
import secrets
import threading
import time
import uuid
from typing import Any, Callable, Optional

from fake_arm_state import (
    PROVIDER,
    QUOTA_RESERVE,
    Call,
    DeploymentRecord,
    EndpointRecord,
    FakeArmState,
    Operation,
    Reply,
    VmSize,
    error_body,
    iso_duration_ms,
    stop_server,
    system_data,
)
from fake_provisioning import Provisioner
from front import EndpointFront, ScoringFront

__all__ = ["OnlineEndpointRoutes", "MAX_REQUEST_TIMEOUT_MS"]

#: The longest request timeout a managed online deployment accepts (Azure ML documents 180 s).
MAX_REQUEST_TIMEOUT_MS = 180_000


class OnlineEndpointRoutes:
    """Route handlers for ``.../onlineEndpoints/...``; mixed into :class:`fake_arm.FakeArm`."""

    state: FakeArmState
    front: ScoringFront
    provisioner: Provisioner
    _new_operation: Callable[..., Operation]
    _operation_headers: Callable[[Operation], dict[str, str]]

    # -------------------------------------------------------------- online endpoints

    def _endpoint_view(self, record: EndpointRecord) -> dict[str, Any]:
        with self.state.lock:
            resource = copy.deepcopy(record.resource)
            if record.state in ("Creating", "Updating") and time.monotonic() >= record.ready_at:
                record.state = "Succeeded"
            resource["properties"]["provisioningState"] = record.state
        return resource

    def _endpoint_record(self, call: Call) -> Optional[EndpointRecord]:
        with self.state.lock:
            return self.state.endpoints.get(call.params["endpoint"].lower())

    def _endpoint_missing(self, call: Call) -> Reply:
        return Reply(404, error_body("UserError", f"Could not find endpoint '{call.params['endpoint']}' in workspace "
                                                  f"'{self.state.workspace_name}'."))

    def _endpoint_list(self, call: Call) -> Reply:
        with self.state.lock:
            records = list(self.state.endpoints.values())
        return Reply(200, {"value": [self._endpoint_view(record) for record in records]})

    def _endpoint_get(self, call: Call) -> Reply:
        record = self._endpoint_record(call)
        return Reply(200, self._endpoint_view(record)) if record else self._endpoint_missing(call)

    def _check_traffic(self, endpoint: str, traffic: dict[str, Any]) -> Optional[Reply]:
        try:
            weights = {name: int(value) for name, value in (traffic or {}).items()}
        except (TypeError, ValueError):
            return Reply(400, error_body("BadArgument", "Traffic values must be whole percentages."))
        total = sum(weights.values())
        if weights and total not in (0, 100):
            return Reply(400, error_body("BadArgument", f"Traffic of endpoint '{endpoint}' must add up to 100 (or 0); "
                                                        f"it adds up to {total}."))
        with self.state.lock:
            known = {name for (ep, name) in self.state.deployments if ep == endpoint.lower()}
        missing = [name for name, weight in weights.items() if weight > 0 and name.lower() not in known]
        if missing:
            return Reply(400, error_body("BadArgument", f"Traffic names deployments that do not exist on endpoint "
                                                        f"'{endpoint}': {', '.join(missing)}."))
        return None

    def _endpoint_put(self, call: Call) -> Reply:
        name = call.params["endpoint"]
        body = call.body if isinstance(call.body, dict) else {}
        properties = copy.deepcopy(body.get("properties") or {})
        auth_mode = str(properties.get("authMode") or "Key")
        problem = self._check_traffic(name, properties.get("traffic") or {})
        if problem:
            return problem
        with self.state.lock:
            record = self.state.endpoints.get(name.lower())
            front = self.front.add_endpoint(name, auth_mode=_front_auth_mode(auth_mode))
            created = record is None
            keys = record.keys if record else {"primaryKey": secrets.token_urlsafe(32),
                                               "secondaryKey": secrets.token_urlsafe(32)}
            resource = self._endpoint_resource(name, body, properties, front, record.scoring_path if record else "/score",
                                               record.resource["systemData"] if record else None)
            if record is None:
                record = EndpointRecord(name=name, resource=resource, keys=keys, ready_at=0.0)
                self.state.endpoints[name.lower()] = record
            record.resource = resource
            record.state = "Creating" if created else "Updating"
            record.ready_at = time.monotonic() + self.state.endpoint_provisioning_s
            front.set_keys(keys.values())
            front.set_traffic(resource["properties"]["traffic"])
        operation = self._new_operation(lambda: self._endpoint_operation_status(record))
        return Reply(201 if created else 200, self._endpoint_view(record), self._operation_headers(operation))

    def _endpoint_resource(self, name: str, body: dict[str, Any], properties: dict[str, Any], front: EndpointFront,
                           scoring_path: str, created: Optional[dict[str, Any]]) -> dict[str, Any]:
        properties.update({
            "authMode": properties.get("authMode") or "Key",
            # /score, or the scoring route of a custom container deployed to the endpoint.
            "scoringUri": front.uri(scoring_path),
            "swaggerUri": front.uri("/swagger.json"),
            "traffic": {k: int(v) for k, v in (properties.get("traffic") or {}).items()},
            "mirrorTraffic": properties.get("mirrorTraffic") or {},
            "publicNetworkAccess": properties.get("publicNetworkAccess") or "Enabled",
            "properties": {**(properties.get("properties") or {}),
                           "azureml.onlineendpointid": f"{self.state.workspace_id}/onlineendpoints/{name}"},
            "keys": None,
        })
        identity = copy.deepcopy(body.get("identity") or {"type": "SystemAssigned"})
        if str(identity.get("type", "")).lower().startswith("systemassigned"):
            identity.setdefault("principalId", str(uuid.uuid5(uuid.NAMESPACE_URL, f"endpoint/{name}")))
            identity.setdefault("tenantId", self.state.tenant_id)
        return {
            "id": f"{self.state.workspace_id}/onlineEndpoints/{name}",
            "name": name,
            "type": f"{PROVIDER}/workspaces/onlineEndpoints",
            "location": body.get("location") or self.state.location,
            "tags": body.get("tags") or {},
            "kind": body.get("kind") or "Managed",
            "identity": identity,
            "systemData": system_data(created),
            "properties": properties,
        }

    def _endpoint_operation_status(self, record: EndpointRecord) -> tuple[str, Optional[dict[str, Any]]]:
        with self.state.lock:
            self._endpoint_view(record)
            return ("Succeeded", None) if record.state == "Succeeded" else ("InProgress", None)

    def _endpoint_patch(self, call: Call) -> Reply:
        record = self._endpoint_record(call)
        if record is None:
            return self._endpoint_missing(call)
        body = call.body if isinstance(call.body, dict) else {}
        changes = body.get("properties") or {}
        if "traffic" in changes:
            problem = self._check_traffic(record.name, changes["traffic"] or {})
            if problem:
                return problem
        with self.state.lock:
            props = record.resource["properties"]
            if "traffic" in changes:
                props["traffic"] = {k: int(v) for k, v in (changes["traffic"] or {}).items()}
            for key in ("mirrorTraffic", "description", "publicNetworkAccess"):
                if key in changes:
                    props[key] = changes[key]
            if "tags" in body:
                record.resource["tags"] = body["tags"] or {}
            record.state = "Updating"
            record.ready_at = time.monotonic() + self.state.endpoint_provisioning_s
            front = self.front.get(record.name)
            if front is not None:
                front.set_traffic(props["traffic"])
        operation = self._new_operation(lambda: self._endpoint_operation_status(record))
        return Reply(202, None, self._operation_headers(operation))

    def _endpoint_delete(self, call: Call) -> Reply:
        with self.state.lock:
            record = self.state.endpoints.pop(call.params["endpoint"].lower(), None)
            if record is None:
                return self._endpoint_missing(call)
            doomed = [d for key, d in self.state.deployments.items() if key[0] == record.name.lower()]
            for deployment in doomed:
                deployment.deleted = True
                del self.state.deployments[(deployment.endpoint.lower(), deployment.name.lower())]
        done = threading.Event()

        def teardown() -> None:
            for deployment in doomed:
                stop_server(deployment)
            self.front.remove_endpoint(record.name)
            done.set()

        threading.Thread(target=teardown, name=f"delete-{record.name}", daemon=True).start()
        operation = self._new_operation(lambda: ("Succeeded", None) if done.is_set() else ("InProgress", None))
        return Reply(202, None, self._operation_headers(operation))

    def _endpoint_keys(self, call: Call) -> Reply:
        record = self._endpoint_record(call)
        return Reply(200, dict(record.keys)) if record else self._endpoint_missing(call)

    def _endpoint_regenerate_keys(self, call: Call) -> Reply:
        record = self._endpoint_record(call)
        if record is None:
            return self._endpoint_missing(call)
        body = call.body if isinstance(call.body, dict) else {}
        which = "secondaryKey" if str(body.get("keyType", "Primary")).lower() == "secondary" else "primaryKey"
        with self.state.lock:
            record.keys[which] = body.get("keyValue") or secrets.token_urlsafe(32)
            front = self.front.get(record.name)
            if front is not None:
                front.set_keys(record.keys.values())
        operation = self._new_operation(lambda: ("Succeeded", None))
        return Reply(202, None, self._operation_headers(operation))

    def _endpoint_token(self, call: Call) -> Reply:
        record = self._endpoint_record(call)
        if record is None:
            return self._endpoint_missing(call)
        token = secrets.token_urlsafe(48)
        front = self.front.get(record.name)
        if front is not None:
            front.add_token(token)
        now = int(time.time())
        return Reply(200, {"accessToken": token, "tokenType": "Bearer", "expiryTimeUtc": now + 3600,
                           "refreshAfterTimeUtc": now + 1800})

    # -------------------------------------------------------------- online deployments

    def _deployment_record(self, call: Call) -> Optional[DeploymentRecord]:
        with self.state.lock:
            return self.state.deployments.get((call.params["endpoint"].lower(), call.params["deployment"].lower()))

    def _deployment_missing(self, call: Call) -> Reply:
        return Reply(404, error_body("UserError", f"Could not find deployment '{call.params['deployment']}' of endpoint "
                                                  f"'{call.params['endpoint']}'."))

    def _deployment_view(self, record: DeploymentRecord) -> dict[str, Any]:
        with self.state.lock:
            resource = copy.deepcopy(record.resource)
            resource["properties"]["provisioningState"] = record.state
        return resource

    def _deployment_list(self, call: Call) -> Reply:
        if self._endpoint_record(call) is None:
            return self._endpoint_missing(call)
        with self.state.lock:
            records = [r for key, r in self.state.deployments.items() if key[0] == call.params["endpoint"].lower()]
        return Reply(200, {"value": [self._deployment_view(record) for record in records]})

    def _deployment_get(self, call: Call) -> Reply:
        record = self._deployment_record(call)
        return Reply(200, self._deployment_view(record)) if record else self._deployment_missing(call)

    def _check_compute(self, properties: dict[str, Any], sku: dict[str, Any],
                       previous: Optional[DeploymentRecord]) -> tuple[Optional[Reply], Optional[VmSize], int]:
        instance_type = str(properties.get("instanceType") or "Standard_DS3_v2")
        count = int((sku or {}).get("capacity") or 1)
        with self.state.lock:
            size = self.state.vm_sizes.get(instance_type.lower())
            if size is None:
                offered = ", ".join(s.name for s in self.state.vm_sizes.values())
                return Reply(400, error_body("BadArgument", f"The instance type {instance_type} is not supported in "
                                                            f"region {self.state.location}. Supported: {offered}.")), None, 0
            needed = size.vcpus * math.ceil(count * QUOTA_RESERVE)
            entry = self.state.quota.get(size.family, {"limit": 0, "current": 0})
            in_use = self.state.usage_of(size.family) - (previous.vcpus_in_use if previous and
                                                         previous.family == size.family else 0)
            if in_use + needed > entry["limit"]:
                return Reply(400, error_body(
                    "QuotaExceeded",
                    f"Not enough quota available for {instance_type} in SubscriptionId {self.state.subscription_id}. "
                    f"Current usage/limit: {in_use}/{entry['limit']}. Additional needed: {needed} "
                    f"({count} instance(s) plus 20% reserved for upgrades, {size.vcpus} vCPUs each). "
                    "Please see troubleshooting guide, available here: https://aka.ms/oe-tsg#error-outofquota",
                )), None, 0
        return None, size, needed

    def _deployment_put(self, call: Call) -> Reply:
        endpoint = self._endpoint_record(call)
        if endpoint is None:
            return self._endpoint_missing(call)
        name = call.params["deployment"]
        body = copy.deepcopy(call.body) if isinstance(call.body, dict) else {}
        properties = body.setdefault("properties", {})
        previous = self._deployment_record(call)
        problem, size, needed = self._check_compute(properties, body.get("sku") or {}, previous)
        if problem:
            return problem
        timeout_ms = iso_duration_ms((properties.get("requestSettings") or {}).get("requestTimeout"), 0)
        if timeout_ms > MAX_REQUEST_TIMEOUT_MS:
            return Reply(400, error_body("BadArgument", f"requestSettings.requestTimeout is {timeout_ms} ms; managed "
                                                        f"online deployments allow at most {MAX_REQUEST_TIMEOUT_MS} ms."))
        resource = {
            "id": f"{self.state.workspace_id}/onlineEndpoints/{endpoint.name}/deployments/{name}",
            "name": name,
            "type": f"{PROVIDER}/workspaces/onlineEndpoints/deployments",
            "location": body.get("location") or self.state.location,
            "tags": body.get("tags") or {},
            "kind": body.get("kind") or "Managed",
            "sku": body.get("sku") or {"name": "Default", "capacity": 1},
            "systemData": system_data(previous.resource["systemData"] if previous else None),
            "properties": properties,
        }
        _fill_deployment_defaults(properties)
        failure, hang = self.state.take_deployment_fate()
        with self.state.lock:
            record = previous or DeploymentRecord(endpoint=endpoint.name, name=name, resource=resource)
            record.resource = resource
            record.state = "Updating" if previous else "Creating"
            record.error = None
            record.generation += 1
            record.family = size.family if size else None
            record.vcpus_in_use = needed
            self.state.deployments[(endpoint.name.lower(), name.lower())] = record
        generation = record.generation
        if not hang:
            self.provisioner.start(record, generation, failure)
        operation = self._new_operation(lambda: self._deployment_operation_status(record, generation),
                                        poll_ms=self.state.deployment_poll_ms)
        return Reply(200 if previous else 201, self._deployment_view(record), self._operation_headers(operation))

    def _deployment_patch(self, call: Call) -> Reply:
        record = self._deployment_record(call)
        if record is None:
            return self._deployment_missing(call)
        body = call.body if isinstance(call.body, dict) else {}
        with self.state.lock:
            if "sku" in body and body["sku"]:
                record.resource["sku"].update(body["sku"])
            if "tags" in body:
                record.resource["tags"] = body["tags"] or {}
            for key, value in (body.get("properties") or {}).items():
                record.resource["properties"][key] = value
            front = self.front.get(record.endpoint)
            if front is not None and record.server is not None and record.state == "Succeeded":
                front.set_deployment(self.provisioner.front_deployment(record))
        operation = self._new_operation(lambda: ("Succeeded", None))
        return Reply(202, None, self._operation_headers(operation))

    def _deployment_operation_status(self, record: DeploymentRecord,
                                     generation: int) -> tuple[str, Optional[dict[str, Any]]]:
        with self.state.lock:
            if record.deleted:
                return "Canceled", {"code": "OperationCanceled", "message": f"Deployment '{record.name}' was deleted "
                                                                            "before it finished provisioning."}
            if record.generation != generation:
                return "Canceled", {"code": "OperationCanceled", "message": "A newer update replaced this one."}
            if record.state == "Succeeded":
                return "Succeeded", None
            if record.state == "Failed":
                return "Failed", record.error
            return "InProgress", None

    def _deployment_delete(self, call: Call) -> Reply:
        endpoint = self._endpoint_record(call)
        if endpoint is None:
            return self._endpoint_missing(call)
        with self.state.lock:
            record = self.state.deployments.get((endpoint.name.lower(), call.params["deployment"].lower()))
            if record is None:
                return self._deployment_missing(call)
            traffic = {key.lower(): value for key, value in (endpoint.resource["properties"].get("traffic") or {}).items()}
            weight = int(traffic.get(record.name.lower(), 0) or 0)
            if weight > 0 and self.state.refuse_delete_with_traffic:
                return Reply(400, error_body("BadArgument", f"Deployment '{record.name}' has {weight}% of the traffic of "
                                                            f"endpoint '{endpoint.name}'; set its traffic to 0 before "
                                                            "deleting it."))
            record.deleted = True
            del self.state.deployments[(endpoint.name.lower(), record.name.lower())]
        done = threading.Event()

        def teardown() -> None:
            front = self.front.get(endpoint.name)
            if front is not None:
                front.remove_deployment(record.name)
            stop_server(record)
            done.set()

        threading.Thread(target=teardown, name=f"delete-{record.name}", daemon=True).start()
        operation = self._new_operation(lambda: ("Succeeded", None) if done.is_set() else ("InProgress", None))
        return Reply(202, None, self._operation_headers(operation))

    def _deployment_logs(self, call: Call) -> Reply:
        record = self._deployment_record(call)
        if record is None:
            return self._deployment_missing(call)
        body = call.body if isinstance(call.body, dict) else {}
        tail = int(body.get("tail") or 100)
        if str(body.get("containerType") or "InferenceServer").lower() == "storageinitializer":
            lines = list(record.storage_log)
        else:
            text = ""
            if record.log_path is not None and record.log_path.is_file():
                text = record.log_path.read_text(encoding="utf-8", errors="replace")
            lines = text.splitlines()
        return Reply(200, {"content": "\n".join(lines[-tail:]) + ("\n" if lines else "")})


def _fill_deployment_defaults(properties: dict[str, Any]) -> None:
    """Fill in what the service adds to a deployment it accepts (azure-ai-ml relies on some of it)."""
    probe = {"initialDelay": "PT10S", "period": "PT10S", "timeout": "PT2S", "successThreshold": 1}
    defaults: dict[str, Any] = {
        "endpointComputeType": "Managed",
        "scaleSettings": {"scaleType": "Default"},
        "livenessProbe": {**probe, "failureThreshold": 30},
        "readinessProbe": {**probe, "failureThreshold": 30},
        "appInsightsEnabled": False,
        "egressPublicNetworkAccess": "Enabled",
        "environmentVariables": {},
        "properties": {},
    }
    for key, value in defaults.items():
        if properties.get(key) is None:
            properties[key] = value
    settings = properties.get("requestSettings") or {}
    properties["requestSettings"] = {
        "requestTimeout": "PT5S", "maxConcurrentRequestsPerInstance": 1, "maxQueueWait": "PT0.5S",
        **{key: value for key, value in settings.items() if value is not None},
    }


def _front_auth_mode(auth_mode: str) -> str:
    lowered = auth_mode.lower()
    return {"key": "key", "amltoken": "aml_token", "aadtoken": "aad_token"}.get(lowered, lowered)
