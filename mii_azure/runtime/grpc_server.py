"""The local harness's gRPC front: KServe Open Inference Protocol v2 (DESIGN.md section 4).

Serves ``inference.GRPCInferenceService`` (Triton's ``grpc_service.proto``: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelInfer, ModelStreamInfer) around one
:class:`ScoringService`, so stock clients such as ``tritonclient.grpc`` and the KServe client work
unchanged.

- The model is named after the deployment (``service.name``); its only version is "1" ("" means it).
- ``ModelInfer`` takes one BYTES tensor of shape [N] per task input (``query``; ``question`` and
  ``context`` for question-answering) and answers with the BYTES tensor ``responses`` of shape [N],
  whose element i is ``json.dumps`` of the same entry the JSON path returns, UTF-8 encoded. Request
  parameters carry the JSON ``parameters`` keys; a string parameter holding a JSON array (stop
  sequences: ``'["\\n"]'``) is decoded. The response parameters add ``task``, ``replica`` (int64),
  ``total_ms`` and ``model_ms``, the other fields of the JSON response.
- ``ModelStreamInfer`` streams text generation as Triton's decoupled models do: it takes the same
  requests as ``ModelInfer`` (one input), and answers each with one response per new piece of text,
  output ``text`` (BYTES, shape [1], the piece as UTF-8), then a final one with output ``responses``
  (BYTES [1], the same entry bytes as ``ModelInfer``'s) and the same response parameters; every
  response carries the parameter ``triton_final_response`` (bool), true only on the last. A request
  that fails gets one ``error_message`` with the HTTP path's message, which ends its responses.
  Requests on one stream are answered in order, one after the other; the client's
  ``triton_enable_empty_final_response`` parameter is accepted (the last response is never empty).
  A client that cancels the stream gives its running generation up.
- With several model copies per instance (one inference-server worker each), every worker serves
  gRPC on the same port (``SO_REUSEPORT``) and the kernel spreads the connections among them.
- A failed request gets the status code of :func:`grpc_status_for` and, as details, exactly the
  message the HTTP path puts in ``{"error": {"message": ...}}``; never a stack trace.
"""

from __future__ import annotations

import hmac
import json
import logging
import struct
from collections.abc import Iterator
from concurrent import futures
from typing import Any, Callable, NoReturn, Optional

import grpc

from .. import __version__
from ..errors import (
    BadRequestError,
    ConfigError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    ScoringError,
    ServiceUnavailableError,
)
from .proto import grpc_service_pb2 as pb
from .proto import grpc_service_pb2_grpc as pb_grpc
from .service import ScoringService, not_ready_reply
from .streaming import ScoreStream

__all__ = [
    "start_grpc_server",
    "InferenceServicer",
    "grpc_status_for",
    "PLATFORM",
    "OUTPUT_NAME",
    "TEXT_OUTPUT_NAME",
    "FINAL_RESPONSE_PARAMETER",
    "MODEL_VERSION",
]

logger = logging.getLogger(__name__)

#: What ModelMetadata reports as the model's platform, and ServerMetadata as the server's name.
PLATFORM = "mii_azure"
#: The one output tensor (and the last response of a stream).
OUTPUT_NAME = "responses"
#: The output of every other response of a stream: one new piece of text.
TEXT_OUTPUT_NAME = "text"
#: The response parameter that marks a stream's last response for a request (as Triton's decoupled models).
FINAL_RESPONSE_PARAMETER = "triton_final_response"
#: Request parameters of Triton's stream client that are not the task's.
_STREAM_CLIENT_PARAMETERS = ("triton_enable_empty_final_response",)
#: The one model version; a request may also leave the version empty.
MODEL_VERSION = "1"
BYTES = "BYTES"

_LENGTH = struct.Struct("<I")


