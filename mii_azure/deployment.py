"""The Deployment handle: one class for every target (local harness, Azure ML endpoint).

``query`` speaks the JSON ``/score`` contract over HTTP through a small transport seam (tests and the
Azure target can swap it), and translates failures once, here, into the SDK's exception types: a 400
is a BadRequestError whichever target answered it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol, Union

from .errors import RequestError, ServiceUnavailableError, error_for_status
from .planner import OptimizationPlan

__all__ = ["Deployment", "DeploymentBackend", "HttpTransport", "UrllibTransport", "HttpResponse"]


@dataclass(frozen=True)
class HttpResponse:
    """What a transport returns: status, body bytes, headers."""

    status: int
    body: bytes
    headers: Mapping[str, str]


class HttpTransport(Protocol):
    """Sends one HTTP POST; the seam tests and targets replace."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpResponse:
        """POST ``body`` to ``url``; raise OSError when the server cannot be reached."""


class UrllibTransport:
    """The default transport, on the standard library."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpResponse:
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return HttpResponse(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as error:
            return HttpResponse(error.code, error.read(), dict(error.headers))


class DeploymentBackend(Protocol):
    """What a target does for a handle besides answering queries."""

    def logs(self, name: str, lines: int) -> str:
        """The last ``lines`` lines of the deployment's log."""

    def delete(self, name: str) -> None:
        """Stop the deployment and forget it."""


class Deployment:
    """A running deployment: query it, read its logs, delete it. Works as a context manager."""

    def __init__(
        self,
        name: str,
        *,
        target: str,
        scoring_uri: str,
        backend: DeploymentBackend,
        grpc_target: Optional[str] = None,
        plan: Optional[OptimizationPlan] = None,
        headers: Optional[Mapping[str, str]] = None,
        transport: Optional[HttpTransport] = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.name = name
        self.target = target
        self.scoring_uri = scoring_uri
        self.grpc_target = grpc_target
        self.plan = plan
        self._backend = backend
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._transport: HttpTransport = transport or UrllibTransport()
        self._timeout_s = timeout_s

    def query(self, request: Union[str, list[Any], Mapping[str, Any], None] = None, **parameters: Any) -> dict[str, Any]:
        """Score ``request`` and return the response object of the scoring contract.

        ``request`` is a full request (``{"query": ..., "parameters": {...}}``), or just the query:
        a string, a list of strings, or a question-answering ``{"question", "context"}`` object.
        Keyword arguments are added to ``parameters``.
        """
        body = _request_body(request, parameters)
        try:
            response = self._transport.post(self.scoring_uri, json.dumps(body).encode("utf-8"), self._headers, self._timeout_s)
        except OSError as exc:
            raise ServiceUnavailableError(
                f"Deployment {self.name!r} cannot be reached at {self.scoring_uri} ({exc}). Check that it is "
                "running (mii_azure.list_deployments()) and see its logs.",
                retry_after=5,
                deployment=self.name,
            ) from exc
        payload = _decode(response.body)
        if response.status == 200 and isinstance(payload, dict) and "responses" in payload:
            return payload
        raise _error_from(response, payload, self.name)

    def logs(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the deployment's log."""
        return self._backend.logs(self.name, lines)

    def delete(self) -> None:
        """Stop the deployment (in-flight requests finish first) and forget it."""
        self._backend.delete(self.name)

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r}, target={self.target!r}, scoring_uri={self.scoring_uri!r})"


def _request_body(request: Any, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping is a whole request (``{"query": ...}``, or the legacy ``{"question", "context"}``);
    anything else is the query itself."""
    body = dict(request) if isinstance(request, Mapping) else {"query": request}
    if parameters:
        body["parameters"] = {**dict(body.get("parameters") or {}), **parameters}
    return body


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _error_from(response: HttpResponse, payload: Any, name: str) -> RequestError:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and "message" in error:
        message = str(error["message"])
    elif isinstance(payload, dict) and "message" in payload:  # the inference server's own errors
        message = str(payload["message"])
    else:
        message = response.body[:500].decode("utf-8", "replace") or f"HTTP {response.status}"
    error_type = error_for_status(response.status)
    facts: dict[str, Any] = {"status_code": response.status, "deployment": name}
    if error_type is ServiceUnavailableError:
        retry = response.headers.get("Retry-After") or response.headers.get("retry-after") or "1"
        return ServiceUnavailableError(message, retry_after=float(retry), **facts)
    return error_type(message, **facts)
