"""Token streaming on every door (DESIGN.md sections 3a and 4): ``/score`` server-sent events through the
real inference server, Triton's ``ModelStreamInfer`` through the stock client, ``Deployment.stream``
(locally and behind the Azure-like front) and ``mii-azure query --stream``.

The HTTP tests share the session's GPT-2 inference server; the gRPC and in-process tests share one
engine loaded in this process.
"""

from __future__ import annotations

import http.client
import http.server
import importlib.util
import json
import queue
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mii_azure.cli import main
from mii_azure.deployment import Deployment, TextStream
from mii_azure.errors import BadRequestError, PayloadTooLargeError, RequestTimeoutError, ScoringError
from mii_azure.http_transport import PooledTransport
from mii_azure.runtime.engine import Engine
from mii_azure.runtime.generation import TextPiece
from mii_azure.runtime.grpc_server import start_grpc_server
from mii_azure.runtime.http_server import entry_script_path
from mii_azure.runtime.service import ScoringService

pytestmark = [pytest.mark.serving, pytest.mark.harness]

PROMPT = "DeepSpeed is"
LONG_PROMPT = "the cat sat on the mat " * 40  # longer than the tiny GPT-2's 64 positions


class _Backend:
    def logs(self, name: str, lines: int) -> str:
        return ""

    def delete(self, name: str) -> None:
        pass


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_server(servers):
    return servers.get("gpt2")


@pytest.fixture(scope="module")
def handle(gpt2_server) -> Iterator[Deployment]:
    deployment = Deployment("gpt2", target="local", scoring_uri=gpt2_server.scoring_uri, backend=_Backend(), retries=0)
    yield deployment
    deployment.close()


@pytest.fixture(scope="module")
def service(model_dirs) -> Iterator[ScoringService]:
    """GPT-2 in this process, for the gRPC front and the scoring script."""
    engine = Engine.load(model_dirs["gpt2"])
    yield ScoringService(engine)
    engine.close()


@pytest.fixture(scope="module")
def grpc_client(service) -> Iterator[grpcclient.InferenceServerClient]:
    port = _free_port()
    server = start_grpc_server(service, port=port)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    yield client
    client.close()
    server.stop(None)


# --- helpers -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post_raw(url: str, body: Any) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    connection.request("POST", parts.path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return connection.getresponse()