def grpc_status_for(error: RequestError) -> grpc.StatusCode:
    """The gRPC status code of a failed request (DESIGN.md section 4)."""
    if isinstance(error, (BadRequestError, PayloadTooLargeError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, ServiceUnavailableError):
        # Only the batcher's "queue is full" carries queue_limit; the rest is "not ready".
        return grpc.StatusCode.RESOURCE_EXHAUSTED if "queue_limit" in error.facts else grpc.StatusCode.UNAVAILABLE
    if isinstance(error, RequestTimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INTERNAL


class _NotFound(Exception):
    """A request names a model or version this server does not serve."""


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` for one scoring service."""

    def __init__(
        self, service: ScoringService, ready: Callable[[], bool] = lambda: True, *, api_key: Optional[str] = None
    ) -> None:
        self.service = service
        self.ready = ready
        self._api_key = api_key.encode("utf-8") if api_key else None

    def _authenticate(self, context: grpc.ServicerContext) -> None:
        """With an API key, metadata and inference need ``authorization: Bearer <key>`` (compared in
        constant time); the health calls stay open, as the HTTP probe does."""
        if self._api_key is None:
            return
        sent = dict(context.invocation_metadata()).get("authorization", "")
        scheme, _, credential = sent.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode("utf-8"), self._api_key):
            return
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "This deployment requires its API key: send the metadata 'authorization: Bearer <key>' "
            "(tritonclient: headers={'authorization': 'Bearer <key>'}).",
        )

    # --- health and metadata -------------------------------------------------------------------
    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(self.ready()))

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        # As Triton does: a model this server does not serve is simply not ready.
        served = request.name == self.service.name and request.version in ("", MODEL_VERSION)
        return pb.ModelReadyResponse(ready=served and bool(self.ready()))

    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=PLATFORM, version=__version__, extensions=["parameters"])

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        self._authenticate(context)
        try:
            self._check_model(request.name, request.version)
        except _NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.service.name,
            versions=[MODEL_VERSION],
            platform=PLATFORM,
            inputs=[tensor(name=name, datatype=BYTES, shape=[-1]) for name in self.service.task_cls.input_names],
            outputs=[tensor(name=OUTPUT_NAME, datatype=BYTES, shape=[-1])],
        )

    # --- inference -----------------------------------------------------------------------------
    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        self._authenticate(context)
        try:
            self._check_model(request.model_name, request.model_version)
        except _NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        try:
            if not self.ready():
                raise ServiceUnavailableError(not_ready_reply().body["error"]["message"], retry_after=5)
            return self._response(request, self._infer(request))
        except RequestError as exc:
            _abort(context, exc)
        except Exception as exc:  # the contract: INTERNAL with what failed, never a stack trace
            logger.exception("Scoring failed")
            _abort(context, ScoringError(f"Scoring failed: {type(exc).__name__}: {exc}"))

    def ModelStreamInfer(
        self, requests: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        """Streamed generation, decoupled as Triton's: each request's pieces, then its final entry."""
        self._authenticate(context)
        for request in requests:
            yield from self._stream_one(request, context)
            if not context.is_active():
                return

    def _stream_one(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        """The responses to one request of a stream: its pieces of text and its entry, or one error."""
        stream = None
        try:
            self._check_model(request.model_name, request.model_version)
            if not self.ready():
                raise ServiceUnavailableError(not_ready_reply().body["error"]["message"], retry_after=5)
            stream = self._open_stream(request)
            for text in stream:
                if not context.is_active():  # the client went away: give the generation up
                    return
                yield self._piece_response(request, text)
            result = stream.result or {}
            final = self._response(request, {**result, "responses": [result.get("entry")]})
            final.parameters[FINAL_RESPONSE_PARAMETER].bool_param = True
            yield pb.ModelStreamInferResponse(infer_response=final)
        except _NotFound as exc:
            yield self._stream_error(request, str(exc))
        except RequestError as exc:
            yield self._stream_error(request, exc.message)
        except Exception as exc:  # the contract: what failed, never a stack trace
            logger.exception("Streaming failed")
            yield self._stream_error(request, f"Scoring failed: {type(exc).__name__}: {exc}")
        finally:
            if stream is not None:
                stream.close()

    def _open_stream(self, request: pb.ModelInferRequest) -> ScoreStream:
        inputs, parameters = self._request_parts(request, outputs=(TEXT_OUTPUT_NAME, OUTPUT_NAME))
        for name in _STREAM_CLIENT_PARAMETERS:
            parameters.pop(name, None)
        return self.service.open_stream_inputs(inputs, parameters)

    def _piece_response(self, request: pb.ModelInferRequest, text: str) -> pb.ModelStreamInferResponse:
        piece = text.encode("utf-8")
        response = pb.ModelInferResponse(
            model_name=self.service.name,
            model_version=MODEL_VERSION,
            id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=TEXT_OUTPUT_NAME, datatype=BYTES, shape=[1])],
            raw_output_contents=[_LENGTH.pack(len(piece)) + piece],
        )
        response.parameters[FINAL_RESPONSE_PARAMETER].bool_param = False
        return pb.ModelStreamInferResponse(infer_response=response)

    def _stream_error(self, request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
        response = pb.ModelInferResponse(model_name=self.service.name, model_version=MODEL_VERSION, id=request.id)
        response.parameters[FINAL_RESPONSE_PARAMETER].bool_param = True
        return pb.ModelStreamInferResponse(error_message=message, infer_response=response)

    def _infer(self, request: pb.ModelInferRequest) -> dict[str, Any]:
        return self.service.score_inputs(*self._request_parts(request))

    def _request_parts(
        self, request: pb.ModelInferRequest, *, outputs: tuple[str, ...] = (OUTPUT_NAME,)
    ) -> tuple[list[Any], dict[str, Any]]:
        """The inputs and JSON parameters of an inference request (BadRequestError for a bad one)."""
        limit = self.service.settings.max_body_bytes
        size = request.ByteSize()
        if size > limit:
            raise PayloadTooLargeError(
                f"The inference request is {size} bytes; this deployment accepts at most {limit} bytes. "
                "Send fewer or shorter inputs per request.",
                size=size,
                limit=limit,
            )
        for output in request.outputs:
            if output.name not in outputs:
                offered = (
                    f"one output, {outputs[0]!r}"
                    if len(outputs) == 1
                    else "the outputs " + " and ".join(map(repr, outputs))
                )
                raise BadRequestError(f"Output tensor {output.name!r} does not exist; this model has {offered}.")
            if output.parameters:
                raise BadRequestError(
                    f"Output tensor parameters are not supported; got {', '.join(map(repr, sorted(output.parameters)))}."
                )
        tensors = self._decode_inputs(request)
        return self.service.task_cls.inputs_from_tensors(tensors), decode_parameters(request.parameters)

    def _decode_inputs(self, request: pb.ModelInferRequest) -> dict[str, list[str]]:
        task = self.service.task_cls
        expected = task.input_names
        wanted = " and ".join(repr(name) for name in expected)
        tensor_word = "tensor" if len(expected) == 1 else "tensors"
        if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
            raise BadRequestError(
                f"The request has {len(request.inputs)} input tensors but {len(request.raw_input_contents)} "
                "raw_input_contents entries; send one entry per input tensor, in order."
            )
        tensors: dict[str, list[str]] = {}
        for index, tensor in enumerate(request.inputs):
            if tensor.name not in expected:
                raise BadRequestError(
                    f"Unknown input tensor {tensor.name!r}; {task.name} takes the input {tensor_word} {wanted} "
                    "(BYTES, shape [N])."
                )
            if tensor.name in tensors:
                raise BadRequestError(f"Input tensor {tensor.name!r} is given twice; send it once.")
            if tensor.datatype != BYTES:
                raise BadRequestError(
                    f"Input tensor {tensor.name!r} has datatype {tensor.datatype or 'unset'}; it must be BYTES "
                    "(UTF-8 strings)."
                )
            if len(tensor.shape) != 1 or tensor.shape[0] < 0:
                raise BadRequestError(
                    f"Input tensor {tensor.name!r} has shape {list(tensor.shape)}; it must be [N], one string "
                    "per input."
                )
            if tensor.parameters:
                raise BadRequestError(
                    f"Input tensor parameters (such as shared memory regions) are not supported; {tensor.name!r} "
                    f"has {', '.join(map(repr, sorted(tensor.parameters)))}."
                )
            if request.raw_input_contents:
                if _has_contents(tensor.contents):
                    raise BadRequestError(
                        f"Input tensor {tensor.name!r} has both contents and raw_input_contents; send one of them."
                    )
                elements = _split_bytes(tensor.name, request.raw_input_contents[index])
            else:
                elements = list(tensor.contents.bytes_contents)
            if len(elements) != tensor.shape[0]:
                raise BadRequestError(
                    f"Input tensor {tensor.name!r} has shape [{tensor.shape[0]}] but {len(elements)} elements."
                )
            tensors[tensor.name] = [_utf8(tensor.name, i, element) for i, element in enumerate(elements)]
        missing = [name for name in expected if name not in tensors]
        if missing:
            raise BadRequestError(
                f"{task.name} needs the input {tensor_word} {wanted} (BYTES, shape [N]); the request has no "
                f"{' or '.join(map(repr, missing))} tensor."
            )
        return tensors

    def _response(self, request: pb.ModelInferRequest, result: dict[str, Any]) -> pb.ModelInferResponse:
        entries = [json.dumps(entry).encode("utf-8") for entry in result["responses"]]
        response = pb.ModelInferResponse(
            model_name=self.service.name,
            model_version=MODEL_VERSION,
            id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype=BYTES, shape=[len(entries)])],
            raw_output_contents=[b"".join(_LENGTH.pack(len(entry)) + entry for entry in entries)],
        )
        response.parameters["task"].string_param = result["task"]
        response.parameters["replica"].int64_param = int(result["replica"])
        for key, value in result["timing"].items():
            response.parameters[key].double_param = float(value)
        return response

    def _check_model(self, name: str, version: str) -> None:
        if name != self.service.name:
            raise _NotFound(f"No model named {name!r}; this server serves the model {self.service.name!r}.")
        if version not in ("", MODEL_VERSION):
            raise _NotFound(
                f"Model {name!r} has no version {version!r}; its only version is {MODEL_VERSION!r} "
                "(or leave the version empty)."
            )


def decode_parameters(parameters: Any) -> dict[str, Any]:
    """JSON ``parameters`` from a map of InferParameter (a JSON-array string becomes a list)."""
    decoded: dict[str, Any] = {}
    for key in sorted(parameters):
        parameter = parameters[key]
        kind = parameter.WhichOneof("parameter_choice")
        if kind is None:
            raise BadRequestError(f"Parameter {key!r} has no value; set one of its bool, int64, double or string values.")
        value = getattr(parameter, kind)
        if kind == "string_param" and value.lstrip().startswith("["):
            try:
                array = json.loads(value)
            except json.JSONDecodeError:
                array = None
            if isinstance(array, list):
                value = array
        decoded[key] = value
    return decoded


def start_grpc_server(
    service: ScoringService,
    *,
    port: int,
    host: str = "127.0.0.1",
    max_workers: int = 16,
    ready: Callable[[], bool] = lambda: True,
    share_port: bool = False,
    api_key: Optional[str] = None,
) -> grpc.Server:
    """Serve ``service`` over the Open Inference Protocol v2 on ``host:port``; the server is started.

    ``ready`` says whether the model can answer (ServerReady, ModelReady; ModelInfer is UNAVAILABLE
    until it does). ``share_port``: the workers of one server, one per model copy, all listen on
    ``port`` (``SO_REUSEPORT``; the kernel spreads connections among them); otherwise a port in use
    is refused with a ConfigError. ``api_key``: metadata and inference calls need it. Stop the returned server with ``server.stop(grace_seconds)``.
    """
    limit = service.settings.max_body_bytes
    options = [
        # Requests up to twice the body limit are read, so those over the limit get the contract's
        # INVALID_ARGUMENT with a message; larger ones get gRPC's own RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", 2 * limit),
        # Answers are not bounded by the request limit (embeddings, images), as over HTTP.
        ("grpc.max_send_message_length", -1),
        # Only the workers of one server share the port; otherwise a second server could silently
        # share a port that is already in use.
        ("grpc.so_reuseport", 1 if share_port else 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"), options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service, ready, api_key=api_key), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # recent grpcio raises where older ones returned 0
        bound = 0
    if bound <= 0:
        server.stop(None)
        raise ConfigError(
            f"Cannot listen for gRPC on {address}: the port is in use or the address is not on this machine. "
            "Choose another gRPC port.",
            host=host,
            port=port,
            shared=share_port,
        )
    server.start()
    logger.info("Serving %r over gRPC (Open Inference Protocol v2) on %s port %d", service.name, host, bound)
    return server


def _abort(context: grpc.ServicerContext, error: RequestError) -> NoReturn:
    if isinstance(error, ServiceUnavailableError):
        context.set_trailing_metadata((("retry-after", str(max(1, round(error.retry_after)))),))
    context.abort(grpc_status_for(error), error.message)
    raise AssertionError("unreachable")  # context.abort raises


def _split_bytes(name: str, raw: bytes) -> list[bytes]:
    """Elements of a BYTES tensor's raw contents: each a 4-byte little-endian length, then the bytes."""
    elements = []
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise BadRequestError(
                f"The raw contents of input tensor {name!r} end inside an element's 4-byte length prefix."
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise BadRequestError(
                f"The raw contents of input tensor {name!r} end inside element {len(elements)}: it declares "
                f"{length} bytes, {len(raw) - offset} remain."
            )
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    return elements


def _utf8(name: str, index: int, element: bytes) -> str:
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"Element {index} of input tensor {name!r} is not valid UTF-8 (byte {exc.start} cannot be decoded); "
            "send UTF-8 encoded strings."
        ) from None


def _has_contents(contents: pb.InferTensorContents) -> bool:
    return any(len(getattr(contents, field.name)) for field in contents.DESCRIPTOR.fields)
