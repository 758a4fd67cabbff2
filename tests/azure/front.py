"""An HTTPS front on loopback that behaves like the front of an Azure ML managed online endpoint.

One listener (its own port) per endpoint, so the scoring URI has Azure's shape
(``https://127.0.0.1:<port>/score``, or the root ``https://127.0.0.1:<port>/`` once a custom
container whose scoring route is ``/`` is deployed) and every other path reaches the container as is. Like Azure
(troubleshooting page, "common error codes"; FACTS.md):

- every request needs ``Authorization: Bearer <secret>``: a key (``auth_mode`` key), a token the
  endpoint issued (aml_token), or a Microsoft Entra JWT for ``https://ml.azure.com`` (aad_token);
  otherwise 401, and the container is never reached;
- the ``azureml-model-deployment`` header picks the deployment; without it the endpoint's traffic
  split does (404 when no deployment has positive traffic);
- a non-200 answer of the container reaches the client as **424**, with the container's status in
  ``ms-azureml-model-error-statuscode`` and a reason in ``ms-azureml-model-error-reason``; the body
  passes through;
- the deployment's ``request_timeout_ms`` is enforced: **408** when the container is slower;
- more than ``2 x max_concurrent_requests_per_instance x instance_count`` pending requests: **429**.

The ``Authorization`` header is not forwarded to the container. Every answered request is
recorded in :attr:`EndpointFront.log` (no secrets).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Iterable, Optional
from urllib.parse import urlsplit

from certs import LoopbackHttpsServer, LoopbackPki

__all__ = ["FrontDeployment", "EndpointFront", "ScoringFront", "FrontRecord"]

logger = logging.getLogger(__name__)

#: Headers that describe one hop and are never copied across the proxy.
_HOP_HEADERS = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "authorization", "content-length",
}
#: The most request body the front reads (it answers 413 beyond).
MAX_BODY_BYTES = 64 * 1024 * 1024
NO_TRAFFIC_MESSAGE = (
    "No valid deployments to route to. Please check that the endpoint has at least one deployment with positive "
    "weight values or use a deployment specific header to route."
)


@dataclass
class FrontDeployment:
    """Where one deployment's container listens, and the request settings the front enforces."""

    name: str
    base_url: str
    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    instance_count: int = 1
    pending: int = 0

    @property
    def max_pending(self) -> int:
        """Pending requests beyond this get 429 (Azure: 2 x max concurrent x instances)."""
        return 2 * max(1, self.max_concurrent_requests_per_instance) * max(1, self.instance_count)


@dataclass(frozen=True)
class FrontRecord:
    """One request the front answered."""

    method: str
    path: str
    deployment: Optional[str]
    status: int
    upstream_status: Optional[int]


def _jwt_audience(token: str) -> Optional[str]:
    """The ``aud`` claim of an (unverified) JWT, or None if ``token`` is not one."""
    parts = token.split(".")
    if len(parts) < 2:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    audience = payload.get("aud") if isinstance(payload, dict) else None
    return audience if isinstance(audience, str) else None


