"""The router in-process (no server): OpenAI routes, the catalog shape on /score, keys and error shapes.

The same engine answers /score and the OpenAI routes, so greedy texts are compared between them.
Through the real inference server and real clients: tests/test_openai_clients.py.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any, Optional

import pytest

pytestmark = pytest.mark.serving

KEY = "test-key-7f3a"


class Client:
    """Calls a Router the way the inference server's glue does."""

    def __init__(self, router: Any) -> None:
        self.router = router

    def call(self, method: str, path: str, body: Any = None, *, key: Optional[str] = KEY, raw: Optional[bytes] = None):
        from mii_azure.runtime.routes import HttpRequest

        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        reply = self.router.handle(HttpRequest(method, path, headers, io.BytesIO(data).read, len(data)))
        if reply.stream is not None:
            return reply.status, b"".join(reply.stream).decode()
        if reply.content is not None:
            return reply.status, reply.content.decode()
        return reply.status, reply.body


@pytest.fixture(scope="module")
def chat(model_dirs):
    from mii_azure.config import ServingSettings
    from mii_azure.runtime.engine import Engine
    from mii_azure.runtime.routes import Router
    from mii_azure.runtime.service import ScoringService

    engine = Engine.load(model_dirs["gpt2_chat"], settings=ServingSettings(deployment_name="chat", max_new_tokens_limit=64))
    service = ScoringService(engine)
    yield Client(Router(service, api_key=KEY))
    engine.close()


def _score_text(client: Client, prompt: str, max_new_tokens: int) -> str:
    status, body = client.call("POST", "/score", {"query": prompt, "parameters": {"max_new_tokens": max_new_tokens}})
    assert status == 200, body
    return body["responses"][0]["generated_text"]


