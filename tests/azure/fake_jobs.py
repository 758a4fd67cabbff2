"""The compute and job routes of the fake Resource Manager (pipelines), mixed into :class:`fake_arm.FakeArm`.

- ``GET .../computes`` and ``GET .../computes/{name}``: the workspace's compute targets, from
  :meth:`fake_arm_state.FakeArmState.add_compute` (an AmlCompute cluster's ``vmSize`` and scale settings);
  an unknown name is 404, as Azure answers it.
- ``PUT .../jobs/{name}``: a pipeline (or command) job is kept as sent, with the service's own fields
  added (status ``NotStarted``, studio links) and answered 201 (200 for a second PUT). Like the service,
  it is refused (400) when a step names a component version, environment, code or compute that the
  workspace does not hold: every reference must have been created first by the SDK's own PUTs.
- ``GET .../jobs/{name}``, ``GET .../jobs`` and ``POST .../jobs/{name}/cancel``.

Components are assets like models and environments (``components/{name}/versions/{v}``), served by the
generic asset routes of :mod:`fake_arm`. Nothing runs: a job stays ``NotStarted`` (or ``Canceled``).
"""

from __future__ import annotations

import copy
import re
from typing import Any, Iterator

from fake_arm_state import PROVIDER, Call, FakeArmState, Reply, error_body, system_data

__all__ = ["PipelineJobRoutes", "arm_references"]

#: An ARM id inside the workspace: ``.../workspaces/<ws>/<kind>/<name>[/versions/<version>]``.
_ARM_REFERENCE = re.compile(
    r"/workspaces/[^/]+/(?P<kind>components|environments|codes|models|data|computes)/(?P<name>[^/]+)"
    r"(?:/versions/(?P<version>[^/]+))?$",
    re.I,
)


class PipelineJobRoutes:
    """Route handlers for ``.../computes`` and ``.../jobs``."""

    state: FakeArmState
    base_url: str

    # -------------------------------------------------------------- computes

    def _compute_list(self, call: Call) -> Reply:
        with self.state.lock:
            value = [copy.deepcopy(resource) for resource in self.state.computes.values()]
        return Reply(200, {"value": value})

    def _compute_get(self, call: Call) -> Reply:
        with self.state.lock:
            resource = self.state.computes.get(call.params["name"].lower())
        if resource is None:
            return Reply(404, error_body("ResourceNotFound", f"Compute '{call.params['name']}' was not found in the workspace."))
        return Reply(200, copy.deepcopy(resource))

    # -------------------------------------------------------------- jobs

    def _job_put(self, call: Call) -> Reply:
        name = call.params["name"]
        body = call.body if isinstance(call.body, dict) else {}
        properties = copy.deepcopy(body.get("properties") or {})
        if not properties.get("jobType"):
            return Reply(400, error_body("UserError", "The job has no jobType."))
        missing = [reference for reference in arm_references(properties) if not self._holds(reference)]
        if missing:
            named = ", ".join(f"{kind}/{name}" + (f"/versions/{version}" if version else "") for kind, name, version in missing)
            return Reply(400, error_body("UserError", f"The job refers to resources the workspace does not hold: {named}."))
        studio = f"{self.base_url}/studio/runs/{name}"
        properties.setdefault("experimentName", "Default")
        properties["status"] = "NotStarted"
        properties["services"] = {"Studio": {"endpoint": studio, "jobServiceType": "Studio"},
                                  "Tracking": {"endpoint": f"azureml://fake/{name}", "jobServiceType": "Tracking"}}
        for key, default in (("tags", {}), ("properties", {}), ("inputs", {}), ("outputs", {})):
            if properties.get(key) is None:
                properties[key] = default
        with self.state.lock:
            existing = self.state.jobs.get(name.lower())
            resource = {
                "id": f"{self.state.workspace_id}/jobs/{name}",
                "name": name,
                "type": f"{PROVIDER}/workspaces/jobs",
                "systemData": system_data(existing["systemData"] if existing else None),
                "properties": properties,
            }
            self.state.jobs[name.lower()] = resource
        return Reply(200 if existing else 201, copy.deepcopy(resource))

    def _job_get(self, call: Call) -> Reply:
        with self.state.lock:
            resource = self.state.jobs.get(call.params["name"].lower())
        if resource is None:
            return Reply(404, error_body("UserError", f"Job '{call.params['name']}' was not found."))
        return Reply(200, copy.deepcopy(resource))

    def _job_list(self, call: Call) -> Reply:
        with self.state.lock:
            value = [copy.deepcopy(resource) for resource in self.state.jobs.values()]
        return Reply(200, {"value": value})

    def _job_cancel(self, call: Call) -> Reply:
        with self.state.lock:
            resource = self.state.jobs.get(call.params["name"].lower())
            if resource is None:
                return Reply(404, error_body("UserError", f"Job '{call.params['name']}' was not found."))
            resource["properties"]["status"] = "Canceled"
        return Reply(202, None, {"retry-after-ms": "10"})

    def _holds(self, reference: tuple[str, str, str | None]) -> bool:
        """Whether the workspace holds the component, environment, code, model or compute ``reference``."""
        kind, name, version = reference
        with self.state.lock:
            if kind == "computes":
                return name.lower() in self.state.computes
            if kind not in self.state.versions:
                return True  # data assets are not modelled: inputs are the test's to check
            versions = self.state.versions[kind].get(name, {})
            return version in versions if version else bool(versions)


def arm_references(document: Any) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, version) of every workspace ARM id inside ``document`` (a job's properties)."""
    if isinstance(document, dict):
        for value in document.values():
            yield from arm_references(value)
    elif isinstance(document, list):
        for value in document:
            yield from arm_references(value)
    elif isinstance(document, str):
        text = document[len("azureml:"):] if document.lower().startswith("azureml:/") else document
        match = _ARM_REFERENCE.search(text)
        if match and text.lower().startswith("/subscriptions/"):
            yield match["kind"].lower(), match["name"], match["version"]