class EndpointFront:
    """The front of one endpoint: its listener, credentials, traffic and deployments."""

    def __init__(self, name: str, pki: LoopbackPki, *, auth_mode: str = "key", max_threads: int = 64) -> None:
        self.name = name
        self.auth_mode = auth_mode.lower()
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        self._tokens: set[str] = set()
        self._traffic: dict[str, int] = {}
        self._deployments: dict[str, FrontDeployment] = {}
        self.log: list[FrontRecord] = []
        self._server = LoopbackHttpsServer(_handler_for(self), pki, max_threads=max_threads, name=f"front-{name}")

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:<port>`` of this endpoint."""
        return self._server.base_url

    @property
    def scoring_uri(self) -> str:
        """The endpoint's scoring URI with Azure ML's prebuilt inference server (``<base_url>/score``)."""
        return self.uri("/score")

    def uri(self, path: str) -> str:
        """``<base_url><path>``: the endpoint's scoring URI for a deployment whose scoring route is ``path``
        (``https://127.0.0.1:<port>/`` for ``/``)."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def start(self) -> "EndpointFront":
        """Start listening."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._server.stop()

    def set_auth_mode(self, auth_mode: str) -> None:
        """key, aml_token or aad_token."""
        with self._lock:
            self.auth_mode = auth_mode.lower()

    def set_keys(self, keys: Iterable[str]) -> None:
        """The endpoint keys accepted in key mode."""
        with self._lock:
            self._keys = {key for key in keys if key}

    def add_token(self, token: str) -> None:
        """A token the endpoint issued (accepted in aml_token mode)."""
        with self._lock:
            self._tokens.add(token)

    def set_traffic(self, traffic: dict[str, int]) -> None:
        """Percent of traffic per deployment name."""
        with self._lock:
            self._traffic = {name.lower(): int(weight) for name, weight in traffic.items()}

    def set_deployment(self, deployment: FrontDeployment) -> None:
        """Route to ``deployment`` (replacing one of the same name)."""
        with self._lock:
            self._deployments[deployment.name.lower()] = deployment

    def remove_deployment(self, name: str) -> None:
        """Stop routing to ``name``."""
        with self._lock:
            self._deployments.pop(name.lower(), None)

    def authorized(self, header: Optional[str]) -> bool:
        """Whether an ``Authorization`` header value carries an accepted secret."""
        if not header or not header.lower().startswith("bearer "):
            return False
        secret = header[len("bearer "):].strip()
        with self._lock:
            if self.auth_mode == "key":
                return secret in self._keys
            if self.auth_mode == "aml_token":
                return secret in self._tokens
            return _jwt_audience(secret) == "https://ml.azure.com"

    def route(self, requested: Optional[str]) -> tuple[Optional[FrontDeployment], Optional[str]]:
        """The deployment to serve a request (by header, else by traffic), or (None, why-not)."""
        with self._lock:
            if requested:
                deployment = self._deployments.get(requested.strip().lower())
                if deployment is None:
                    return None, f"Deployment {requested!r} of endpoint {self.name!r} does not exist or is not ready."
                return deployment, None
            weighted = [(name, weight) for name, weight in self._traffic.items() if weight > 0]
            if not weighted:
                return None, NO_TRAFFIC_MESSAGE
            names, weights = zip(*weighted)
            chosen = random.choices(names, weights=weights)[0]
            deployment = self._deployments.get(chosen)
            if deployment is None:
                return None, f"Deployment {chosen!r} of endpoint {self.name!r} is not ready."
            return deployment, None

    def try_acquire(self, deployment: FrontDeployment) -> bool:
        """Count one more pending request on ``deployment`` unless it is at its limit."""
        with self._lock:
            if deployment.pending >= deployment.max_pending:
                return False
            deployment.pending += 1
            return True

    def release(self, deployment: FrontDeployment) -> None:
        """One pending request of ``deployment`` ended."""
        with self._lock:
            deployment.pending -= 1

    def record(self, entry: FrontRecord) -> None:
        """Append to :attr:`log`."""
        with self._lock:
            self.log.append(entry)


def _set_read_timeout(upstream: http.client.HTTPResponse, deadline: float) -> bool:
    """Make the next read from the container give up at ``deadline``; False if it has passed.

    The response owns the socket (http.client may already have detached it from the connection),
    so the timeout is set on the socket under the response's buffered reader.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    raw = getattr(upstream.fp, "raw", None)
    sock = getattr(raw, "_sock", None)
    if sock is not None:
        sock.settimeout(remaining)
    return True


def _handler_for(front: EndpointFront) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one endpoint's front."""

    class Handler(_FrontHandler):
        endpoint = front

    return Handler


class _FrontHandler(BaseHTTPRequestHandler):
    """Authenticates, routes and forwards one request to a deployment's container."""

    endpoint: EndpointFront
    protocol_version = "HTTP/1.1"
    timeout = 30
    server_version = "azureml-fe"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        logger.debug("front %s: " + format, self.endpoint.name, *args)

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def do_PUT(self) -> None:  # noqa: N802
        self._serve()

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve()

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._serve()

    # ------------------------------------------------------------------ replies

    def _reply(self, status: int, body: bytes, content_type: str, headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reply_json(self, status: int, payload: object, headers: Optional[dict[str, str]] = None) -> None:
        self._reply(status, json.dumps(payload).encode(), "application/json", headers)

    def _finish(self, deployment: Optional[FrontDeployment], status: int, upstream: Optional[int] = None) -> None:
        self.endpoint.record(
            FrontRecord(self.command, self.path, deployment.name if deployment else None, status, upstream)
        )

    # ------------------------------------------------------------------ the request

    def _read_body(self) -> Optional[bytes]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        if not self.endpoint.authorized(self.headers.get("Authorization")):
            # Azure drops the body of a refused request too; read it so the connection stays usable.
            self._read_body()
            self._reply_json(401, {"message": "Unauthorized: a valid key or token is required."},
                             {"WWW-Authenticate": "Bearer"})
            self._finish(None, 401)
            return
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._reply_json(413, {"message": f"Request body over {MAX_BODY_BYTES} bytes."})
            self._finish(None, 413)
            return
        deployment, why = self.endpoint.route(self.headers.get("azureml-model-deployment"))
        if deployment is None:
            self._reply_json(404, {"message": why})
            self._finish(None, 404)
            return
        if not self.endpoint.try_acquire(deployment):
            self._reply_json(429, {"message": "Too many pending requests: the deployment is at its limit of "
                                              f"{deployment.max_pending} pending requests."},
                             {"azureml-model-deployment": deployment.name})
            self._finish(deployment, 429)
            return
        try:
            self._forward(deployment, body)
        finally:
            self.endpoint.release(deployment)

    def _forward(self, deployment: FrontDeployment, body: bytes) -> None:
        deadline = time.monotonic() + deployment.request_timeout_ms / 1000.0
        target = urlsplit(deployment.base_url)
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80,
                                                timeout=deployment.request_timeout_ms / 1000.0)
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        common = {"azureml-model-deployment": deployment.name}
        try:
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                upstream = connection.getresponse()
            except (socket.timeout, TimeoutError):
                self._reply_json(408, {"message": f"Request timed out after {deployment.request_timeout_ms} ms "
                                                  "(the deployment's request_timeout_ms)."}, common)
                self._finish(deployment, 408)
                return
            except OSError as exc:
                self._reply_json(502, {"message": f"The deployment's container did not answer: {exc}"}, common)
                self._finish(deployment, 502)
                return
            if upstream.status != 200:
                self._relay_error(deployment, upstream, deadline, common)
            else:
                self._relay_success(deployment, upstream, deadline, common)
        finally:
            connection.close()

    def _read_within(self, upstream: http.client.HTTPResponse, deadline: float, size: int = -1) -> Optional[bytes]:
        """Read from the container, or None when the request's deadline passes first."""
        if not _set_read_timeout(upstream, deadline):
            return None
        try:
            return upstream.read(size) if size >= 0 else upstream.read()
        except (socket.timeout, TimeoutError):
            return None

    def _relay_error(self, deployment: FrontDeployment, upstream: http.client.HTTPResponse, deadline: float,
                     common: dict[str, str]) -> None:
        data = self._read_within(upstream, deadline)
        if data is None:
            self._reply_json(408, {"message": f"Request timed out after {deployment.request_timeout_ms} ms."}, common)
            self._finish(deployment, 408, upstream.status)
            return
        headers = {
            **common,
            "ms-azureml-model-error-statuscode": str(upstream.status),
            "ms-azureml-model-error-reason": "model_error",
        }
        self._reply(424, data, upstream.getheader("Content-Type") or "application/octet-stream", headers)
        self._finish(deployment, 424, upstream.status)

    def _relay_success(self, deployment: FrontDeployment, upstream: http.client.HTTPResponse, deadline: float,
                       common: dict[str, str]) -> None:
        length = upstream.getheader("Content-Length")
        if length is not None:
            data = self._read_within(upstream, deadline)
            if data is None:
                self._reply_json(408, {"message": f"Request timed out after {deployment.request_timeout_ms} ms."},
                                 common)
                self._finish(deployment, 408, upstream.status)
                return
            self.send_response(200)
            self._copy_headers(upstream, common)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self._finish(deployment, 200, 200)
            return
        # A stream (server-sent events): pass each piece on as it comes, within the deadline.
        self.send_response(200)
        self._copy_headers(upstream, common)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            piece = self._read_within_stream(upstream, deadline)
            if piece is None:
                self.close_connection = True
                break
            if not piece:
                self.wfile.write(b"0\r\n\r\n")
                break
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()
        self._finish(deployment, 200, 200)

    def _read_within_stream(self, upstream: http.client.HTTPResponse, deadline: float) -> Optional[bytes]:
        if not _set_read_timeout(upstream, deadline):
            return None
        try:
            return upstream.read1(65536)
        except (socket.timeout, TimeoutError):
            return None

    def _copy_headers(self, upstream: http.client.HTTPResponse, common: dict[str, str]) -> None:
        for name, value in upstream.getheaders():
            if name.lower() not in _HOP_HEADERS and name.lower() not in {"server", "date"}:
                self.send_header(name, value)
        for name, value in common.items():
            self.send_header(name, value)


@dataclass
class ScoringFront:
    """The fronts of every endpoint of the fake workspace."""

    pki: LoopbackPki
    max_threads: int = 64
    endpoints: dict[str, EndpointFront] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_endpoint(self, name: str, *, auth_mode: str = "key") -> EndpointFront:
        """The front of ``name``, started on its own port (the existing one if there is one)."""
        with self._lock:
            front = self.endpoints.get(name.lower())
            if front is None:
                front = EndpointFront(name, self.pki, auth_mode=auth_mode, max_threads=self.max_threads).start()
                self.endpoints[name.lower()] = front
            else:
                front.set_auth_mode(auth_mode)
            return front

    def get(self, name: str) -> Optional[EndpointFront]:
        """The front of ``name``, if it exists."""
        with self._lock:
            return self.endpoints.get(name.lower())

    def remove_endpoint(self, name: str) -> None:
        """Stop and forget the front of ``name``."""
        with self._lock:
            front = self.endpoints.pop(name.lower(), None)
        if front is not None:
            front.stop()

    def stop(self) -> None:
        """Stop every endpoint's front."""
        with self._lock:
            fronts, self.endpoints = list(self.endpoints.values()), {}
        for front in fronts:
            front.stop()