def _events(data: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of a server-sent event body; every event is one ``data:`` line."""
    assert data.endswith(b"\n\n"), data[-40:]
    events = []
    for block in data.decode("utf-8").split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
        events.append(json.loads(block[len("data: "):]))
    return events


def _sse(url: str, body: Any) -> tuple[http.client.HTTPResponse, list[dict[str, Any]]]:
    response = _post_raw(url, body)
    return response, _events(response.read())


def _unstreamed_entry(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = _post_raw(url, body)
    answer = json.loads(response.read())
    assert response.status == 200, answer
    (entry,) = answer["responses"]
    return entry


def _query_tensor(values: list[str]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("query", [len(values)], "BYTES")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return tensor.set_data_from_numpy(array)


def _grpc_stream(client: grpcclient.InferenceServerClient, *requests: dict[str, Any]) -> dict[str, list[Any]]:
    """Send each request ({"id", "query", "parameters"?, "model"?}) on one stream; the results by
    request id, and the error messages under "errors" (the stock client hands an error over without
    its request's id), collected until each request got its final response or an error."""
    received: "queue.Queue[tuple[Any, Any]]" = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        for request in requests:
            client.async_stream_infer(
                request.get("model", "gpt2"),
                [_query_tensor(request["query"])],
                request_id=request["id"],
                parameters=request.get("parameters"),
                enable_empty_final_response=True,
            )
        by_id: dict[str, list[Any]] = {request["id"]: [] for request in requests}
        by_id["errors"] = []
        ended = 0
        while ended < len(requests):
            result, error = received.get(timeout=60)
            if error is not None:
                by_id["errors"].append(error.message())
                ended += 1
                continue
            response = result.get_response()
            by_id[response.id].append(result)
            ended += response.parameters["triton_final_response"].bool_param
        return by_id
    finally:
        client.stop_stream()


def _load_score_module():
    spec = importlib.util.spec_from_file_location("score_streaming_under_test", entry_script_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flask_request(body: Any):
    from flask import Request
    from werkzeug.test import EnvironBuilder

    return Request(EnvironBuilder(method="POST", data=json.dumps(body), content_type="application/json").get_environ())


# --- HTTP /score: server-sent events through the real inference server ---------------------------


def test_a_stream_answers_server_sent_events_of_the_contracts_shape(gpt2_server):
    response, events = _sse(gpt2_server.scoring_uri, {"query": PROMPT, "stream": True, "parameters": {"max_new_tokens": 8}})
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    assert response.getheader("Cache-Control") == "no-cache"
    assert response.getheader("Content-Length") is None  # streamed, not buffered into one body
    *pieces, done = events
    assert all(set(event) == {"text"} and isinstance(event["text"], str) and event["text"] for event in pieces)
    assert set(done) == {"done", "entry", "task", "model", "replica", "timing"} and done["done"] is True
    assert (done["task"], done["model"], done["replica"]) == ("text-generation", "gpt2", 0)
    assert set(done["timing"]) == {"total_ms", "model_ms"}
    assert 0 <= done["timing"]["model_ms"] <= done["timing"]["total_ms"]
    assert set(done["entry"]) == {"generated_text", "num_tokens"} and 1 <= done["entry"]["num_tokens"] <= 8


@pytest.mark.parametrize(
    "body",
    [
        {"query": PROMPT, "parameters": {"max_new_tokens": 16}},
        {"query": ["the cat sat"], "parameters": {"max_new_tokens": 5}},
        {"query": "hello", "max_new_tokens": 12},  # the legacy DeepSpeed-MII shape
    ],
)
def test_the_streamed_text_and_entry_are_the_unstreamed_greedy_answer(gpt2_server, body):
    expected = _unstreamed_entry(gpt2_server.scoring_uri, body)
    response, events = _sse(gpt2_server.scoring_uri, {**body, "stream": True})
    assert response.status == 200
    *pieces, done = events
    assert "".join(event["text"] for event in pieces) == expected["generated_text"]
    assert done["entry"] == expected


def test_with_return_full_text_the_entry_has_the_prompt_before_the_streamed_text(gpt2_server):
    body = {"query": "hello", "parameters": {"max_new_tokens": 12, "return_full_text": True}}
    expected = _unstreamed_entry(gpt2_server.scoring_uri, body)
    _, events = _sse(gpt2_server.scoring_uri, {**body, "stream": True})
    *pieces, done = events
    assert done["entry"] == expected and expected["generated_text"].startswith("hello")
    assert "hello" + "".join(event["text"] for event in pieces) == expected["generated_text"], "pieces are new text only"


def test_each_piece_is_sent_as_it_is_made(gpt2_server):
    """Every event goes out as its own HTTP chunk, written when the engine yields it: nothing between
    the engine and the socket (Flask, the inference server, gunicorn) collects the body first."""
    parts = urlsplit(gpt2_server.scoring_uri)
    body = json.dumps({"query": PROMPT, "stream": True, "parameters": {"max_new_tokens": 16}}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2:]
    events = [_events(chunk) for chunk in chunks]
    assert all(len(one) == 1 for one in events)  # one event per chunk
    assert len(events) > 2 and events[-1][0]["done"] is True


def test_stream_false_is_the_ordinary_answer(gpt2_server):
    body = {"query": PROMPT, "parameters": {"max_new_tokens": 4}}
    response = _post_raw(gpt2_server.scoring_uri, {**body, "stream": False})
    answer = json.loads(response.read())
    assert response.status == 200 and response.getheader("Content-Type") == "application/json"
    assert answer["responses"] == [_unstreamed_entry(gpt2_server.scoring_uri, body)]


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"query": ["one", "two"], "stream": True}, 400, "A streamed request carries exactly one input; this one has 2."),
        ({"query": PROMPT, "stream": True, "parameters": {"bogus": 1}}, 400, "Unknown parameter 'bogus' for text-generation."),
        ({"query": PROMPT, "stream": "yes"}, 400, "'stream' must be true or false, not a JSON string."),
        ({"query": PROMPT, "stream": 1}, 400, "'stream' must be true or false, not a JSON number."),
        ({"query": PROMPT, "parameters": {"stream": True}}, 400, "'stream' goes at the top level of the request"),
        ({"stream": True}, 400, "The request has no 'query' field."),
        ({"query": LONG_PROMPT, "stream": True}, 413, "tokens"),
    ],
)
def test_an_error_before_the_first_piece_is_an_ordinary_json_error(gpt2_server, body, status, message):
    response = _post_raw(gpt2_server.scoring_uri, body)
    answer = json.loads(response.read())
    assert response.status == status, answer
    assert response.getheader("Content-Type") == "application/json"
    assert set(answer) == {"error"} and message in answer["error"]["message"]


