"""Every task through the real azureml-inference-server-http serving scoring/score.py on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import pytest
from PIL import Image

from helpers import post, post_json

pytestmark = [pytest.mark.serving, pytest.mark.harness]  # the HTTP contract per task; loading every task on both stacks is tests/test_engine_plans.py


def _check_envelope(body: dict, task: str, count: int) -> list:
    assert set(body) == {"responses", "task", "model", "replica", "timing"}
    assert body["replica"] == 0  # one worker, one model copy
    assert body["task"] == task
    assert isinstance(body["model"], str) and body["model"]
    assert set(body["timing"]) == {"total_ms", "model_ms"}
    assert 0 <= body["timing"]["model_ms"] <= body["timing"]["total_ms"]
    assert len(body["responses"]) == count
    return body["responses"]


def test_text_generation(servers):
    server = servers.get("gpt2")
    answer = post_json(server.scoring_uri, {"query": ["DeepSpeed is", "the cat sat"], "parameters": {"max_new_tokens": 5}})
    assert answer.status == 200, answer.body
    for entry in _check_envelope(answer.body, "text-generation", 2):
        assert set(entry) == {"generated_text", "num_tokens"}
        assert isinstance(entry["generated_text"], str)
        assert 1 <= entry["num_tokens"] <= 5
    again = post_json(server.scoring_uri, {"query": ["DeepSpeed is", "the cat sat"], "parameters": {"max_new_tokens": 5}})
    assert again.body["responses"] == answer.body["responses"], "greedy decoding is deterministic"


def test_text_generation_return_full_text_and_legacy_keywords(servers):
    server = servers.get("gpt2")
    # Legacy DeepSpeed-MII shape: generation keywords beside the query.
    answer = post_json(server.scoring_uri, {"query": "DeepSpeed is", "max_new_tokens": 3, "return_full_text": True})
    assert answer.status == 200, answer.body
    (entry,) = _check_envelope(answer.body, "text-generation", 1)
    assert entry["generated_text"].startswith("DeepSpeed is")


def test_text2text_generation(servers):
    answer = post_json(servers.get("t5").scoring_uri, {"query": ["hello world"], "parameters": {"max_new_tokens": 4}})
    assert answer.status == 200, answer.body
    (entry,) = _check_envelope(answer.body, "text2text-generation", 1)
    assert isinstance(entry["generated_text"], str) and 1 <= entry["num_tokens"] <= 4


def test_text_classification(servers):
    answer = post_json(servers.get("bert_classifier").scoring_uri, {"query": ["a good day", "bad"], "parameters": {"top_k": 3}})
    assert answer.status == 200, answer.body
    for entry in _check_envelope(answer.body, "text-classification", 2):
        assert [set(item) for item in entry] == [{"label", "score"}] * 3
        assert {item["label"] for item in entry} == {"negative", "neutral", "positive"}
        scores = [item["score"] for item in entry]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_fill_mask(servers):
    answer = post_json(servers.get("bert_fill_mask").scoring_uri, {"query": "the cat [MASK] on the mat", "parameters": {"top_k": 4}})
    assert answer.status == 200, answer.body
    (entry,) = _check_envelope(answer.body, "fill-mask", 1)
    assert len(entry) == 4
    for candidate in entry:
        assert set(candidate) == {"token_str", "score", "sequence"}
        assert isinstance(candidate["token_str"], str) and 0 <= candidate["score"] <= 1
        assert candidate["sequence"].startswith("the cat") and candidate["sequence"].endswith("on the mat")
        assert "[MASK]" not in candidate["sequence"]


def test_token_classification(servers):
    text = "ada lovelace lives in london"
    answer = post_json(servers.get("bert_token_classifier").scoring_uri, {"query": [text]})
    assert answer.status == 200, answer.body
    (entry,) = _check_envelope(answer.body, "token-classification", 1)
    for group in entry:
        assert set(group) == {"entity_group", "score", "word", "start", "end"}
        assert group["entity_group"] in {"PER", "LOC"}
        assert text[group["start"] : group["end"]] == group["word"]


def test_question_answering_both_shapes(servers):
    server = servers.get("bert_question_answering")
    context = "ada lovelace wrote the first program in london"
    answer = post_json(server.scoring_uri, {"query": [{"question": "who wrote it?", "context": context}]})
    assert answer.status == 200, answer.body
    (entry,) = _check_envelope(answer.body, "question-answering", 1)
    assert set(entry) == {"answer", "score", "start", "end"}
    assert context[entry["start"] : entry["end"]] == entry["answer"] and entry["answer"]
    legacy = post_json(server.scoring_uri, {"question": "who wrote it?", "context": context})
    assert legacy.status == 200, legacy.body
    assert legacy.body["responses"] == answer.body["responses"]


def test_feature_extraction_plain_model(servers):
    answer = post_json(servers.get("bert_encoder").scoring_uri, {"query": ["one", "two words"]})
    assert answer.status == 200, answer.body
    for entry in _check_envelope(answer.body, "feature-extraction", 2):
        assert set(entry) == {"embedding"}
        assert len(entry["embedding"]) == 32 and all(isinstance(x, float) for x in entry["embedding"])


def test_text_to_image(servers):
    answer = post_json(
        servers.get("stable_diffusion").scoring_uri,
        {"query": ["a red circle"], "parameters": {"num_inference_steps": 2, "seed": 7, "height": 32, "width": 48}},
    )
    assert answer.status == 200, answer.body
    (entry,) = _check_envelope(answer.body, "text-to-image", 1)
    assert set(entry) == {"image_png_base64", "width", "height"}
    image = Image.open(io.BytesIO(base64.b64decode(entry["image_png_base64"])))
    assert image.format == "PNG" and image.size == (48, 32) == (entry["width"], entry["height"])


def test_inference_server_routes(servers):
    server = servers.get("bert_classifier")
    with urllib.request.urlopen(server.base_url + "/") as response:
        assert response.status == 200
    with urllib.request.urlopen(server.base_url + "/swagger.json") as response:
        assert response.status == 200 and isinstance(json.loads(response.read()), dict)


# --- bad input: status, a message naming the problem, and the server still answers -----------

BAD_GENERATION_REQUESTS = [
    pytest.param(b"this is not json", 400, "not valid JSON", id="not-json"),
    pytest.param(b"\xff\xfe\x00{", 400, "UTF-8", id="not-utf8"),
    pytest.param(b"", 400, "empty", id="empty-body"),
    pytest.param(b'["DeepSpeed is"]', 400, "JSON object", id="json-array"),
    pytest.param(b'"DeepSpeed is"', 400, "JSON object", id="json-string"),
    pytest.param(b'{"prompt": "DeepSpeed is"}', 400, "'query'", id="missing-query"),
    pytest.param(b'{"query": []}', 400, "empty", id="empty-list"),
    pytest.param(b'{"query": "   "}', 400, "empty string", id="blank-string"),
    pytest.param(b'{"query": 42}', 400, "string or a list of strings", id="query-number"),
    pytest.param(b'{"query": ["ok", 3]}', 400, "query[1]", id="query-item-number"),
    pytest.param(b'{"query": "x", "parameters": [1]}', 400, "'parameters' must be a JSON object", id="params-array"),
    pytest.param(b'{"query": "x", "parameters": {"max_new_tokens": "ten"}}', 400, "max_new_tokens", id="wrong-type"),
    pytest.param(b'{"query": "x", "parameters": {"max_tokens": 5}}', 400, "Unknown parameter 'max_tokens'", id="unknown-param"),
    pytest.param(b'{"query": "x", "bogus_flag": true}', 400, "Unknown parameter 'bogus_flag'", id="unknown-legacy-param"),
    pytest.param(b'{"query": "x", "parameters": {"max_new_tokens": -5}}', 400, "max_new_tokens", id="negative-max-new-tokens"),
    pytest.param(b'{"query": "x", "parameters": {"max_new_tokens": 1000000000}}', 400, "max_new_tokens", id="huge-max-new-tokens"),
    pytest.param(b'{"query": "x", "parameters": {"max_new_tokens": 64}}', 400, "positions", id="past-max-positions"),
    pytest.param(b'{"query": "x", "parameters": {"temperature": 0}}', 400, "temperature", id="zero-temperature"),
    pytest.param(json.dumps({"query": ["hi"] * 33}).encode(), 413, "at most 32", id="too-many-inputs"),
    pytest.param(json.dumps({"query": "word " * 200}).encode(), 413, "tokens", id="input-too-long"),
]


@pytest.mark.parametrize(("body", "status", "fragment"), BAD_GENERATION_REQUESTS)
def test_bad_generation_requests(servers, body, status, fragment):
    server = servers.get("gpt2")
    answer = post(server.scoring_uri, body)
    assert answer.status == status, answer.body
    assert set(answer.body) == {"error"} and set(answer.body["error"]) == {"code", "message"}
    assert fragment in answer.body["error"]["message"]
    assert "Traceback" not in answer.body["error"]["message"]
    good = post_json(server.scoring_uri, {"query": "DeepSpeed is", "parameters": {"max_new_tokens": 2}})
    assert good.status == 200, "the server keeps answering after a bad request"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        pytest.param({"query": {"question": "who?"}}, "no 'context'", id="no-context"),
        pytest.param({"question": "who?"}, "no 'context'", id="legacy-no-context"),
        pytest.param({"query": "who?"}, "object", id="plain-string"),
        pytest.param({"query": [{"question": "who?", "context": ""}]}, "empty string", id="empty-context"),
        pytest.param({"query": [{"question": "who?", "context": "x", "answer": "y"}]}, "unknown fields", id="extra-field"),
    ],
)
def test_bad_question_answering_requests(servers, payload, fragment):
    server = servers.get("bert_question_answering")
    answer = post_json(server.scoring_uri, payload)
    assert answer.status == 400 and fragment in answer.body["error"]["message"], answer.body
    good = post_json(server.scoring_uri, {"query": {"question": "who?", "context": "ada did"}})
    assert good.status == 200


def test_fill_mask_without_mask_token(servers):
    answer = post_json(servers.get("bert_fill_mask").scoring_uri, {"query": "no mask here"})
    assert answer.status == 400 and "[MASK]" in answer.body["error"]["message"]


def test_get_on_score_explains_the_contract(servers):
    server = servers.get("bert_classifier")
    try:
        urllib.request.urlopen(server.scoring_uri)
        raise AssertionError("GET /score must not succeed")
    except urllib.error.HTTPError as error:
        assert error.code == 400
        assert "POST" in json.loads(error.read())["error"]["message"]


def test_body_over_limit_is_413(servers):
    server = servers.get("bert_classifier", {"MII_AZURE_MAX_BODY_BYTES": "2048"})
    answer = post_json(server.scoring_uri, {"query": "x" * 5000})
    assert answer.status == 413 and "2048 bytes" in answer.body["error"]["message"]
    assert post_json(server.scoring_uri, {"query": "fine"}).status == 200
