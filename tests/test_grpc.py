"""The gRPC front (DESIGN.md section 4), driven by the stock Triton client, in-process.

Each served model answers over KServe Open Inference Protocol v2 exactly what the JSON path answers,
and each failure carries the status code of the contract and the HTTP path's error message.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

import mii_azure
from mii_azure.config import ServingSettings
from mii_azure.errors import ConfigError
from mii_azure.runtime.engine import Engine
from mii_azure.runtime.grpc_server import start_grpc_server
from mii_azure.runtime.service import ScoringService, not_ready_reply

pytestmark = pytest.mark.serving

MODELS = ("gpt2", "bert_fill_mask", "bert_question_answering", "minilm")


@dataclass
class Served:
    """One scoring service behind its own gRPC server, and a stock client talking to it."""

    service: ScoringService
    server: grpc.Server
    port: int
    client: grpcclient.InferenceServerClient

    @property
    def name(self) -> str:
        return self.service.name

    def close(self) -> None:
        self.client.close()
        self.server.stop(None)


def _ipv4(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    return str(getattr(parsed, "ipv4_mapped", None) or parsed)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(service: ScoringService, ready: Callable[[], bool] = lambda: True) -> Served:
    port = _free_port()
    server = start_grpc_server(service, port=port, ready=ready)
    return Served(service, server, port, grpcclient.InferenceServerClient(f"127.0.0.1:{port}"))


@pytest.fixture(scope="module")
def served(model_dirs) -> Iterator[dict[str, Served]]:
    running = {key: _serve(ScoringService(Engine.load(model_dirs[key]))) for key in MODELS}
    yield running
    for item in running.values():
        item.close()


def _tensor(name: str, values: list[Any]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [len(values)], "BYTES")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return tensor.set_data_from_numpy(array)


def _infer(item: Served, tensors: dict[str, list[Any]], parameters: Optional[dict[str, Any]] = None, **kwargs: Any):
    inputs = [_tensor(name, values) for name, values in tensors.items()]
    outputs = [grpcclient.InferRequestedOutput("responses")]
    return item.client.infer(item.name, inputs, outputs=outputs, parameters=parameters, **kwargs)


def _entries(result) -> list[bytes]:
    array = result.as_numpy("responses")
    assert array.dtype == object and array.ndim == 1
    return list(array)


def _json_entries(service: ScoringService, body: dict[str, Any]) -> list[bytes]:
    """What the JSON path answers, as the gRPC path must carry it: json.dumps of each entry."""
    return [json.dumps(entry).encode("utf-8") for entry in service.score(body)["responses"]]


def _http_error(service: ScoringService, body: dict[str, Any]) -> tuple[int, str]:
    reply = service.handle_http("POST", lambda n: json.dumps(body).encode(), None)
    assert reply.status >= 400, reply
    return reply.status, reply.body["error"]["message"]


def _grpc_error(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


# --- health and metadata -----------------------------------------------------------------------
def test_health_and_metadata_answer_for_the_deployment(served):
    gpt2 = served["gpt2"]
    client = gpt2.client
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("gpt2") and client.is_model_ready("gpt2", "1")
    assert not client.is_model_ready("llama") and not client.is_model_ready("gpt2", "2")

    server = client.get_server_metadata()
    assert (server.name, server.version) == ("mii_azure", mii_azure.__version__)

    model = client.get_model_metadata("gpt2")
    assert (model.name, list(model.versions), model.platform) == ("gpt2", ["1"], "mii_azure")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("query", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("responses", "BYTES", [-1])]

    qa = served["bert_question_answering"]
    inputs = qa.client.get_model_metadata(qa.name, "1").inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in inputs] == [("question", "BYTES", [-1]), ("context", "BYTES", [-1])]

    status, message = _grpc_error(lambda: client.get_model_metadata("llama"))
    assert status == "StatusCode.NOT_FOUND"
    assert message == "No model named 'llama'; this server serves the model 'gpt2'."


def test_not_ready_until_the_harness_says_so(served):
    ready = threading.Event()
    item = _serve(served["gpt2"].service, ready=ready.is_set)
    try:
        assert item.client.is_server_live()
        assert not item.client.is_server_ready() and not item.client.is_model_ready("gpt2")
        status, message = _grpc_error(lambda: _infer(item, {"query": ["the cat"]}))
        assert status == "StatusCode.UNAVAILABLE"
        assert message == not_ready_reply().body["error"]["message"]
        ready.set()
        assert item.client.is_server_ready() and item.client.is_model_ready("gpt2")
        assert len(_entries(_infer(item, {"query": ["the cat"]}, {"max_new_tokens": 2}))) == 1
    finally:
        item.close()


def test_listens_on_loopback_only_and_refuses_a_port_in_use(served):
    port = served["gpt2"].port
    listening = [
        conn.laddr
        for conn in psutil.Process().net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    ]
    # gRPC may listen on a dual-stack socket, where 127.0.0.1 reads as ::ffff:127.0.0.1.
    assert listening and {_ipv4(address.ip) for address in listening} == {"127.0.0.1"}
    with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
        start_grpc_server(served["gpt2"].service, port=port)


# --- ModelInfer: the same entries as the JSON path ---------------------------------------------
def test_text_generation_matches_the_json_path(served):
    gpt2 = served["gpt2"]
    prompts = ["the cat", "hello world how are you"]
    result = _infer(gpt2, {"query": prompts}, {"max_new_tokens": 6}, request_id="req-7")
    assert _entries(result) == _json_entries(gpt2.service, {"query": prompts, "parameters": {"max_new_tokens": 6}})
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("gpt2", "1", "req-7")
    assert response.parameters["task"].string_param == "text-generation"
    assert response.parameters["total_ms"].double_param >= response.parameters["model_ms"].double_param >= 0

    (plain,) = gpt2.service.score({"query": "the cat", "parameters": {"max_new_tokens": 12}})["responses"]
    text = plain["generated_text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    parameters = {"max_new_tokens": 12, "stop": [stop], "return_full_text": True}
    got = _entries(_infer(gpt2, {"query": ["the cat"]}, {**parameters, "stop": json.dumps([stop])}))
    assert got == _json_entries(gpt2.service, {"query": ["the cat"], "parameters": parameters})


def test_fill_mask_matches_the_json_path(served):
    item = served["bert_fill_mask"]
    texts = ["the [MASK] sat on a mat", "hello [MASK]"]
    result = _infer(item, {"query": texts}, {"top_k": 3})
    assert _entries(result) == _json_entries(item.service, {"query": texts, "parameters": {"top_k": 3}})


def test_question_answering_takes_two_tensors_and_matches_the_json_path(served):
    item = served["bert_question_answering"]
    questions = ["Who wrote it?", "What sat on the mat?"]
    contexts = ["Ada wrote it in London.", "The quick brown cat sat on the mat."]
    result = _infer(item, {"question": questions, "context": contexts}, {"max_answer_length": 5})
    query = [{"question": q, "context": c} for q, c in zip(questions, contexts)]
    assert _entries(result) == _json_entries(item.service, {"query": query, "parameters": {"max_answer_length": 5}})


def test_feature_extraction_matches_the_json_path(served):
    item = served["minilm"]
    texts = ["hello world", "The quick brown fox jumps over the lazy dog."]
    result = _infer(item, {"query": texts}, {"normalize": True})
    entries = _entries(result)
    assert entries == _json_entries(item.service, {"query": texts, "parameters": {"normalize": True}})
    assert len(json.loads(entries[0])["embedding"]) == 384


def test_typed_contents_and_every_parameter_type_through_the_stock_stub(served):
    """InferTensorContents.bytes_contents instead of raw contents; double, uint64 and bool parameters."""
    gpt2 = served["gpt2"]
    request = service_pb2.ModelInferRequest(model_name="gpt2", model_version="1")
    tensor = request.inputs.add(name="query", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend(["the cat".encode(), "héllo wörld".encode()])
    request.parameters["max_new_tokens"].uint64_param = 5
    request.parameters["temperature"].double_param = 0.8
    request.parameters["seed"].int64_param = 3
    request.parameters["do_sample"].bool_param = True
    with grpc.insecure_channel(f"127.0.0.1:{gpt2.port}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("responses", "BYTES", [2])
    got = list(deserialize_bytes_tensor(response.raw_output_contents[0]))
    parameters = {"max_new_tokens": 5, "temperature": 0.8, "seed": 3, "do_sample": True}
    assert got == _json_entries(gpt2.service, {"query": ["the cat", "héllo wörld"], "parameters": parameters})


# --- failures: the contract's status codes with the HTTP path's messages -------------------------
@pytest.mark.parametrize(
    "key, tensors, parameters, body",
    [
        ("gpt2", {"query": ["the cat"]}, {"temprature": 1}, {"query": ["the cat"], "parameters": {"temprature": 1}}),
        ("gpt2", {"query": ["the cat"]}, {"max_new_tokens": 0}, {"query": ["the cat"], "parameters": {"max_new_tokens": 0}}),
        ("gpt2", {"query": ["the cat"]}, {"stop": '[""]'}, {"query": ["the cat"], "parameters": {"stop": [""]}}),
        ("gpt2", {"query": []}, None, {"query": []}),
        ("gpt2", {"query": ["the cat", "  "]}, None, {"query": ["the cat", "  "]}),
        ("bert_fill_mask", {"query": ["no mask here"]}, None, {"query": ["no mask here"]}),
        ("bert_question_answering", {"question": ["Who?"], "context": [""]}, None, {"query": [{"question": "Who?", "context": ""}]}),
    ],
    ids=["unknown-parameter", "bad-parameter-value", "empty-stop", "empty-query", "blank-input", "no-mask", "empty-context"],
)
def test_bad_requests_are_invalid_argument_with_the_http_message(served, key, tensors, parameters, body):
    item = served[key]
    http_status, http_message = _http_error(item.service, body)
    status, message = _grpc_error(lambda: _infer(item, tensors, parameters))
    assert http_status == 400
    assert (status, message) == ("StatusCode.INVALID_ARGUMENT", http_message)


def test_too_many_inputs_is_invalid_argument_with_the_http_message(served):
    gpt2 = served["gpt2"]
    texts = ["the cat"] * (gpt2.service.settings.max_inputs_per_request + 1)
    http_status, http_message = _http_error(gpt2.service, {"query": texts})
    status, message = _grpc_error(lambda: _infer(gpt2, {"query": texts}))
    assert http_status == 413 and "accepts at most" in http_message
    assert (status, message) == ("StatusCode.INVALID_ARGUMENT", http_message)


def test_malformed_tensors_are_invalid_argument_with_a_clear_message(served):
    """Tensor-level faults have no JSON counterpart; their messages name the tensor and the fix."""
    gpt2, qa = served["gpt2"], served["bert_question_answering"]

    status, message = _grpc_error(lambda: _infer(qa, {"question": ["Who wrote it?"]}))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message == (
        "question-answering needs the input tensors 'question' and 'context' (BYTES, shape [N]); "
        "the request has no 'context' tensor."
    )

    numbers = grpcclient.InferInput("query", [1], "INT32").set_data_from_numpy(np.array([7], dtype=np.int32))
    status, message = _grpc_error(lambda: gpt2.client.infer("gpt2", [numbers]))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message == "Input tensor 'query' has datatype INT32; it must be BYTES (UTF-8 strings)."

    status, message = _grpc_error(lambda: _infer(gpt2, {"query": [b"ok", b"caf\xe9"]}))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message == (
        "Element 1 of input tensor 'query' is not valid UTF-8 (byte 3 cannot be decoded); send UTF-8 encoded strings."
    )

    matrix = grpcclient.InferInput("query", [1, 1], "BYTES").set_data_from_numpy(np.array([["the cat"]], dtype=object))
    status, message = _grpc_error(lambda: gpt2.client.infer("gpt2", [matrix]))
    assert (status, message) == (
        "StatusCode.INVALID_ARGUMENT",
        "Input tensor 'query' has shape [1, 1]; it must be [N], one string per input.",
    )

    status, message = _grpc_error(lambda: _infer(gpt2, {"prompt": ["the cat"]}))
    assert status == "StatusCode.INVALID_ARGUMENT" and "'prompt'" in message and "'query'" in message

    scores = [grpcclient.InferRequestedOutput("scores")]
    status, message = _grpc_error(lambda: gpt2.client.infer("gpt2", [_tensor("query", ["the cat"])], outputs=scores))
    assert (status, message) == (
        "StatusCode.INVALID_ARGUMENT",
        "Output tensor 'scores' does not exist; this model has one output, 'responses'.",
    )


def test_unknown_model_or_version_is_not_found(served):
    gpt2 = served["gpt2"]
    query = [_tensor("query", ["the cat"])]
    status, message = _grpc_error(lambda: gpt2.client.infer("llama", query))
    assert (status, message) == ("StatusCode.NOT_FOUND", "No model named 'llama'; this server serves the model 'gpt2'.")
    status, message = _grpc_error(lambda: gpt2.client.infer("gpt2", query, model_version="2"))
    assert status == "StatusCode.NOT_FOUND" and "'2'" in message


def test_unexpected_failure_is_internal_with_the_http_message(served, monkeypatch):
    gpt2 = served["gpt2"]

    def explode(*args, **kwargs):
        raise RuntimeError("tensor shapes disagree")

    for call in ("prefill", "step"):  # continuous batching's model calls that take a new prompt
        monkeypatch.setattr(gpt2.service.engine.batcher.runner, call, explode)
    _, http_message = _http_error(gpt2.service, {"query": "the cat"})
    status, message = _grpc_error(lambda: _infer(gpt2, {"query": ["the cat"]}))
    assert (status, message) == ("StatusCode.INTERNAL", http_message)
    assert message == "Scoring failed: RuntimeError: tensor shapes disagree"


def test_timeout_is_deadline_exceeded_with_the_http_message(model_dirs):
    item = _serve(ScoringService(Engine.load(model_dirs["gpt2"], settings=ServingSettings(request_timeout_s=1e-4))))
    try:
        _, http_message = _http_error(item.service, {"query": ["the cat"], "parameters": {"max_new_tokens": 50}})
        status, message = _grpc_error(lambda: _infer(item, {"query": ["the cat"]}, {"max_new_tokens": 50}))
        assert (status, message) == ("StatusCode.DEADLINE_EXCEEDED", http_message)
    finally:
        item.close()


def test_full_queue_is_resource_exhausted_and_an_oversized_request_is_invalid(model_dirs):
    settings = ServingSettings(max_queue=1, max_wait_ms=0, max_body_bytes=1024)
    engine = Engine.load(model_dirs["bert_fill_mask"], settings=settings)
    item = _serve(ScoringService(engine))
    release = threading.Event()
    original = engine.task.predict

    def slow(inputs, parameters, deadline):
        release.wait(10)
        return original(inputs, parameters, deadline)

    engine.task.predict = slow
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            accepted = pool.submit(_infer, item, {"query": ["the [MASK] sat"]})
            while engine.batcher.waiting < 1:
                threading.Event().wait(0.01)
            http_status, http_message = _http_error(item.service, {"query": ["hello [MASK]"]})
            status, message = _grpc_error(lambda: _infer(item, {"query": ["hello [MASK]"]}))
            release.set()
            assert len(_entries(accepted.result(timeout=30))) == 1
        assert http_status == 503 and "queue is full" in http_message
        assert (status, message) == ("StatusCode.RESOURCE_EXHAUSTED", http_message)

        status, message = _grpc_error(lambda: _infer(item, {"query": ["the [MASK] " + "word " * 300]}))
        assert status == "StatusCode.INVALID_ARGUMENT"
        assert message.startswith("The inference request is ") and "accepts at most 1024 bytes" in message
    finally:
        release.set()
        item.close()
