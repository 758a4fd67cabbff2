"""The scoring service: the one door into the model, for Azure ML's ``run()`` and the local harness.

It turns a request body into the response object of DESIGN.md section 3, and every failure into the
contract's status code and JSON error body. Nothing here knows about Flask or gRPC.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..config import HUB_MODEL_ENV, ServingSettings
from ..errors import (
    BadRequestError,
    ConfigError,
    PayloadTooLargeError,
    RequestError,
    ScoringError,
    ServiceUnavailableError,
)
from ..hardware import Hardware
from ..planner import OptimizationPlan, PlanOverrides
from ..tasks.base import Deadline, ScoringRequest, check_input_count
from .catalog import catalog_answer, is_catalog_request, read_catalog_request
from .engine import Engine
from .metrics import serving_metrics
from .replies import HttpReply
from .streaming import SSE_HEADERS, ScoreStream, SseBody, split_stream_flag
from .replicas import ReplicaSlot, claim_replica, worker_count

if TYPE_CHECKING:
    from ..packaging import Package

__all__ = [
    "ScoringService",
    "HttpReply",
    "configure_logging",
    "not_ready_reply",
    "error_reply",
    "read_json_body",
    "MODEL_DIR_ENV",
]

logger = logging.getLogger(__name__)

#: Where Azure ML (and ``azmlinfsrv --model_dir``) puts the model.
MODEL_DIR_ENV = "AZUREML_MODEL_DIR"
#: Port (and address) of the gRPC front the local harness asks for.
GRPC_PORT_ENV = "MII_AZURE_GRPC_PORT"
GRPC_HOST_ENV = "MII_AZURE_GRPC_HOST"



class ScoringService:
    """Validates requests, runs them on the engine and shapes the answers.

    ``replica`` is the slot of this model copy when the server runs several (one per worker; see
    :mod:`mii_azure.runtime.replicas`); every answer says which copy gave it.
    """

    def __init__(self, engine: Engine, *, name: Optional[str] = None, replica: Optional[ReplicaSlot] = None) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.task_cls = type(engine.task)
        self.name = name or self.settings.deployment_name or engine.facts.name
        self.replica = replica
        self.replica_index = replica.index if replica is not None else 0

    @classmethod
    def from_environment(
        cls, environ: Optional[Mapping[str, str]] = None, *, package_dir: Optional[Path] = None
    ) -> "ScoringService":
        """Load the model named by ``AZUREML_MODEL_DIR`` with ``MII_AZURE_*`` settings.

        With ``package_dir`` (score.py running from a package), the package is verified first; its
        settings are the defaults and its plan is used where it fits this machine (else the model is
        re-planned here with the same overrides). Without ``AZUREML_MODEL_DIR`` the package's linked
        model is served.

        When the inference server runs several workers (``WORKER_COUNT`` > 1, one per model copy),
        this worker first claims its replica slot and with it its share of the GPUs and cores,
        before anything touches CUDA; call :meth:`mark_ready` once it serves.
        """
        environ = os.environ if environ is None else environ
        bundle = _verified_package(package_dir) if package_dir is not None else None
        model_dir = (
            environ.get(MODEL_DIR_ENV)
            or _hub_model_dir(environ)
            or (str(bundle.model_dir) if bundle and bundle.model_dir else None)
        )
        if not model_dir:
            raise ConfigError(
                f"{MODEL_DIR_ENV} is not set, so there is no model to serve. Start the server with "
                "--model_dir <folder> (azmlinfsrv) or register the model with the deployment (Azure ML).",
                variable=MODEL_DIR_ENV,
            )
        slot = _claim_replica_slot(environ, bundle)
        if bundle is None:
            return cls(Engine.load(Path(model_dir), settings=ServingSettings.from_env(environ)), replica=slot)
        settings = ServingSettings.from_env(environ, defaults=bundle.manifest.settings.model_dump())
        machine_gpus = slot.machine_gpus if slot is not None and slot.gpus else None
        plan, overrides = plan_for_this_machine(bundle.plan, machine_gpus=machine_gpus)
        if plan is not None and slot is not None and slot.gpus and len(slot.gpus) < plan.tensor_parallel:
            raise ConfigError(
                f"{slot.replicas} workers (WORKER_COUNT) leave each model copy {len(slot.gpus)} of the "
                f"{slot.machine_gpus} GPUs, and the plan's tensor_parallel={plan.tensor_parallel} needs "
                f"{plan.tensor_parallel}; set WORKER_COUNT={plan.replicas} (the plan's replicas).",
                conflict="replicas",
                workers=slot.replicas,
                tensor_parallel=plan.tensor_parallel,
            )
        engine = Engine.load(Path(model_dir), settings=settings, plan=plan, overrides=overrides)
        return cls(engine, replica=slot)

    def mark_ready(self) -> None:
        """Record that this copy serves: its replica slot's ``.ready`` marker (with several copies) and
        the ``mii_azure_model_copies_ready`` metric."""
        if self.replica is not None:
            self.replica.mark_ready()
        metrics = serving_metrics()
        metrics.describe_model(self.name, self.task_cls.name)
        metrics.set_ready(True)

    def serve_grpc_if_configured(
        self, environ: Optional[Mapping[str, str]] = None, *, api_key: Optional[str] = None
    ) -> None:
        """Start the OIP-v2 gRPC front in this process when ``MII_AZURE_GRPC_PORT`` is set.

        With several model copies (one per worker) every worker listens on the same port and the
        kernel spreads the connections among them. It stops (letting in-flight calls finish) when
        the process exits. With ``api_key``, its metadata and inference calls need the key.
        """
        environ = os.environ if environ is None else environ
        port = environ.get(GRPC_PORT_ENV)
        if not port:
            return
        from .grpc_server import start_grpc_server

        server = start_grpc_server(
            self,
            port=int(port),
            host=environ.get(GRPC_HOST_ENV, "127.0.0.1"),
            share_port=self.replica is not None,
            api_key=api_key,
        )
        atexit.register(lambda: server.stop(grace=30).wait())

    # --- the JSON contract -----------------------------------------------------------------
    def score(self, payload: Any) -> Any:
        """Answer a decoded JSON request; raises a RequestError for a request that fails.

        A request in the Azure ML model catalog's shape (``{"input_data": {"input_string": [...]}}``)
        is answered in the catalog's shape (see :mod:`mii_azure.runtime.catalog`).
        """
        started = time.perf_counter()
        if is_catalog_request(payload):
            catalog = read_catalog_request(payload, tokenizer=getattr(self.engine.task, "tokenizer", None))
            answer = self.score_request(self.task_cls.parse_request(catalog.native, self.settings), started)
            return catalog_answer(answer, chat=catalog.chat)
        return self.score_request(self.task_cls.parse_request(payload, self.settings), started)

    def score_inputs(self, inputs: list[Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Answer already-separated inputs and parameters (the gRPC front's door into the same path).

        ``inputs`` are as ``Task.inputs_from_tensors`` returns them; ``parameters`` are the JSON
        ``parameters`` keys. Raises a RequestError for a request that fails.
        """
        started = time.perf_counter()
        return self.score_request(self._request_from_inputs(inputs, parameters), started)

    def _request_from_inputs(self, inputs: list[Any], parameters: Mapping[str, Any]) -> ScoringRequest:
        request = ScoringRequest(inputs=list(inputs), parameters=self.task_cls.parse_parameters(parameters))
        check_input_count(request, self.settings)
        return request

    def score_request(self, request: ScoringRequest, started: Optional[float] = None) -> dict[str, Any]:
        """Answer a validated request (the door of the other routes: the OpenAI API builds its own);
        ``started`` is when its handling began (for ``timing.total_ms``; default now)."""
        started = time.perf_counter() if started is None else started
        deadline = Deadline(self.settings.request_timeout_s)
        model_started = time.perf_counter()
        responses = self.engine.infer(request, deadline)
        finished = time.perf_counter()
        return {
            "responses": responses,
            "task": self.task_cls.name,
            "model": self.name,
            "replica": self.replica_index,
            "timing": {
                "total_ms": round((finished - started) * 1000, 3),
                "model_ms": round((finished - model_started) * 1000, 3),
            },
        }

    # --- streaming (DESIGN.md section 3a) ---------------------------------------------------
    def open_stream(self, payload: Any) -> "ScoreStream":
        """Start streaming a decoded JSON request (without its ``"stream"`` flag; see
        :func:`split_stream_flag`). Raises a RequestError for a request that fails before its first
        piece of text: a bad request, one that is not a one-input generation, a full queue, a timeout."""
        started = time.perf_counter()
        return self.open_stream_request(self.task_cls.parse_request(payload, self.settings), started)

    def open_stream_inputs(self, inputs: list[Any], parameters: Mapping[str, Any]) -> "ScoreStream":
        """:meth:`open_stream` for already-separated inputs and parameters (the gRPC front's door)."""
        started = time.perf_counter()
        return self.open_stream_request(self._request_from_inputs(inputs, parameters), started)

    def open_stream_request(self, request: ScoringRequest, started: Optional[float] = None) -> "ScoreStream":
        """:meth:`open_stream` for a validated one-input generation request."""
        started = time.perf_counter() if started is None else started
        model_started = time.perf_counter()
        events = self.engine.stream(request, Deadline(self.settings.request_timeout_s))
        about = {"task": self.task_cls.name, "model": self.name, "replica": self.replica_index}
        return ScoreStream(events, about=about, started=started, model_started=model_started)

    # --- HTTP ------------------------------------------------------------------------------
    def handle_http(
        self, method: str, read_body: Callable[[int], bytes], content_length: Optional[int]
    ) -> HttpReply:
        """Answer one HTTP request to ``/score``; never raises.

        ``read_body(n)`` returns at most ``n`` bytes of the body, so an oversized body without a
        Content-Length is refused without being read whole. With ``"stream": true`` a 200 answer
        has a :attr:`HttpReply.stream` of server-sent events; an error before the first piece is an
        ordinary JSON error, one after it the stream's last event.
        """
        try:
            if method != "POST":
                raise BadRequestError(
                    f"/score answers POST requests with a JSON body such as {self.task_cls.example_request()}; "
                    f"got {method}."
                )
            payload, stream = split_stream_flag(read_json_body(read_body, content_length, self.settings.max_body_bytes))
            if stream and is_catalog_request(payload):
                raise BadRequestError(
                    "The model catalog's request shape ('input_data') is not streamed; send "
                    '{"query": "...", "stream": true} to stream.'
                )
            if stream:
                return HttpReply(200, {}, dict(SSE_HEADERS), stream=SseBody(self.open_stream(payload)))
            return HttpReply(200, self.score(payload))
        except RequestError as exc:
            return error_reply(exc)
        except Exception as exc:  # the contract: a 500 that says what failed, never a stack trace
            logger.exception("Scoring failed")
            return error_reply(ScoringError(f"Scoring failed: {type(exc).__name__}: {exc}"))