def test_a_stream_on_a_task_that_does_not_generate_is_a_400(servers):
    classifier = servers.get("bert_classifier")
    response = _post_raw(classifier.scoring_uri, {"query": "a good day", "stream": True})
    answer = json.loads(response.read())
    assert response.status == 400
    assert answer["error"]["message"].startswith("Streaming is for text generation; this deployment serves text-classification.")
    plain = _post_raw(classifier.scoring_uri, {"query": "a good day", "stream": False})
    assert plain.status == 200 and json.loads(plain.read())["task"] == "text-classification"


def test_a_client_that_disconnects_mid_stream_does_not_break_the_server(gpt2_server):
    parts = urlsplit(gpt2_server.scoring_uri)
    body = json.dumps({"query": PROMPT, "stream": True, "parameters": {"max_new_tokens": 32}}).encode()
    for _ in range(3):
        with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
            sock.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            seen = b""
            while b"data: " not in seen:
                chunk = sock.recv(4096)
                assert chunk, seen
                seen += chunk
            assert b"200 OK" in seen and b"text/event-stream" in seen
        # the socket is closed here, mid-stream
    expected = _unstreamed_entry(gpt2_server.scoring_uri, {"query": PROMPT, "parameters": {"max_new_tokens": 6}})
    _, events = _sse(gpt2_server.scoring_uri, {"query": PROMPT, "stream": True, "parameters": {"max_new_tokens": 6}})
    assert events[-1]["entry"] == expected


def test_a_16_token_stream_arrives_in_more_than_one_piece(gpt2_server):
    _, events = _sse(gpt2_server.scoring_uri, {"query": PROMPT, "stream": True, "parameters": {"max_new_tokens": 16}})
    *pieces, done = events
    assert done["entry"]["num_tokens"] == 16
    assert len(pieces) > 1


# --- the scoring script and the service, in process ----------------------------------------------


def test_run_returns_a_streamed_aml_response_that_gives_the_generation_up_when_closed(service, monkeypatch):
    from mii_azure.runtime.routes import Router

    score = _load_score_module()
    monkeypatch.setattr(score, "_service", service)
    monkeypatch.setattr(score, "_router", Router(service))
    body = {"query": PROMPT, "stream": True, "parameters": {"max_new_tokens": 8}}

    response = score.run(_flask_request(body))
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = _events(b"".join(response.response))
    assert events[-1]["entry"] == service.score({"query": PROMPT, "parameters": {"max_new_tokens": 8}})["responses"][0]

    closed = threading.Event()
    real_stream = service.engine.stream

    def watched(request, deadline):
        events = real_stream(request, deadline)
        try:
            yield next(events)
            yield TextPiece("never sent")
            yield from events
        finally:
            closed.set()

    monkeypatch.setattr(service.engine, "stream", watched)
    response = score.run(_flask_request(body))
    first = next(iter(response.response))
    assert first.startswith(b"data: ")
    response.close()  # what the WSGI server does when the client has gone away
    assert closed.is_set()

    bad = score.run(_flask_request({"query": ["a", "b"], "stream": True}))
    assert bad.status_code == 400 and json.loads(bad.get_data())["error"]["code"] == "bad_request"


def test_a_failure_after_the_first_piece_is_the_last_event(service, monkeypatch):
    def failing(request, deadline):
        yield TextPiece("Deep")
        raise RequestTimeoutError("The request ran past its timeout of 1 s.", timeout_s=1)

    monkeypatch.setattr(service.engine, "stream", failing)
    reply = service.handle_http("POST", lambda n: json.dumps({"query": PROMPT, "stream": True}).encode(), None)
    assert reply.status == 200
    assert _events(b"".join(reply.stream)) == [
        {"text": "Deep"},
        {"error": {"code": "timeout", "message": "The request ran past its timeout of 1 s."}},
    ]


def test_the_stream_obeys_the_request_timeout(model_dirs):
    from mii_azure.config import ServingSettings

    engine = Engine.load(model_dirs["gpt2"], settings=ServingSettings(request_timeout_s=0.001))
    try:
        timed = ScoringService(engine)
        body = {"query": PROMPT, "stream": True, "parameters": {"max_new_tokens": 32}}
        reply = timed.handle_http("POST", lambda n: json.dumps(body).encode(), None)
        if reply.stream is None:  # it ran out of time before the first piece: an ordinary 504
            assert reply.status == 504 and reply.body["error"]["code"] == "timeout"
        else:
            assert _events(b"".join(reply.stream))[-1]["error"]["code"] == "timeout"
    finally:
        engine.close()