def _sse_events(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def test_models_and_info(chat):
    status, models = chat.call("GET", "/v1/models")
    assert status == 200 and [card["id"] for card in models["data"]] == ["chat"]
    assert chat.call("GET", "/v1/models/chat")[1]["id"] == "chat"
    status, missing = chat.call("GET", "/v1/models/other")
    assert status == 404 and missing["error"]["code"] == "model_not_found"
    assert chat.call("GET", "/info")[1] == {"model_name": "chat", "model_type": "chat_completion", "model_provider_name": "mii_azure"}
    assert chat.call("GET", "/models/info")[1]["model_type"] == "chat_completion"


def test_greedy_completion_is_the_score_text_with_usage_and_finish_reason(chat):
    status, body = chat.call("POST", "/v1/completions", {"model": "chat", "prompt": "Hello there", "max_tokens": 6, "temperature": 0})
    assert status == 200, body
    (choice,) = body["choices"]
    assert choice["text"] == _score_text(chat, "Hello there", 6)
    tokens = len(chat.router.service.engine.task.prompt_tokens("Hello there"))
    assert body["usage"]["prompt_tokens"] == tokens
    assert body["usage"]["total_tokens"] == tokens + body["usage"]["completion_tokens"]
    assert choice["finish_reason"] == ("length" if body["usage"]["completion_tokens"] == 6 else "stop")
    assert body["object"] == "text_completion" and body["model"] == "chat"
    echoed = chat.call("POST", "/completions", {"prompt": "Hello there", "max_tokens": 6, "temperature": 0, "echo": True})[1]
    assert echoed["choices"][0]["text"] == "Hello there" + choice["text"]


def test_chat_renders_the_template_and_answers_like_score(chat):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    status, body = chat.call("POST", "/v1/chat/completions", {"messages": messages, "max_completion_tokens": 5, "temperature": 0})
    assert status == 200, body
    prompt = "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": _score_text(chat, prompt, 5)}
    assert body["usage"]["prompt_tokens"] == len(chat.router.service.engine.task.prompt_tokens(prompt))
    for path in ("/chat/completions", "/models/chat/completions"):
        again = chat.call("POST", path, {"messages": messages, "max_tokens": 5, "temperature": 0})[1]
        assert again["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]


def test_chat_without_max_tokens_fills_the_room_left(chat):
    body = chat.call("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0})[1]
    assert body["usage"]["completion_tokens"] <= 64  # the deployment's max_new_tokens_limit
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_streamed_chat_is_the_same_text_in_chunks_with_usage(chat):
    request = {"messages": [{"role": "user", "content": "Tell"}], "max_tokens": 8, "temperature": 0}
    whole = chat.call("POST", "/v1/chat/completions", request)[1]
    status, text = chat.call("POST", "/v1/chat/completions", {**request, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    chunks = _sse_events(text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert pieces == whole["choices"][0]["message"]["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)


def test_n_choices_with_a_seed_differ_and_reproduce(chat):
    request = {"prompt": ["One", "Two"], "max_tokens": 6, "n": 2, "seed": 11, "temperature": 1.0}
    first = chat.call("POST", "/v1/completions", request)[1]
    again = chat.call("POST", "/v1/completions", request)[1]
    texts = [choice["text"] for choice in first["choices"]]
    assert [choice["index"] for choice in first["choices"]] == [0, 1, 2, 3]
    assert texts == [choice["text"] for choice in again["choices"]]
    single = chat.call("POST", "/v1/completions", {**request, "prompt": "One", "n": 1})[1]
    assert single["choices"][0]["text"] == texts[0]  # choice 0 draws from the seed itself
    streamed = _sse_events(chat.call("POST", "/v1/completions", {**request, "stream": True})[1])
    by_index: dict[int, str] = {}
    for chunk in streamed:
        by_index[chunk["choices"][0]["index"]] = by_index.get(chunk["choices"][0]["index"], "") + chunk["choices"][0]["text"]
    assert [by_index[i] for i in range(4)] == texts


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias", 400),
        ({"prompt": "x", "tools": [{"type": "function"}]}, "tools", 400),
        ({"prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty", 400),
        ({"prompt": "x", "invented_field": 1}, "invented_field", 400),
        ({"prompt": "x", "temperature": "hot"}, "temperature", 400),
        ({"prompt": "x", "temperature": 3}, "temperature", 400),
        ({"prompt": "x", "n": 0}, "n", 400),
        ({"prompt": [1, 2, 3]}, "prompt", 400),
        ({"prompt": "x", "max_tokens": 65}, "max_tokens", 400),
        ({"prompt": "x", "max_tokens": 60, "model": "chat"}, None, 200),
        ({"prompt": "x", "model": "gpt-4o"}, "model", 404),
        ({}, "prompt", 400),
    ],
)
def test_fields_refused_with_openai_errors(chat, body, param, status):
    got, answer = chat.call("POST", "/v1/completions", body)
    assert got == status, answer
    if status != 200:
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param and error["message"]


def test_harmless_fields_are_accepted(chat):
    body = {"prompt": "x", "max_tokens": 2, "user": "u1", "store": False, "metadata": {"a": "b"}, "logprobs": False,
            "presence_penalty": 0, "logit_bias": {}, "parallel_tool_calls": True}
    assert chat.call("POST", "/v1/completions", body)[0] == 200


def test_chat_messages_are_checked(chat):
    for messages, param in (
        ([], "messages"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content"),
        ([{"role": "tool", "content": "x"}], "messages[0].role"),
    ):
        status, body = chat.call("POST", "/v1/chat/completions", {"messages": messages})
        assert status == 400 and body["error"]["param"] == param, body


def test_a_model_without_chat_template_says_so(model_dirs):
    from mii_azure.config import ServingSettings
    from mii_azure.runtime.engine import Engine
    from mii_azure.runtime.routes import Router
    from mii_azure.runtime.service import ScoringService

    engine = Engine.load(model_dirs["gpt2"], settings=ServingSettings(deployment_name="plain"))
    try:
        client = Client(Router(ScoringService(engine)))
        status, body = client.call("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, key=None)
        assert status == 400 and "no chat template" in body["error"]["message"]
        assert client.call("GET", "/info", key=None)[1]["model_type"] == "text_generation"
        assert client.call("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, key=None)[0] == 200
    finally:
        engine.close()


def test_keys_are_required_on_every_route_but_the_probe(chat):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/score"), ("GET", "/metrics"), ("GET", "/info")):
        for key in (None, "wrong-key"):
            status, body = chat.call(method, path, {"prompt": "x"}, key=key)
            assert status == 401, (path, body)
            assert KEY not in json.dumps(body)
    status, body = chat.call("POST", "/score", {"query": "x"}, key=None)
    assert set(body["error"]) == {"code", "message"} and body["error"]["code"] == "unauthorized"  # /score's own shape
    assert "Bearer" in body["error"]["message"]
    assert KEY not in repr(chat.router)


def test_methods_paths_and_bodies(chat):
    assert chat.call("GET", "/v1/completions")[0] == 405
    assert chat.call("GET", "/v1/unknown")[0] == 404
    status, body = chat.call("POST", "/v1/completions", raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = chat.call("POST", "/v1/completions", raw=b"[" * 5000 + b"]" * 5000)
    assert status == 400 and "too deeply" in body["error"]["message"]
    status, body = chat.call("POST", "/v1/embeddings", {"input": "x"})
    assert status == 400 and "/v1/completions" in body["error"]["message"]


def test_the_catalog_shape_answers_in_the_catalog_shape(chat):
    native = _score_text(chat, "Hello there", 5)
    for request in (
        {"input_data": {"input_string": ["Hello there", "Hi"], "parameters": {"max_new_tokens": 5}}},
        {"input_data": {"input_string": ["Hello there", "Hi"]}, "parameters": {"max_new_tokens": 5}},
        {"inputs": {"input_string": ["Hello there", "Hi"]}, "parameters": {"max_new_tokens": 5}},
        {"input_data": {"columns": ["input_string"], "index": [0, 1], "data": [["Hello there"], ["Hi"]]}, "parameters": {"max_new_tokens": 5}},
    ):
        status, body = chat.call("POST", "/score", request)
        assert status == 200, body
        assert body == [{"0": native}, {"0": _score_text(chat, "Hi", 5)}]
    messages = [{"role": "user", "content": "Hi"}]
    status, body = chat.call("POST", "/score", {"input_data": {"input_string": messages, "parameters": {"max_new_tokens": 5}}})
    assert status == 200 and body == {"output": _score_text(chat, "<|user|>Hi\n<|assistant|>", 5)}
    for bad in (
        {"input_data": {"input_string": "Hello"}},
        {"input_data": {}},
        {"input_data": {"input_string": ["x"], "parameters": {"bogus": 1}}},
        {"input_data": {"input_string": ["x"], "parameters": {"max_new_tokens": 2}}, "parameters": {"max_new_tokens": 3}},
        {"input_data": {"input_string": ["x"]}, "stream": True},
    ):
        status, body = chat.call("POST", "/score", bad)
        assert status == 400 and body["error"]["message"], (bad, body)


def test_embeddings_match_score_in_float_and_base64(model_dirs):
    from mii_azure.runtime.engine import Engine
    from mii_azure.runtime.routes import Router
    from mii_azure.runtime.service import ScoringService

    engine = Engine.load(model_dirs["minilm"])
    try:
        client = Client(Router(ScoringService(engine)))
        name = client.call("GET", "/v1/models", key=None)[1]["data"][0]["id"]
        texts = ["a cat sat", "stocks fell"]
        vectors = [e["embedding"] for e in client.call("POST", "/score", {"query": texts}, key=None)[1]["responses"]]
        floats = client.call("POST", "/v1/embeddings", {"model": name, "input": texts}, key=None)[1]
        assert [item["embedding"] for item in floats["data"]] == vectors
        assert floats["usage"]["prompt_tokens"] == sum(engine.task.token_counts(texts))
        packed = client.call("POST", "/embeddings", {"input": texts[0], "encoding_format": "base64"}, key=None)[1]
        raw = base64.b64decode(packed["data"][0]["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vectors[0], abs=1e-7)
        status, body = client.call("POST", "/v1/embeddings", {"input": "x", "dimensions": 7}, key=None)
        assert status == 400 and body["error"]["param"] == "dimensions"
        assert client.call("POST", "/v1/embeddings", {"input": ""}, key=None)[0] == 400
        assert client.call("GET", "/info", key=None)[1]["model_type"] == "embeddings"
    finally:
        engine.close()


def test_bodies_over_the_limit_are_refused_before_they_are_read_whole(chat):
    from mii_azure.runtime.routes import HttpRequest

    limit = chat.router.service.settings.max_body_bytes
    asked: list[int] = []

    def read_body(size: int) -> bytes:
        asked.append(size)
        return b"x" * size  # a client streaming an endless body

    for path in ("/v1/completions", "/v1/chat/completions", "/score"):
        asked.clear()
        reply = chat.router.handle(HttpRequest("POST", path, {"Authorization": f"Bearer {KEY}"}, read_body, None))
        assert reply.status == 413 and asked == [limit + 1], (path, asked)
        declared = chat.router.handle(HttpRequest("POST", path, {"Authorization": f"Bearer {KEY}"}, read_body, limit * 4))
        assert declared.status == 413
    assert chat.call("POST", "/v1/completions", {"prompt": "x"}, key="wrong")[0] == 401  # before any read
