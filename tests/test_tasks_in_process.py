"""Task behaviour through the scoring service in-process (the same code run() calls)."""

from __future__ import annotations

import pytest

from mii_azure.config import ServingSettings
from mii_azure.errors import RequestTimeoutError
from mii_azure.runtime.engine import Engine
from mii_azure.runtime.service import ScoringService

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def gpt2(model_dirs) -> ScoringService:
    return ScoringService(Engine.load(model_dirs["gpt2"]))


def _generate(service, query, **parameters):
    return service.score({"query": query, "parameters": parameters})["responses"]


def test_batched_prompts_answer_as_they_would_alone(gpt2):
    prompts = ["hello world how are you today my friend", "the cat", "DeepSpeed is"]
    together = _generate(gpt2, prompts, max_new_tokens=8)
    alone = [_generate(gpt2, prompt, max_new_tokens=8)[0] for prompt in prompts]
    assert together == alone


def test_max_new_tokens_bounds_the_continuation(gpt2):
    (short,) = _generate(gpt2, "the cat", max_new_tokens=3)
    (longer,) = _generate(gpt2, "the cat", max_new_tokens=9)
    assert short["num_tokens"] <= 3 and longer["num_tokens"] <= 9
    assert longer["generated_text"].startswith(short["generated_text"])


def test_return_full_text_prepends_the_prompt(gpt2):
    (plain,) = _generate(gpt2, "the cat", max_new_tokens=4)
    (full,) = _generate(gpt2, "the cat", max_new_tokens=4, return_full_text=True)
    assert full["generated_text"] == "the cat" + plain["generated_text"]


def test_stop_sequence_cuts_the_text(gpt2):
    (plain,) = _generate(gpt2, "the cat", max_new_tokens=12)
    text = plain["generated_text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"need a visible stop sequence from {text!r}"
    (stopped,) = _generate(gpt2, "the cat", max_new_tokens=12, stop=[stop])
    assert stopped["generated_text"] == text[: text.find(stop)]
    assert stopped["num_tokens"] <= plain["num_tokens"]


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(gpt2):
    first = _generate(gpt2, ["the cat"] * 2, max_new_tokens=12, temperature=1.5, seed=11)
    again = _generate(gpt2, ["the cat"] * 2, max_new_tokens=12, temperature=1.5, seed=11)
    other = _generate(gpt2, ["the cat"] * 2, max_new_tokens=12, temperature=1.5, seed=12)
    greedy = _generate(gpt2, ["the cat"] * 2, max_new_tokens=12)
    assert first == again
    assert first != other or first != greedy


def test_timeout_is_504(model_dirs):
    engine = Engine.load(model_dirs["gpt2"], settings=ServingSettings(request_timeout_s=1e-4))
    service = ScoringService(engine)
    with pytest.raises(RequestTimeoutError, match="timeout"):
        service.score({"query": "the cat", "parameters": {"max_new_tokens": 50}})
    reply = service.handle_http("POST", lambda n: b'{"query": "the cat", "max_new_tokens": 50}', None)
    assert reply.status == 504 and reply.body["error"]["code"] == "timeout"


def test_unexpected_failure_is_500_without_stack_trace(gpt2, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("tensor shapes disagree")

    for call in ("prefill", "step"):  # continuous batching's model calls that take a new prompt
        monkeypatch.setattr(gpt2.engine.batcher.runner, call, explode)
    reply = gpt2.handle_http("POST", lambda n: b'{"query": "the cat"}', None)
    assert reply.status == 500
    assert reply.body == {"error": {"code": "internal_error", "message": "Scoring failed: RuntimeError: tensor shapes disagree"}}


def test_text2text_greedy_is_deterministic(model_dirs):
    service = ScoringService(Engine.load(model_dirs["t5"]))
    first = service.score({"query": ["hello world", "the cat"], "max_new_tokens": 5})
    assert first["responses"] == service.score({"query": ["hello world", "the cat"], "max_new_tokens": 5})["responses"]
    assert all(0 <= entry["num_tokens"] <= 5 for entry in first["responses"])


def test_question_answering_reads_long_contexts_in_windows(model_dirs):
    service = ScoringService(Engine.load(model_dirs["bert_question_answering"]))
    context = " ".join(["the cat sat on the mat"] * 60)  # ~360 tokens, past the model's 128 positions
    (entry,) = service.score({"query": {"question": "where?", "context": context}})["responses"]
    assert context[entry["start"] : entry["end"]] == entry["answer"]
    assert entry["answer"] and 0 < entry["score"] <= 1


def test_sentence_transformers_pooling_and_normalize_override(model_dirs):
    service = ScoringService(Engine.load(model_dirs["sentence_transformer"]))
    (configured,) = service.score({"query": "the cat"})["responses"]
    (raw,) = service.score({"query": "the cat", "parameters": {"normalize": False}})["responses"]
    norm = sum(x * x for x in configured["embedding"]) ** 0.5
    raw_norm = sum(x * x for x in raw["embedding"]) ** 0.5
    assert norm == pytest.approx(1.0, abs=1e-5)
    assert [x / raw_norm for x in raw["embedding"]] == pytest.approx(configured["embedding"], abs=1e-5)


def test_text_to_image_seed_reproducible(model_dirs):
    service = ScoringService(Engine.load(model_dirs["stable_diffusion"]))
    request = {"query": "a red circle", "parameters": {"num_inference_steps": 2, "seed": 5}}
    first = service.score(request)["responses"]
    assert first == service.score(request)["responses"]
    other = service.score({"query": "a red circle", "parameters": {"num_inference_steps": 2, "seed": 6}})["responses"]
    assert other != first
