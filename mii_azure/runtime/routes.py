"""Every HTTP route of the serving process beside the inference server's probes (DESIGN.md 3, 3b).

One :class:`Router` per process dispatches ``/score``, the OpenAI routes (with and without
``/v1``, plus the Azure AI model inference API's ``/info`` and ``/models/...``) and ``/metrics`` to
the one scoring service. It checks the API key, when one is configured, on every route but the
probes (a constant-time comparison, before the body is read), answers each route's errors in that
route's shape, and counts every answer in the metrics. Nothing here knows about Flask.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from ..config import API_KEY_ENV
from ..errors import AuthenticationError, RequestError, ScoringError
from .openai import OpenAIApi
from .openai.shapes import error_body as openai_error_body
from .openapi import OPENAPI_PATH, openapi_document
from .replies import HttpReply
from .service import ScoringService, error_reply, read_json_body

__all__ = ["Router", "HttpRequest", "API_KEY_ENV", "MethodNotAllowedError", "RouteNotFoundError"]

logger = logging.getLogger(__name__)

#: Routes answered without a key: the inference server's liveness/readiness probe.
PROBES = frozenset({"/"})


class MethodNotAllowedError(RequestError):
    """The route exists but not for this HTTP method."""

    status: ClassVar[int] = 405
    code: ClassVar[str] = "method_not_allowed"


class RouteNotFoundError(RequestError):
    """No route has this path."""

    status: ClassVar[int] = 404
    code: ClassVar[str] = "not_found"


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request as a front hands it over: ``read_body(n)`` returns at most ``n`` bytes."""

    method: str
    path: str
    headers: Mapping[str, str]
    read_body: Callable[[int], bytes]
    content_length: Optional[int] = None

    def header(self, name: str) -> Optional[str]:
        """A header's value, whatever the case of its name."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class _Route:
    pattern: str
    method: Optional[str]  # None: the answer itself checks the method
    openai_shape: bool
    answer: Callable[["Router", HttpRequest, str], HttpReply]


def _score(router: "Router", request: HttpRequest, _: str) -> HttpReply:
    return router.service.handle_http(request.method, request.read_body, request.content_length)


def _metrics(router: "Router", request: HttpRequest, _: str) -> HttpReply:
    body, content_type = router.metrics.render()
    return HttpReply(200, None, {"Content-Type": content_type}, content=body)


def _openapi(router: "Router", request: HttpRequest, _: str) -> HttpReply:
    service = router.service
    return HttpReply(
        200,
        openapi_document(
            model=service.name, task=service.task_cls.name, parameters_model=service.task_cls.parameters_model,
            requires_key=router.requires_key,
        ),
    )


def _models(router: "Router", request: HttpRequest, _: str) -> HttpReply:
    return HttpReply(200, router.openai.list_models())


def _model(router: "Router", request: HttpRequest, model_id: str) -> HttpReply:
    return HttpReply(200, router.openai.get_model(model_id))


def _info(router: "Router", request: HttpRequest, _: str) -> HttpReply:
    return HttpReply(200, router.openai.info())


def _completions(router: "Router", request: HttpRequest, _: str) -> HttpReply:
    return router.openai.completions(router.read_json(request), request.path)


def _chat(router: "Router", request: HttpRequest, _: str) -> HttpReply:
    return router.openai.chat_completions(router.read_json(request), request.path)


def _embeddings(router: "Router", request: HttpRequest, _: str) -> HttpReply:
    return router.openai.embeddings(router.read_json(request), request.path)


def _routes() -> dict[str, _Route]:
    table = {
        "/score": _Route("/score", None, False, _score),
        "/metrics": _Route("/metrics", "GET", False, _metrics),
        OPENAPI_PATH: _Route(OPENAPI_PATH, "GET", False, _openapi),
        "/v1/models": _Route("/v1/models", "GET", True, _models),
        "/v1/models/{id}": _Route("/v1/models/{id}", "GET", True, _model),
    }
    for prefix in ("/v1", "", "/models"):
        for path, method, answer in (
            ("/completions", "POST", _completions),
            ("/chat/completions", "POST", _chat),
            ("/embeddings", "POST", _embeddings),
        ):
            table[prefix + path] = _Route(prefix + path, method, True, answer)
    for path in ("/info", "/models/info"):
        table[path] = _Route(path, "GET", True, _info)
    return table


class Router:
    """Dispatches the serving process's routes to one scoring service; :meth:`handle` never raises."""

    ROUTES: ClassVar[dict[str, _Route]] = _routes()

    def __init__(self, service: ScoringService, *, api_key: Optional[str] = None, metrics: Any = None) -> None:
        self.service = service
        self.openai = OpenAIApi(service)
        self._api_key = api_key.encode("utf-8") if api_key else None
        self._metrics = metrics

    @classmethod
    def from_environment(cls, service: ScoringService, environ: Optional[Mapping[str, str]] = None) -> "Router":
        """A router whose API key, if any, is ``MII_AZURE_API_KEY``."""
        environ = os.environ if environ is None else environ
        return cls(service, api_key=environ.get(API_KEY_ENV) or None)

    def __repr__(self) -> str:
        return f"Router(model={self.service.name!r}, api_key={'set' if self._api_key else 'none'})"

    @property
    def requires_key(self) -> bool:
        """Whether requests must carry the API key."""
        return self._api_key is not None

    @property
    def metrics(self) -> Any:
        """The process's serving metrics."""
        if self._metrics is None:
            from .metrics import serving_metrics

            self._metrics = serving_metrics()
        return self._metrics

    @classmethod
    def mounted_paths(cls) -> list[str]:
        """The paths a front serves through :meth:`handle` (``{id}`` marks a path segment)."""
        return list(cls.ROUTES)

    # --- dispatch ----------------------------------------------------------------------------
    def handle(self, request: HttpRequest) -> HttpReply:
        """Answer one request: authenticate, dispatch, shape errors, count it."""
        started = time.perf_counter()
        route, argument = self._match(request.path)
        openai_shape = route.openai_shape if route is not None else True
        try:
            refused = self.authenticate(request)
            if refused is not None:
                raise refused
            if route is None:
                raise RouteNotFoundError(
                    f"No route {request.path!r} here. This deployment serves /score, /v1/models, /v1/completions, "
                    "/v1/chat/completions, /v1/embeddings, /info, /metrics and /openapi.json (this deployment's routes).",
                )
            if route.method is not None and request.method != route.method:
                raise MethodNotAllowedError(
                    f"{route.pattern} answers {route.method} requests; got {request.method}."
                )
            reply = route.answer(self, request, argument)
        except RequestError as exc:
            reply = self._error(exc, openai_shape)
        except Exception as exc:  # a 500 that says what failed, never a stack trace
            logger.exception("Answering %s failed", request.path)
            reply = self._error(ScoringError(f"Answering {request.path} failed: {type(exc).__name__}: {exc}"), openai_shape)
        label = route.pattern if route is not None else "other"
        if reply.stream is not None:
            return _observed_stream(reply, lambda: self._count(label, reply.status, started))
        self._count(label, reply.status, started)
        return reply

    def authenticate(self, request: HttpRequest) -> Optional[AuthenticationError]:
        """None when the request may pass (no key configured, a probe, or the right key), else the
        401 error; the key is compared in constant time and never logged."""
        if self._api_key is None or request.path in PROBES:
            return None
        header = request.header("Authorization") or ""
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode("utf-8"), self._api_key):
            return None
        if not header:
            return AuthenticationError(
                "This deployment requires an API key: send 'Authorization: Bearer <key>' (the openai client "
                "sends it from api_key=...).",
                openai_code="invalid_api_key",
            )
        return AuthenticationError(
            "Incorrect API key provided. Send the key the deployment was started with as "
            "'Authorization: Bearer <key>'.",
            openai_code="invalid_api_key",
        )

    def refusal(self, request: HttpRequest) -> Optional[HttpReply]:
        """The 401 answer for a request to one of the server's own routes without the key, or None."""
        error = self.authenticate(request)
        if error is None:
            return None
        self._count("other", error.status, time.perf_counter())
        return error_reply(error)

    def read_json(self, request: HttpRequest) -> Any:
        """The decoded JSON body of a POST route, within the deployment's body limit."""
        return read_json_body(request.read_body, request.content_length, self.service.settings.max_body_bytes)

    def serves(self, path: str) -> bool:
        """Whether ``path`` is one of the router's routes."""
        return self._match(path)[0] is not None

    # --- helpers -----------------------------------------------------------------------------
    def _match(self, path: str) -> tuple[Optional[_Route], str]:
        route = self.ROUTES.get(path)
        if route is not None:
            return route, ""
        prefix = "/v1/models/"
        if path.startswith(prefix) and len(path) > len(prefix):
            return self.ROUTES["/v1/models/{id}"], path[len(prefix) :]
        return None, ""

    def _error(self, error: RequestError, openai_shape: bool) -> HttpReply:
        reply = error_reply(error)
        if not openai_shape:
            return reply
        return HttpReply(reply.status, openai_error_body(error), reply.headers)

    def _count(self, route: str, status: int, started: float) -> None:
        try:
            self.metrics.observe_request(route, status, time.perf_counter() - started)
        except Exception:  # metrics never fail a request
            logger.exception("Recording the request's metrics failed")


class _ObservedStream:
    """A streamed body that reports once, when it is finished or closed."""

    def __init__(self, body: Iterator[bytes], on_done: Callable[[], None]) -> None:
        self._body = body
        self._on_done: Optional[Callable[[], None]] = on_done

    def __iter__(self) -> "_ObservedStream":
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._body)
        except StopIteration:
            self._done()
            raise

    def close(self) -> None:
        """Close the body (giving up its generation) and report."""
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        self._done()

    def _done(self) -> None:
        if self._on_done is not None:
            done, self._on_done = self._on_done, None
            done()


def _observed_stream(reply: HttpReply, on_done: Callable[[], None]) -> HttpReply:
    return HttpReply(reply.status, reply.body, reply.headers, stream=_ObservedStream(reply.stream, on_done))