def _verified_package(package_dir: Path) -> "Package":
    from ..packaging import Package

    bundle = Package.load(package_dir)
    bundle.verify()
    manifest = bundle.manifest
    logger.info(
        "Serving package %s (%s, built %s) with the mii_azure runtime in %s",
        manifest.name,
        manifest.task,
        manifest.created_at,
        Path(__file__).resolve().parents[1],
    )
    return bundle


def _claim_replica_slot(environ: Mapping[str, str], bundle: Optional["Package"]) -> Optional[ReplicaSlot]:
    """This worker's replica slot when the server runs several workers (one model copy each), else None."""
    workers = worker_count(environ)
    planned = bundle.plan.replicas if bundle is not None else None
    if planned is not None and planned != workers:
        logger.warning(
            "The package's plan serves %d model cop%s per instance; this inference server runs %d worker(s) "
            "(WORKER_COUNT), so %d cop%s serve here. Set WORKER_COUNT=%d to serve the plan's.",
            planned,
            "ies" if planned > 1 else "y",
            workers,
            workers,
            "ies" if workers > 1 else "y",
            planned,
        )
    if workers == 1:
        return None
    return claim_replica(workers, environ=environ)


def plan_for_this_machine(
    packaged: OptimizationPlan, *, machine_gpus: Optional[int] = None
) -> tuple[Optional[OptimizationPlan], PlanOverrides]:
    """The package's plan if it was made for this machine; else no plan and the same choices as
    overrides, for the engine to re-plan here (a package built for an Azure GPU SKU, run locally).

    ``machine_gpus``: the GPUs of the whole machine, when this process was given a share of them (a
    replica slot), so that the package's plan for the whole machine is still recognized. ``replicas``
    is not carried into a re-plan: how many copies run is the server's worker count.
    """
    local = Hardware.local()
    if machine_gpus is not None and local.kind == "gpu":
        local = local.model_copy(update={"gpus": machine_gpus})
    if packaged.hardware == local:
        return packaged, PlanOverrides()
    overrides = {}
    for name in packaged.overrides:
        if name == "replicas":
            continue
        value = getattr(packaged, name)
        overrides[name] = "none" if value is None and name in ("quantization", "zero_offload") else value
    logger.info(
        "The package was planned for %s; this machine is %s, so the model is re-planned here.",
        packaged.hardware.describe(),
        local.describe(),
    )
    return None, PlanOverrides(**overrides)


