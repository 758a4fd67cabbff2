"""Fuzzed inputs against one live local harness (the real inference server, HTTP and gRPC).

Property-based (hypothesis): generated JSON bodies, parameter values, unicode (lone surrogates, NUL,
combining marks, right-to-left marks), deep documents and raw bytes against ``/score``, the OpenAI
routes and gRPC ``ModelInfer``. Every answer must be a documented status with the route's JSON
error shape (or a documented gRPC code), never a 500, a stack trace or a hang, and the server must
answer a good request after each example. Then schemathesis runs against the OpenAPI document the
server itself serves (``/openapi.json``). Example counts are bounded (CI has 2 cores).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

pytestmark = [pytest.mark.serving, pytest.mark.harness]

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = 60
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
#: What a fuzzed request may be answered with (DESIGN.md section 3; 404/405 for the OpenAI routes).
DOCUMENTED = {200, 400, 404, 405, 413, 503, 504}
TRICKY_TEXT = ["\x00", "e\u0301\u0301", "\u202eabc\u202c", "\ud800", "\udfff", "a\ud83d", "", " ", "\ufeff", "\u0000\u0001"]
GENERATION_KEYS = ["max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "repetition_penalty", "seed", "stop", "return_full_text"]
OPENAI_KEYS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop",
               "seed", "stream", "stream_options", "user", "logit_bias", "tools", "echo", "top_k", "input", "encoding_format"]

texts = st.text(alphabet=st.characters(exclude_categories=()), max_size=40) | st.sampled_from(TRICKY_TEXT)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=12)
small_ints = st.integers(-3, 200)


def _parameters(keys: list[str]) -> Any:
    values = small_ints | st.floats(-1, 3) | json_values
    return st.dictionaries(st.sampled_from(keys) | texts, values, max_size=5)


score_bodies = st.fixed_dictionaries(
    {},
    optional={
        "query": texts | st.lists(texts, max_size=4) | json_values,
        "parameters": _parameters(GENERATION_KEYS) | json_values,
        "stream": st.booleans() | json_values,
        "input_data": st.fixed_dictionaries({}, optional={"input_string": st.lists(texts, max_size=3) | json_values}) | json_values,
    },
) | json_values
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "wizard"]) | json_values},
                          optional={"content": texts | json_values, "name": texts | json_values}),
    max_size=3,
) | json_values
openai_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["chat-harness", "gpt-4o"]) | json_values,
        "prompt": texts | st.lists(texts, max_size=3) | json_values,
        "messages": messages,
        "max_tokens": small_ints | json_values,
        "temperature": st.floats(-1, 3) | json_values,
        "n": st.integers(-1, 4) | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | json_values}) | json_values,
        "stop": texts | st.lists(texts, max_size=3) | json_values,
        "seed": st.integers(-(2**64), 2**64) | json_values,
    },
).flatmap(lambda body: st.dictionaries(st.sampled_from(OPENAI_KEYS) | texts, json_values, max_size=2).map(lambda extra: {**extra, **body})) | json_values


@pytest.fixture(scope="module")
def fuzz_server(chat_harness):
    return chat_harness


def _send(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def _check_answer(status: int, content_type: str, body: bytes, *, openai_shape: bool) -> None:
    assert status in DOCUMENTED, (status, body[:500])
    if status == 200:
        if content_type.startswith("text/event-stream"):
            assert body.rstrip().endswith(b"}") or body.rstrip().endswith(b"[DONE]"), body[-200:]
        else:
            json.loads(body)
        return
    error = json.loads(body)["error"]
    expected = {"message", "type", "param", "code"} if openai_shape else {"code", "message"}
    assert set(error) == expected, error
    assert error["message"] and "Traceback" not in error["message"]


def _still_serves(server: Any) -> None:
    status, _, body = _send(server.scoring_uri, b'{"query": "ok", "parameters": {"max_new_tokens": 1}}')
    assert status == 200, body[:300]
    assert server.process is None or server.process.poll() is None, "the server died"


@FUZZ_SETTINGS
@given(body=score_bodies)
@example(body={"query": "\ud800"})
@example(body={"query": ["fine", "x\udfff"], "parameters": {"stop": "\ud800"}})
@example(body={"query": "x", "parameters": {"max_new_tokens": 10**30}})
@example(body={"query": "x", "stream": True, "parameters": {"max_new_tokens": 3, "stop": ["\x00"]}})
def test_score_answers_every_body_with_a_documented_status(fuzz_server, body):
    status, content_type, answer = _send(fuzz_server.scoring_uri, _encode(body))
    _check_answer(status, content_type, answer, openai_shape=False)
    _still_serves(fuzz_server)


@FUZZ_SETTINGS
@given(body=openai_bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/models/chat/completions"]))
@example(body={"prompt": "\ud800", "max_tokens": 2}, path="/v1/completions")
@example(body={"messages": [{"role": "user", "content": "\u202e\x00"}], "max_tokens": 2, "stream": True}, path="/v1/chat/completions")
def test_openai_routes_answer_every_body_with_a_documented_status(fuzz_server, body, path):
    status, content_type, answer = _send(fuzz_server.base_url + path, _encode(body))
    _check_answer(status, content_type, answer, openai_shape=True)
    _still_serves(fuzz_server)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200) | st.sampled_from([b"[" * 3000 + b"]" * 3000, b'{"query": "\xff\xfe"}', b"\x00" * 50, b'{"a":' * 2500]),
       path=st.sampled_from(["/score", "/v1/completions", "/v1/chat/completions"]))
def test_raw_bytes_and_deep_documents_are_400s(fuzz_server, raw, path):
    status, content_type, answer = _send(fuzz_server.base_url + path, raw)
    _check_answer(status, content_type, answer, openai_shape=path != "/score")
    _still_serves(fuzz_server)


#: gRPC codes a bad request may get (DESIGN.md section 4), never INTERNAL or UNKNOWN.
GRPC_DOCUMENTED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


def _tensor(pb: Any, draw_name: str, datatype: str, shape: list[int], contents: list[bytes]) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name=draw_name, datatype=datatype, shape=shape)
    tensor.contents.bytes_contents.extend(contents)
    return tensor


grpc_requests = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["chat-harness", "other", ""]),
        "version": st.sampled_from(["", "1", "7"]),
        "name": st.sampled_from(["query", "text", ""]),
        "datatype": st.sampled_from(["BYTES", "INT32", "FP32", "bogus"]),
        "shape": st.lists(st.integers(-2, 3), max_size=3),
        "contents": st.lists(st.binary(max_size=20) | st.sampled_from([b"\xed\xa0\x80", b"hi", b"\xff"]), max_size=3),
        "parameters": st.dictionaries(st.sampled_from(GENERATION_KEYS) | st.text(max_size=8), st.integers(-5, 5) | st.text(max_size=10) | st.booleans(), max_size=3),
    }
)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=grpc_requests)
def test_grpc_model_infer_answers_with_documented_codes(fuzz_server, fields):
    import grpc

    from mii_azure.runtime.proto import grpc_service_pb2 as pb
    from mii_azure.runtime.proto import grpc_service_pb2_grpc as pb_grpc

    port = fuzz_server.environment["MII_AZURE_GRPC_PORT"]
    request = pb.ModelInferRequest(model_name=fields["model"], model_version=fields["version"])
    request.inputs.append(_tensor(pb, fields["name"], fields["datatype"], fields["shape"], fields["contents"]))
    for key, value in fields["parameters"].items():
        parameter = request.parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        else:
            parameter.string_param = value
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
            assert "Traceback" not in (exc.details() or "")
    assert code in GRPC_DOCUMENTED, (code, fields)
    _still_serves(fuzz_server)


def test_schemathesis_against_the_servers_own_openapi_document(fuzz_server):
    """Every operation of /openapi.json, with schemathesis' generated cases: no 5xx, documented statuses
    and content types, answers that match their schemas."""
    import schemathesis
    from schemathesis.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(fuzz_server.base_url + "/openapi.json")
    failures: list[str] = []
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()

        @settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
        @given(case=strategy)
        def run(case: Any) -> None:
            nonlocal tried
            tried += 1
            response = case.call(base_url=fuzz_server.base_url, timeout=120)
            try:
                # Every check but "a schema-valid request is accepted": the document gives field types
                # and ranges, not the limits that depend on the prompt (its tokens plus max_new_tokens
                # against the context), so a well-typed request may still rightly get a 400.
                case.validate_response(response, excluded_checks=[positive_data_acceptance])
            except Exception as exc:  # schemathesis raises one error naming every failed check
                failures.append(f"{operation.label}: {exc}"[:600])

        run()
    assert tried >= 8 * 5
    assert not failures, "\n".join(failures[:5])
