"""The Deployment handle: one class for every target (local harness, Azure ML endpoint).

``query`` speaks the JSON ``/score`` contract over HTTP through a small transport seam
(:mod:`mii_azure.http_transport`; tests and targets can swap it) and translates failures once, here,
into the SDK's exception types, so that a 400 is a :class:`BadRequestError` whichever target
answered it. That includes undoing what an Azure ML managed online endpoint's front does to
statuses: a non-200 from the container arrives as **424** with the container's status in the
``ms-azureml-model-error-statuscode`` header; the front's own request timeout is **408**; too many
pending requests, or the rate limit, is **429**; no deployment taking traffic is **404**.

``stream`` asks for the same answer as server-sent events (DESIGN.md section 3a) and returns a
:class:`TextStream` that yields the text as it arrives; its errors are the same types as ``query``'s.

Requests the server did not run (429, 503, a connection that could not be opened or that was
dropped before any answer) are retried with bounded, jittered exponential backoff that honours
``Retry-After`` (see :class:`Retries`). Keys and tokens come from an ``auth`` header provider called
for every request; they never appear in the handle's repr, its errors or its logs.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Protocol, Union

from .errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    EndpointNotFoundError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    ScoringError,
    ServiceUnavailableError,
    TooManyRequestsError,
    error_for_status,
)
from .http_transport import (
    CertificateVerifyError,
    ConnectError,
    ConnectionLostError,
    HttpResponse,
    HttpTransport,
    PooledTransport,
    StreamedResponse,
    UrllibTransport,
)
from .planner import OptimizationPlan
from .sku_choice import AZURE_MAX_REQUEST_TIMEOUT_S

__all__ = [
    "Deployment",
    "TextStream",
    "DeploymentBackend",
    "Retries",
    "AuthProvider",
    "HttpTransport",
    "HttpResponse",
    "PooledTransport",
    "UrllibTransport",
    "MODEL_DEPLOYMENT_HEADER",
    "MODEL_ERROR_STATUS_HEADER",
    "MODEL_ERROR_REASON_HEADER",
]

logger = logging.getLogger(__name__)

MODEL_DEPLOYMENT_HEADER = "azureml-model-deployment"
"""Routes a request to one deployment of an Azure ML endpoint, whatever the traffic split says."""
MODEL_ERROR_STATUS_HEADER = "ms-azureml-model-error-statuscode"
"""On a 424 from an Azure ML endpoint's front: the status the container answered."""
MODEL_ERROR_REASON_HEADER = "ms-azureml-model-error-reason"
"""On a 424 from an Azure ML endpoint's front: the front's reason for it."""
SCORING_PATH = "/score"
"""The scoring contract's route (DESIGN.md section 3)."""


AuthProvider = Callable[[], Mapping[str, str]]
"""Returns the authentication headers for one request (e.g. ``{"Authorization": "Bearer ..."}``)."""

# Header names whose values are credentials: never shown, and scrubbed from any error text.
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "ocp-apim-subscription-key", "x-ms-token"})
_REDACTED = "***"


class DeploymentBackend(Protocol):
    """What a target does for a handle besides answering queries."""

    def logs(self, name: str, lines: int) -> str:
        """The last ``lines`` lines of the deployment's log."""

    def delete(self, name: str) -> None:
        """Stop the deployment and forget it."""


@dataclass(frozen=True)
class Retries:
    """How a handle retries requests the server did not run.

    Retried: HTTP 429 and 503 (also a container's 503 behind an Azure front's 424), a connection
    that could not be opened, and one closed or reset before any byte of an answer. Never retried:
    any other status, and a timeout after the request was sent (the deployment may still be working
    on it; sending it again would only add load).

    At most ``max_retries`` retries after the first try, waiting ``backoff_s`` doubled per retry (at
    most ``max_backoff_s``, "equal jitter": between half and all of it), or exactly what the
    server's ``Retry-After`` says (seconds or an HTTP date). Retries stop once waiting would take
    the time since the first try past ``budget_s``: a ``Retry-After`` that long ends them at once,
    and the error raised carries it as ``retry_after``. ``sleep``, ``clock`` and ``jitter`` (a
    number in [0, 1)) are there for tests.
    """

    max_retries: int = 3
    budget_s: float = 30.0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    jitter: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.budget_s < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError(
                "Retries(max_retries, budget_s, backoff_s, max_backoff_s) cannot be negative; "
                "use Retries(max_retries=0) (or retries=0) to switch retries off.",
                max_retries=self.max_retries,
                budget_s=self.budget_s,
            )

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first) when the server named none."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        return ceiling * (0.5 + 0.5 * self.jitter())