def read_json_body(read_body: Callable[[int], bytes], content_length: Optional[int], limit: int) -> Any:
    """Read and decode a JSON request body of at most ``limit`` bytes; an oversized body is refused
    (PayloadTooLargeError) without being read whole, a malformed one with a BadRequestError."""
    if content_length is not None and content_length > limit:
        raise _body_too_large(content_length, limit)
    body = read_body(limit + 1)
    if len(body) > limit:
        raise _body_too_large(len(body), limit)
    return decode_json_body(body)


def decode_json_body(body: bytes) -> Any:
    """Decode a request body as UTF-8 JSON; BadRequestError says what is wrong with it."""
    if not body.strip():
        raise BadRequestError('The request body is empty; send a JSON object such as {"query": "some text"}.')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"The request body is not valid UTF-8 (byte {exc.start} cannot be decoded); send UTF-8 encoded JSON."
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
    except RecursionError:
        raise BadRequestError(
            "The request body nests JSON arrays or objects too deeply to be read; send a flatter document."
        ) from None
    if _SURROGATE_ESCAPE.search(text):  # a pair decodes to one character; what is left is a lone half
        where = _lone_surrogate(document)
        if where is not None:
            raise BadRequestError(
                f"The request holds a lone UTF-16 surrogate ({where}), which is not a character; send valid "
                "Unicode text (escape a character outside the BMP as a surrogate pair, or send it as UTF-8)."
            )
    return document