# --- gRPC: Triton's ModelStreamInfer through the stock client --------------------------------------


def test_tritonclient_stream_receives_the_pieces_then_the_final_entry(service, grpc_client):
    parameters = {"max_new_tokens": 16}
    got = _grpc_stream(
        grpc_client,
        {"id": "first", "query": [PROMPT], "parameters": parameters},
        {"id": "second", "query": ["the cat sat"], "parameters": {"max_new_tokens": 5}},
    )
    for request_id, prompt, asked in (("first", PROMPT, parameters), ("second", "the cat sat", {"max_new_tokens": 5})):
        *pieces, final = got[request_id]
        expected = service.score({"query": [prompt], "parameters": asked})["responses"][0]
        for piece in pieces:
            response = piece.get_response()
            assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("text", "BYTES", [1])]
            assert response.parameters["triton_final_response"].bool_param is False
            assert response.model_name == "gpt2"
        text = "".join(piece.as_numpy("text")[0].decode("utf-8") for piece in pieces)
        assert text == expected["generated_text"]
        response = final.get_response()
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("responses", "BYTES", [1])]
        assert list(final.as_numpy("responses")) == [json.dumps(expected).encode("utf-8")]  # ModelInfer's bytes
        assert response.parameters["triton_final_response"].bool_param is True
        assert response.parameters["task"].string_param == "text-generation"
        assert response.parameters["total_ms"].double_param >= response.parameters["model_ms"].double_param >= 0


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"query": ["one", "two"]}, "A streamed request carries exactly one input; this one has 2."),
        ({"query": [PROMPT], "parameters": {"bogus": 1}}, "Unknown parameter 'bogus' for text-generation."),
        ({"query": [PROMPT], "model": "llama"}, "No model named 'llama'; this server serves the model 'gpt2'."),
    ],
)
def test_a_failed_stream_request_gets_the_http_message_and_the_stream_goes_on(service, grpc_client, request_, message):
    got = _grpc_stream(
        grpc_client,
        {"id": "bad", **request_},
        {"id": "good", "query": [PROMPT], "parameters": {"max_new_tokens": 3}},
    )
    (error,) = got["errors"]
    assert message in error
    if request_.get("model") is None:
        http = service.handle_http("POST", lambda n: json.dumps({**request_, "stream": True}).encode(), None)
        assert http.body["error"]["message"] == error
    assert got["good"][-1].get_response().parameters["triton_final_response"].bool_param is True


def test_a_cancelled_grpc_stream_leaves_the_server_serving(grpc_client, service):
    received: "queue.Queue[Any]" = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: received.put(result or error))
    grpc_client.async_stream_infer("gpt2", [_query_tensor([PROMPT])], parameters={"max_new_tokens": 32})
    received.get(timeout=60)
    grpc_client.stop_stream(cancel_requests=True)
    got = _grpc_stream(grpc_client, {"id": "after", "query": [PROMPT], "parameters": {"max_new_tokens": 4}})
    expected = service.score({"query": [PROMPT], "parameters": {"max_new_tokens": 4}})["responses"][0]
    assert list(got["after"][-1].as_numpy("responses")) == [json.dumps(expected).encode("utf-8")]


# --- the client: Deployment.stream ---------------------------------------------------------------


def test_deployment_stream_yields_the_pieces_and_keeps_the_final_answer(handle):
    expected = handle.query(PROMPT, max_new_tokens=16)["responses"][0]
    stream = handle.stream(PROMPT, max_new_tokens=16)
    assert isinstance(stream, TextStream) and stream.entry is None
    pieces = list(stream)
    assert pieces and "".join(pieces) == stream.text == expected["generated_text"]
    assert stream.entry == expected
    assert set(stream.response) == {"entry", "task", "model", "replica", "timing"}
    assert list(stream) == []  # exhausted
    # the request forms of query(): a whole request object
    with handle.stream({"query": "the cat sat", "parameters": {"max_new_tokens": 5}}) as again:
        assert "".join(again) == handle.query("the cat sat", max_new_tokens=5)["responses"][0]["generated_text"]


def test_deployment_stream_reuses_the_connection_after_a_finished_stream(gpt2_server):
    transport = PooledTransport()
    handle = Deployment("gpt2", target="local", scoring_uri=gpt2_server.scoring_uri, backend=_Backend(), transport=transport)
    for _ in range(2):
        assert "".join(handle.stream(PROMPT, max_new_tokens=3))
    assert "idle_connections=1" in repr(transport)
    handle.close()