@dataclass
class _Exchange:
    """The last answer of a (possibly retried) request, and what it took to get it."""

    response: Union[HttpResponse, StreamedResponse]
    tries: int
    waited_s: float
    secrets: frozenset[str]


class Deployment:
    """A running deployment: query it, read its logs, delete it. Works as a context manager.

    ``name`` is the SDK's name for the deployment; ``target`` says where it runs ("local",
    "azureml"). For an Azure ML managed online endpoint, ``endpoint`` is the endpoint's name and
    ``deployment`` the deployment's (sent as the ``azureml-model-deployment`` header, so that the
    request reaches that deployment whatever the traffic split); ``auth`` returns the headers that
    authenticate one request (called for every request and retry, so a token can be refreshed, and
    from as many threads as query the handle at once); its values are never stored on the handle,
    shown or logged, and are scrubbed from any error text a server echoes them in. ``headers`` are
    sent with every request (an ``Authorization`` among them is treated like ``auth``'s). ``retries``
    is a :class:`Retries` or a number of retries (0: none). ``timeout_s`` bounds each try
    (connecting, then waiting for the answer).

    ``scoring_uri`` is where queries go: the ``/score`` route. An endpoint's root (what Azure ML reports
    as the scoring URI of a deployment whose scoring route is ``/``) stands for its ``/score``.
    :attr:`openai_base_url` is the base of the OpenAI-compatible routes beside it.
    """

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
        endpoint: Optional[str] = None,
        deployment: Optional[str] = None,
        auth: Optional[AuthProvider] = None,
        retries: Union[Retries, int, None] = None,
        details: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.name = name
        self.target = target
        self.scoring_uri = _scoring_url(scoring_uri)
        self.grpc_target = grpc_target
        self.plan = plan
        self.endpoint = endpoint
        self.deployment = deployment
        #: What the target knows about the deployment (Azure ML: instance type and count, traffic, $/h, age).
        self.details: dict[str, Any] = dict(details or {})
        self.timeout_s = timeout_s
        self.retries = _retries(retries)
        self._backend = backend
        plain = {key: value for key, value in (headers or {}).items() if key.lower() not in _SECRET_HEADERS}
        self._headers = {"Content-Type": "application/json", **plain}
        if deployment:
            self._headers[MODEL_DEPLOYMENT_HEADER] = deployment
        self._auth = _with_static_secrets(auth, headers or {})
        self._transport: HttpTransport = transport if transport is not None else PooledTransport()

    @property
    def openai_base_url(self) -> str:
        """The base URL of the OpenAI-compatible routes beside ``/score`` (``<root>/v1``): pass it as an
        OpenAI client's ``base_url``, with the deployment's key as ``api_key`` (an Azure ML endpoint's key,
        or the local harness's ``MII_AZURE_API_KEY``). The ``model`` of a request is the deployment's name
        (an Azure ML endpoint's name)."""
        parts = urllib.parse.urlsplit(self.scoring_uri)
        root = parts.path[: -len(SCORING_PATH)] if parts.path.endswith(SCORING_PATH) else parts.path
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, root.rstrip("/") + "/v1", "", ""))

    # --- queries -----------------------------------------------------------------------------
    def query(self, request: Union[str, list[Any], Mapping[str, Any], None] = None, **parameters: Any) -> dict[str, Any]:
        """Score ``request`` and return the response object of the scoring contract.

        ``request`` is a full request (``{"query": ..., "parameters": {...}}``), or just the query:
        a string, a list of strings, or a question-answering ``{"question", "context"}`` object.
        Keyword arguments are added to ``parameters``. Failures raise a :class:`RequestError`
        subclass, the same one for the same failure on every target.
        """
        body = json.dumps(_request_body(request, parameters)).encode("utf-8")
        exchange = self._post(body)
        payload = _decode(exchange.response.body)
        if exchange.response.status == 200 and isinstance(payload, dict) and "responses" in payload:
            return payload
        raise self._http_error(exchange, payload)

    def stream(self, request: Union[str, Mapping[str, Any], None] = None, **parameters: Any) -> "TextStream":
        """Generate text for one input and yield it piece by piece as the deployment makes it.

        ``request`` and keyword parameters are as for :meth:`query` (one input; ``"stream": true``
        is added). Returns a :class:`TextStream`: iterate it for the pieces (str); once it is
        exhausted, ``.entry`` is the entry :meth:`query` would answer and ``.response`` the whole
        final event (entry, task, model, replica, timing). A request refused before the stream
        starts raises the same error as :meth:`query`; a failure after it, from the iteration.
        Close the stream (or leave its ``with`` block) to stop early: the deployment gives up the
        generation. ``timeout_s`` bounds each wait for the next piece.
        """
        if not callable(getattr(self._transport, "post_stream", None)):
            raise ConfigError(
                f"The handle's transport {type(self._transport).__name__} cannot stream: it has no post_stream(). "
                "Use the default PooledTransport (leave transport= out) for Deployment.stream.",
                transport=type(self._transport).__name__,
            )
        body = {**_request_body(request, parameters), "stream": True}
        exchange = self._post(json.dumps(body).encode("utf-8"), stream=True)
        response = exchange.response
        content_type = (response.header("Content-Type") or "").split(";")[0].strip().lower()
        if response.status == 200 and content_type == "text/event-stream" and isinstance(response, StreamedResponse):
            return TextStream(self, response, exchange.secrets)
        try:
            whole = response.to_response() if isinstance(response, StreamedResponse) else response
        except OSError as exc:
            raise self._transport_error(exc, exchange.tries, exchange.waited_s, exchange.secrets) from exc
        payload = _decode(whole.body)
        if whole.status == 200:
            raise ScoringError(
                f"Deployment {self.name!r} answered a streamed request without streaming (Content-Type "
                f"{content_type or 'none'}): it may serve an older mii_azure; deploy it again, or use query().",
                **self._facts(status_code=200),
            )
        raise self._http_error(replace(exchange, response=whole), payload)

    def _post(self, body: bytes, *, stream: bool = False) -> _Exchange:
        """POST ``body``, retrying what :class:`Retries` allows; the last answer, or a translated error.
        With ``stream``, the answer is a :class:`StreamedResponse` whose body is still to be read."""
        policy = self.retries
        started = policy.clock()
        waited = 0.0
        tries = 0
        while True:
            tries += 1
            headers, secrets = self._request_headers()
            last: Union[HttpResponse, StreamedResponse, OSError]
            try:
                if stream:
                    headers["Accept"] = "text/event-stream"
                    last = self._transport.post_stream(self.scoring_uri, body, headers, self.timeout_s)  # type: ignore[attr-defined]
                else:
                    last = self._transport.post(self.scoring_uri, body, headers, self.timeout_s)
            except OSError as exc:
                if not _not_run(exc):
                    raise self._transport_error(exc, tries, waited, secrets) from exc
                last = exc
                wait = policy.backoff(tries)
                why = _describe_failure(exc)
            else:
                status = _contract_status(last)
                if status not in (429, 503):
                    return _Exchange(last, tries, waited, secrets)
                retry_after = _retry_after(last)
                wait = retry_after if retry_after is not None else policy.backoff(tries)
                why = f"HTTP {last.status}" + (f" (the container's {status})" if status != last.status else "")
            if tries > policy.max_retries or (policy.clock() - started) + wait > policy.budget_s:
                if isinstance(last, OSError):
                    raise self._transport_error(last, tries, waited, secrets) from last
                return _Exchange(last, tries, waited, secrets)
            logger.info(
                "Deployment %r: %s; the request was not run, retry %d of %d in %.2f s.",
                self.name, why, tries, policy.max_retries, wait,
            )
            if isinstance(last, StreamedResponse):
                last.close()
            policy.sleep(wait)
            waited += wait

    def _request_headers(self) -> tuple[dict[str, str], frozenset[str]]:
        """This try's headers, and the credential values among them (to scrub from any error text)."""
        headers = dict(self._headers)
        secrets: set[str] = set()
        if self._auth is not None:
            for key, value in self._auth().items():
                headers[key] = value
                secrets.add(value)
                if " " in value:  # "Bearer <token>": the token alone is as secret
                    secrets.add(value.split(" ", 1)[1])
        return headers, frozenset(secret for secret in secrets if len(secret) >= 4)

    # --- translation to the SDK's errors, once --------------------------------------------------
    def _facts(self, **facts: Any) -> dict[str, Any]:
        known = {"deployment": self.name, "endpoint": self.endpoint, "azure_deployment": self.deployment}
        return {**{key: value for key, value in known.items() if value is not None}, **facts}

    def _http_error(self, exchange: _Exchange, payload: Any) -> RequestError:
        response, tries = exchange.response, exchange.tries
        message = _redact(_message(response, payload), exchange.secrets)
        status = response.status
        where = f"endpoint {self.endpoint!r}" if self.endpoint else f"deployment {self.name!r}"
        if status == 424:
            reason = response.header(MODEL_ERROR_REASON_HEADER)
            container_status = _contract_status(response)
            facts = self._facts(front_status_code=424, tries=tries, **({"reason": reason} if reason else {}))
            if container_status == 424:
                return ScoringError(
                    f"The model container behind {where} failed without a status (HTTP 424"
                    + (f", {reason}" if reason else "")
                    + f"): {message} (its log: handle.logs()).",
                    status_code=424,
                    **facts,
                )
            return self._contract_error(container_status, message, exchange, facts)
        facts = self._facts(tries=tries, status_code=status)
        if status in (401, 403):
            sent = "refused the key or token sent" if exchange.secrets else "needs a key or token, and none was sent"
            return AuthenticationError(
                f"{_capital(where)} {sent} (HTTP {status}): a key can be wrong, expired or regenerated. Get a fresh "
                f"handle with mii_azure.get_deployment({self.name!r}), which fetches the current key. "
                f"The server said: {message}",
                **facts,
            )
        if status == 404:
            if self.endpoint or self.deployment:
                which = f"deployment {self.deployment!r}" if self.deployment else "deployment receiving traffic"
                text = (
                    f"Endpoint {self.endpoint or '?'!r} has no {which} to take the request (HTTP 404 at "
                    f"{self.scoring_uri}): it does not exist, is not created yet, or gets no traffic. List its "
                    "deployments and their traffic with `az ml online-endpoint show`, give one traffic, or pass "
                    f"deployment=. The endpoint said: {message}"
                )
            else:
                text = (
                    f"Nothing at {self.scoring_uri} takes scoring requests for deployment {self.name!r} (HTTP 404). "
                    f"Get a fresh handle with mii_azure.get_deployment({self.name!r}). The server said: {message}"
                )
            return EndpointNotFoundError(text, scoring_uri=self.scoring_uri, **facts)
        if status == 408:
            return RequestTimeoutError(
                f"The Azure ML endpoint front gave up on the request at its own request timeout before {where} "
                f"answered (HTTP 408; the deployment's request_settings.request_timeout_ms, at most "
                f"{AZURE_MAX_REQUEST_TIMEOUT_S} s). Send fewer inputs or ask for fewer new tokens per request, raise "
                "request_timeout_ms on the deployment, or use a faster SKU.",
                limit_s=AZURE_MAX_REQUEST_TIMEOUT_S,
                **facts,
            )
        if status == 429:
            retry_after = _retry_after(response)
            return TooManyRequestsError(
                f"{_capital(where)} refused the request (HTTP 429): too many requests pending (more than "
                "2 x max_concurrent_requests_per_instance x instance_count) or over its requests-per-second limit; "
                f"nothing was run. {_tried(exchange)}Send fewer requests at once, or raise "
                "max_concurrent_requests_per_instance or instance_count on the deployment. "
                f"The endpoint said: {message}",
                retry_after=retry_after if retry_after is not None else self.retries.backoff(tries),
                **facts,
            )
        return self._contract_error(status, message, exchange, facts)

    def _contract_error(self, status: int, message: str, exchange: _Exchange, facts: dict[str, Any]) -> RequestError:
        """The scoring contract's error for ``status`` (DESIGN.md section 3), with the server's message."""
        facts = {**facts, "status_code": status}
        error_type = error_for_status(status)
        if error_type is ServiceUnavailableError:
            retry_after = _retry_after(exchange.response)
            return ServiceUnavailableError(
                f"{message} {_tried(exchange)}".rstrip(),
                retry_after=retry_after if retry_after is not None else 1.0,
                **facts,
            )
        return error_type(message, **facts)

    def _stream_error(self, error: Any, secrets: frozenset[str]) -> RequestError:
        """The SDK error for a stream's error event (``{"code", "message"}``)."""
        fields = error if isinstance(error, dict) else {}
        message = _redact(str(fields.get("message") or error), secrets)
        error_type = _ERROR_BY_CODE.get(str(fields.get("code")), ScoringError)
        facts = self._facts(status_code=error_type.status, during_stream=True)
        if error_type is ServiceUnavailableError:
            return ServiceUnavailableError(message, retry_after=1.0, **facts)
        return error_type(message, **facts)

    def _stream_cut(self, exc: OSError, received: int, secrets: frozenset[str]) -> RequestError:
        """The SDK error for a stream that stopped arriving before its final event."""
        detail = _redact(str(exc) or type(exc).__name__, secrets)
        facts = self._facts(scoring_uri=self.scoring_uri, received_chars=received)
        if isinstance(exc, TimeoutError):
            return RequestTimeoutError(
                f"Deployment {self.name!r} sent nothing new for timeout_s={self.timeout_s:g} s in the middle of a stream, "
                f"after {received} characters ({detail}). Ask for fewer new tokens, or raise the handle's timeout_s.",
                timeout_s=self.timeout_s,
                **facts,
            )
        return ScoringError(
            f"The stream from deployment {self.name!r} was cut off after {received} characters ({detail}). "
            "See its logs (handle.logs()).",
            **facts,
        )

    def _transport_error(
        self, exc: OSError, tries: int, waited: float, secrets: frozenset[str]
    ) -> Union[RequestError, ConfigError]:
        """The SDK error for a request that got no HTTP answer."""
        detail = _redact(str(exc) or type(exc).__name__, secrets)
        facts = self._facts(tries=tries, scoring_uri=self.scoring_uri)
        if isinstance(exc, CertificateVerifyError):
            return ConfigError(
                f"The TLS certificate of {self.scoring_uri} is not trusted ({detail}). If it is signed by your own "
                "CA, point SSL_CERT_FILE or REQUESTS_CA_BUNDLE at that CA's PEM file.",
                **facts,
            )
        if isinstance(exc, TimeoutError):
            return RequestTimeoutError(
                f"Deployment {self.name!r} sent no answer within timeout_s={self.timeout_s:g} s ({detail}). It was "
                "not retried: it may still be running. Send smaller requests, or raise the handle's timeout_s.",
                timeout_s=self.timeout_s,
                **facts,
            )
        tried = f" Tried {tries} times over {waited:.1f} s." if tries > 1 else ""
        return ServiceUnavailableError(
            f"Deployment {self.name!r} cannot be reached at {self.scoring_uri} ({detail}).{tried} Check that it is "
            "running (mii_azure.list_deployments()) and see its logs.",
            retry_after=5,
            **facts,
        )

    # --- the rest of the handle -----------------------------------------------------------------
    def logs(self, lines: int = 50) -> str:
        """The last ``lines`` lines of the deployment's log."""
        return self._backend.logs(self.name, lines)

    def delete(self) -> None:
        """Stop the deployment (in-flight requests finish first) and forget it."""
        self.close()
        self._backend.delete(self.name)

    # --- Azure ML endpoints: traffic ------------------------------------------------------------
    def set_traffic(self, percent: int) -> dict[str, int]:
        """Give this deployment ``percent`` of its endpoint's traffic; the others are scaled in proportion.
        Returns the new split; the previous one is kept for :meth:`rollback_traffic`."""
        return self._traffic_backend("set_traffic")(self.name, percent)

    def mirror_traffic(self, percent: int) -> dict[str, int]:
        """Copy ``percent`` of the endpoint's live traffic to this deployment (shadow testing; its answers
        are dropped). 0 stops mirroring. Returns the endpoint's mirror split."""
        return self._traffic_backend("mirror_traffic")(self.name, percent)

    def rollback_traffic(self) -> dict[str, int]:
        """Restore the endpoint's split from before the last change mii_azure made; returns it."""
        return self._traffic_backend("rollback_traffic")(self.name)

    def _traffic_backend(self, operation: str) -> Callable[..., dict[str, int]]:
        method = getattr(self._backend, operation, None)
        if method is None:
            raise ConfigError(
                f"{operation} applies to deployments of Azure ML endpoints; the {self.target} deployment "
                f"{self.name!r} takes all of its own requests.",
                conflict=operation,
            )
        return method

    def close(self) -> None:
        """Close the handle's idle connections (the deployment keeps running; queries reopen them)."""
        close = getattr(self._transport, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def __repr__(self) -> str:
        azure = "".join(
            f", {key}={value!r}" for key, value in (("endpoint", self.endpoint), ("deployment", self.deployment)) if value
        )
        return f"Deployment(name={self.name!r}, target={self.target!r}, scoring_uri={self.scoring_uri!r}{azure})"


class TextStream:
    """The text of one streamed generation, piece by piece as the deployment sends it.

    Iterate it for the pieces (str); :attr:`text` is what has arrived so far. Once it is exhausted,
    :attr:`response` is the final event (``entry``, ``task``, ``model``, ``replica``, ``timing``) and
    :attr:`entry` its entry (``{"generated_text", "num_tokens"}``, as :meth:`Deployment.query` answers
    it). A failure after the first piece raises the SDK's error for it from the iteration. Close it
    (or use it as a context manager) to stop early: the deployment gives the generation up.
    """

    def __init__(self, deployment: Deployment, response: StreamedResponse, secrets: frozenset[str] = frozenset()) -> None:
        self.deployment = deployment
        self.text = ""
        self.response: Optional[dict[str, Any]] = None
        self._http = response
        self._events = _sse_events(response.iter_lines())
        self._secrets = secrets
        self._closed = False

    @property
    def entry(self) -> Optional[dict[str, Any]]:
        """The generation's entry once the stream is done; None before."""
        return self.response.get("entry") if self.response is not None else None

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        try:
            for event in self._events:
                if not isinstance(event, dict):
                    continue  # not one of the contract's events
                if "text" in event:
                    piece = str(event["text"])
                    self.text += piece
                    return piece
                if event.get("done"):
                    self.response = {key: value for key, value in event.items() if key != "done"}
                    self._finish()
                    raise StopIteration
                if "error" in event:
                    self.close()
                    raise self.deployment._stream_error(event["error"], self._secrets)
        except OSError as exc:
            self.close()
            raise self.deployment._stream_cut(exc, len(self.text), self._secrets) from exc
        self.close()
        raise ScoringError(
            f"The stream from deployment {self.deployment.name!r} ended without its final event, after "
            f"{len(self.text)} characters. See its logs (handle.logs()).",
            **self.deployment._facts(received_chars=len(self.text)),
        )

    def _finish(self) -> None:
        """Read the (empty) rest of the body, so that the connection can serve the next request."""
        try:
            self._http.read()
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        """Stop reading; a generation still running is given up."""
        self._closed = True
        self._http.close()

    def __enter__(self) -> "TextStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "done" if self.response is not None else "closed" if self._closed else "open"
        return f"TextStream(deployment={self.deployment.name!r}, {state}, received={len(self.text)} chars)"


# --- helpers ----------------------------------------------------------------------------------------

# The error codes of the scoring contract (DESIGN.md section 3), as a stream's error event names them.
_ERROR_BY_CODE: dict[str, type[RequestError]] = {
    cls.code: cls for cls in (BadRequestError, PayloadTooLargeError, ServiceUnavailableError, RequestTimeoutError, ScoringError)
}


def _sse_events(lines: Iterator[bytes]) -> Iterator[Any]:
    """The decoded JSON data of each server-sent event (its ``data:`` lines, up to a blank line)."""
    data: list[bytes] = []
    for line in lines:
        if not line:
            if data:
                yield _decode(b"\n".join(data))
                data = []
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield _decode(b"\n".join(data))


def _scoring_url(uri: str) -> str:
    """The ``/score`` URL of ``uri``: an endpoint's root (Azure ML's scoring URI for a deployment whose
    scoring route is ``/``) means its ``/score``; any other URL is where queries go as it is."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme and parts.netloc and parts.path in ("", "/"):
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, SCORING_PATH, parts.query, ""))
    return uri


def _retries(retries: Union[Retries, int, None]) -> Retries:
    if retries is None:
        return Retries()
    if isinstance(retries, Retries):
        return retries
    if isinstance(retries, int) and not isinstance(retries, bool):
        return Retries(max_retries=retries)
    raise ConfigError(f"retries must be a Retries or a number of retries, not {retries!r}.", retries=repr(retries))


def _with_static_secrets(auth: Optional[AuthProvider], headers: Mapping[str, str]) -> Optional[AuthProvider]:
    """Credential headers given in ``headers`` join the provider's, kept out of the handle's attributes."""
    static = {key: value for key, value in headers.items() if key.lower() in _SECRET_HEADERS}
    if not static:
        return auth
    if auth is None:
        return lambda: static

    def provider() -> Mapping[str, str]:
        return {**static, **auth()}

    return provider


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


def _message(response: HttpResponse, payload: Any) -> str:
    """The error message of an answer: the scoring contract's, the inference server's, or the text."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    if isinstance(payload, dict) and "message" in payload:  # the inference server's (and Azure's front's) own
        return str(payload["message"])
    if isinstance(error, str):
        return error
    return response.body[:500].decode("utf-8", "replace").strip() or f"HTTP {response.status}"


def _contract_status(response: HttpResponse) -> int:
    """The status the scoring container answered: behind an Azure front's 424, the one its header names."""
    if response.status == 424:
        named = response.header(MODEL_ERROR_STATUS_HEADER)
        try:
            return int(named) if named is not None else 424
        except ValueError:
            return 424
    return response.status


def _retry_after(response: HttpResponse) -> Optional[float]:
    """``Retry-After`` in seconds (a number, or an HTTP date against the answer's own ``Date``); None if absent."""
    value = response.header("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    date = response.header("Date")
    now = time.time()
    if date:
        try:
            now = email.utils.parsedate_to_datetime(date).timestamp()  # the server's clock: no skew
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return max(0.0, when - now)


def _not_run(exc: OSError) -> bool:
    """Whether a request that got no answer is known not to have been run, so that sending it again is
    safe: no connection could be opened (nothing was sent), or the connection was closed or reset
    before any byte of an answer (the server did not accept the request; a /score request changes
    nothing, so at worst it is scored twice). A timeout after sending is not: it may still be running."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, OSError):
        exc = exc.reason  # UrllibTransport wraps the socket error
    if isinstance(exc, (ConnectError, ConnectionLostError, ConnectionRefusedError)):
        return True
    return False


def _describe_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionLostError):
        return "the connection was closed before any answer"
    return "the connection could not be opened"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _tried(exchange: _Exchange) -> str:
    if exchange.tries <= 1:
        return ""
    return f"Tried {exchange.tries} times over {exchange.waited_s:.1f} s. "


def _redact(text: str, secrets: frozenset[str]) -> str:
    """``text`` with every credential value replaced by ``***`` (a server might echo a header back)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text