#: A JSON escape of a UTF-16 surrogate (``\ud800`` to ``\udfff``).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(document: Any) -> Optional[str]:
    """Where the first string holding a lone surrogate is (``query[1]``, ``a key``), or None."""
    pending: list[tuple[Any, str]] = [(document, "the body")]
    while pending:
        value, where = pending.pop()
        if isinstance(value, str):
            for index, char in enumerate(value):
                if "\ud800" <= char <= "\udfff":
                    return f"\\u{ord(char):04x} at character {index} of {where}"
        elif isinstance(value, dict):
            for key, item in value.items():
                pending.append((key, "a key"))
                pending.append((item, str(key) if where == "the body" else f"{where}.{key}"))
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
    return None


def error_reply(error: RequestError) -> HttpReply:
    """The contract's error answer for ``error``."""
    headers = {}
    if isinstance(error, ServiceUnavailableError):
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return HttpReply(error.status, error.to_body(), headers)


def not_ready_reply() -> HttpReply:
    """The answer while the model is still loading."""
    return error_reply(ServiceUnavailableError("The model is still loading; retry in a few seconds.", retry_after=5))


def _body_too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is {size} bytes; this deployment accepts at most {limit} bytes. "
        "Send fewer or shorter inputs per request.",
        size=size,
        limit=limit,
    )


def configure_logging(level: int = logging.INFO) -> None:
    """Send mii_azure's log records to stdout, as the inference server does with its own."""
    package_logger = logging.getLogger("mii_azure")
    if package_logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s [%(process)d] %(name)s - %(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel(level)
    package_logger.propagate = False


def _hub_model_dir(environ: Mapping[str, str]) -> Optional[str]:
    """The local folder of the hub model ``MII_AZURE_HUB_MODEL`` names, downloaded now (or found in the
    cache when ``HF_HUB_OFFLINE`` is set); None when no hub model is configured. A token for a gated
    model comes from ``HF_TOKEN``, which a deployment sets from a workspace connection, never a literal."""
    repo_id = environ.get(HUB_MODEL_ENV)
    if not repo_id:
        return None
    from huggingface_hub import snapshot_download

    logger.info("Fetching %s from the Hugging Face hub.", repo_id)
    try:
        return str(snapshot_download(repo_id, token=environ.get("HF_TOKEN") or None))
    except Exception as exc:  # network, authentication, a gated or missing repository
        from ..errors import ModelLoadError

        raise ModelLoadError(
            f"Could not fetch {repo_id!r} from the Hugging Face hub at start-up ({type(exc).__name__}: {exc}). If the "
            "deployment has no outbound internet access, register the model in the workspace and deploy "
            "'azureml:<name>:<version>' instead; a gated model needs HF_TOKEN from a workspace connection.",
            model=repo_id,
        ) from None