@pytest.mark.parametrize(
    "request_, parameters, error_type, message",
    [
        (PROMPT, {"bogus": 1}, BadRequestError, "Unknown parameter 'bogus'"),
        (LONG_PROMPT, {}, PayloadTooLargeError, "tokens"),
        ({"query": PROMPT, "parameters": {"max_new_tokens": "many"}}, {}, BadRequestError, "max_new_tokens"),
    ],
)
def test_deployment_stream_raises_the_sdk_errors_of_query(handle, request_, parameters, error_type, message):
    with pytest.raises(error_type, match=message) as streamed:
        handle.stream(request_, **parameters)
    with pytest.raises(error_type) as queried:
        handle.query(request_, **parameters)
    assert (streamed.value.message, streamed.value.status_code) == (queried.value.message, queried.value.status_code)


def test_deployment_stream_refuses_what_cannot_stream(handle):
    with pytest.raises(BadRequestError, match="A streamed request carries exactly one input; this one has 2") as info:
        handle.stream(["one", "two"])
    assert info.value.status_code == 400


class _ScriptedStream(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server-sent events in ``server.events`` (bytes), then ends."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in self.server.events:  # type: ignore[attr-defined]
            self.wfile.write(event)
            self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def scripted_stream() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedStream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "events, error_type, message",
    [
        ([b'data: {"error": {"code": "timeout", "message": "ran past its timeout"}}\n\n'], RequestTimeoutError, "ran past"),
        ([b'data: {"error": {"code": "internal_error", "message": "Scoring failed: X"}}\n\n'], ScoringError, "Scoring failed"),
        ([], ScoringError, "ended without its final event, after 4 characters"),
    ],
)
def test_an_error_event_after_the_first_piece_raises_the_sdk_error(scripted_stream, events, error_type, message):
    scripted_stream.events = [b": a comment\n\n", b'data: {"text": "Deep"}\n\n', *events]
    url = f"http://127.0.0.1:{scripted_stream.server_address[1]}/score"
    handle = Deployment("scripted", target="local", scoring_uri=url, backend=_Backend(), retries=0)
    stream = handle.stream(PROMPT)
    assert next(stream) == "Deep"
    with pytest.raises(error_type, match=message):
        next(stream)
    assert stream.entry is None and stream.text == "Deep"


def test_deployment_stream_through_the_azure_like_front(gpt2_server, handle, tmp_path):
    azure_tests = str(Path(__file__).resolve().parent / "azure")
    if azure_tests not in sys.path:
        sys.path.insert(0, azure_tests)
    from certs import make_test_pki
    from front import EndpointFront, FrontDeployment

    pki = make_test_pki(tmp_path / "pki")
    endpoint = EndpointFront("chat", pki).start()
    try:
        endpoint.set_keys(["front-key-1234"])
        endpoint.set_deployment(FrontDeployment("blue", gpt2_server.base_url, request_timeout_ms=60_000))
        endpoint.set_traffic({"blue": 100})
        azure = Deployment(
            "chat",
            target="azureml",
            scoring_uri=endpoint.scoring_uri,
            backend=_Backend(),
            endpoint="chat",
            deployment="blue",
            auth=lambda: {"Authorization": "Bearer front-key-1234"},
            transport=PooledTransport(ssl_context=pki.client_context()),
            retries=0,
        )
        expected = handle.query(PROMPT, max_new_tokens=16)["responses"][0]
        stream = azure.stream(PROMPT, max_new_tokens=16)
        assert "".join(stream) == expected["generated_text"] and stream.entry == expected
        with pytest.raises(BadRequestError, match="exactly one input") as refused:  # the front's 424, mapped back
            azure.stream(["one", "two"])
        assert refused.value.front_status_code == 424
        assert [record.status for record in endpoint.log] == [200, 424]
        azure.close()
    finally:
        endpoint.stop()


# --- the command line ----------------------------------------------------------------------------


def test_cli_query_stream_prints_the_text_as_it_comes(handle, monkeypatch, capsys):
    import mii_azure.cli as cli

    monkeypatch.setattr(cli, "_handle", lambda args: handle)
    expected = handle.query(PROMPT, max_new_tokens=8)["responses"][0]["generated_text"]
    assert main(["query", "gpt2", json.dumps({"query": PROMPT, "parameters": {"max_new_tokens": 8}}), "--stream"]) == 0
    assert capsys.readouterr().out == expected + "\n"

    assert main(["query", "gpt2", '{"query": ["one", "two"]}', "--stream"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: A streamed request carries exactly one input") and "Traceback" not in captured.err
