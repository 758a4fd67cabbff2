"""Dynamic batching through the engine: concurrent callers, each gets exactly its own answer."""

from __future__ import annotations

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mii_azure.config import ServingSettings
from mii_azure.errors import RequestTimeoutError
from mii_azure.hardware import Hardware
from mii_azure.models import resolve_model
from mii_azure.planner import PlanOverrides, make_plan
from mii_azure.runtime.engine import Engine
from mii_azure.runtime.service import ScoringService
from mii_azure.tasks.base import Deadline, ScoringRequest

pytestmark = pytest.mark.serving

WORDS = "the cat sat on a mat while dogs ran past quickly and birds sang songs of summer in green trees".split()


def _fp32_engine(model_dir, **settings) -> Engine:
    """fp32 on purpose: greedy decoding must be exactly reproducible across batch compositions."""
    facts = resolve_model(model_dir)
    plan = make_plan(facts, Hardware.cpu(cores=2, ram_gb=16, bf16=False), overrides=PlanOverrides(max_batch_size=16))
    assert plan.dtype == "float32"
    return Engine.load(model_dir, settings=ServingSettings(**settings), plan=plan)


def _requests(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        prompts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        parameters = {"max_new_tokens": rng.choice([3, 6])}
        if index % 5 == 0:
            parameters["return_full_text"] = True
        if index % 7 == 0:
            parameters["repetition_penalty"] = 1.3
        requests.append({"query": prompts, "parameters": parameters})
    return requests


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "request-level"])
def test_64_concurrent_requests_each_get_their_own_answer(model_dirs, continuous):
    service = ScoringService(_fp32_engine(model_dirs["gpt2"], max_wait_ms=30, continuous_batching=continuous))
    assert service.engine.scheduling == ("continuous" if continuous else "request")
    requests = _requests(64)
    alone = [service.score(request)["responses"] for request in requests]
    stats = service.engine.batcher.stats
    before = stats.steps if continuous else stats.batches

    barrier = threading.Barrier(16)

    def call(request):
        try:
            barrier.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass
        return service.score(request)["responses"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(call, requests))

    assert len(together) == len(requests)
    for request, expected, got in zip(requests, alone, together):
        assert got == expected, request
    model_calls = (stats.steps if continuous else stats.batches) - before
    generated = sum(entry["num_tokens"] for answer in together for entry in answer)
    if continuous:
        assert model_calls < generated, "decode steps served several sequences at once"
    else:
        assert model_calls < len(requests), "concurrent requests were batched together"
    assert stats.largest_batch > 3
    assert service.engine.batcher.waiting == 0


def test_request_level_batches_never_mix_parameters(model_dirs):
    engine = _fp32_engine(model_dirs["gpt2"], max_wait_ms=50, continuous_batching=False)
    seen = []
    original = engine.task.predict

    def recording(inputs, parameters, deadline):
        seen.append((tuple(inputs), parameters))
        return original(inputs, parameters, deadline)

    engine.task.predict = recording
    task = type(engine.task)
    requests = [
        ScoringRequest([f"the cat {i}"], task.parse_parameters({"max_new_tokens": 2 + i % 2})) for i in range(8)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda r: engine.infer(r, Deadline(60)), requests))
    assert all(len(result) == 1 for result in results)
    for inputs, parameters in seen:
        expected = {r.inputs[0] for r in requests if r.parameters == parameters}
        assert set(inputs) <= expected
    assert sorted(i for inputs, _ in seen for i in inputs) == sorted(r.inputs[0] for r in requests)


def test_seeded_sampling_reproduces_whatever_it_is_batched_with(model_dirs):
    service = ScoringService(_fp32_engine(model_dirs["gpt2"], max_wait_ms=30))
    request = {"query": ["the cat"], "parameters": {"max_new_tokens": 8, "temperature": 1.3, "seed": 4}}
    alone = service.score(request)["responses"]
    noise = {"query": ["birds sang"], "parameters": {"max_new_tokens": 8, "temperature": 1.3, "seed": 4}}
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(service.score, request if i % 2 else noise) for i in range(6)]
        results = [future.result()["responses"] for future in futures]
    assert all(result == alone for i, result in enumerate(results) if i % 2)


def test_full_queue_is_503_with_retry_after_and_nothing_accepted_is_lost(model_dirs):
    engine = _fp32_engine(model_dirs["bert_classifier"], max_queue=2, max_wait_ms=0)
    service = ScoringService(engine)
    release = threading.Event()
    original = engine.task.predict

    def slow(inputs, parameters, deadline):
        release.wait(10)
        return original(inputs, parameters, deadline)

    engine.task.predict = slow
    with ThreadPoolExecutor(max_workers=2) as pool:
        accepted = [pool.submit(service.score, {"query": [f"text {i}"]}) for i in range(2)]
        while engine.batcher.waiting < 2:
            threading.Event().wait(0.01)
        reply = service.handle_http("POST", lambda n: b'{"query": "one too many"}', None)
        release.set()
        answers = [future.result(timeout=30) for future in accepted]
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert "queue is full" in reply.body["error"]["message"]
    assert [len(answer["responses"]) for answer in answers] == [1, 1]


def test_a_request_that_waits_past_its_deadline_is_504_and_skipped(model_dirs):
    engine = _fp32_engine(model_dirs["bert_classifier"], max_wait_ms=0)
    release = threading.Event()
    ran = []
    original = engine.task.predict

    def slow(inputs, parameters, deadline):
        ran.append(list(inputs))
        release.wait(10)
        return original(inputs, parameters, deadline)

    engine.task.predict = slow
    task = type(engine.task)
    parameters = task.parse_parameters({})
    with ThreadPoolExecutor(max_workers=1) as pool:
        blocker = pool.submit(engine.infer, ScoringRequest(["first"], parameters), Deadline(30))
        while not ran:
            threading.Event().wait(0.01)
        with pytest.raises(RequestTimeoutError):
            engine.infer(ScoringRequest(["late"], parameters), Deadline(0.2))
        release.set()
        assert len(blocker.result(timeout=30)) == 1
    engine.infer(ScoringRequest(["after"], parameters), Deadline(30))
    assert ["late"] not in ran, "a request that timed out before starting is not run"
    assert engine.batcher.waiting == 0


def test_a_failing_input_does_not_fail_its_batch_mates(model_dirs):
    service = ScoringService(_fp32_engine(model_dirs["bert_fill_mask"], max_wait_ms=50))
    good = {"query": "the [MASK] sat"}
    bad = {"query": "no mask"}
    bodies = [json.dumps(body).encode() for body in (good, bad, good, bad)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda body: service.handle_http("POST", lambda n: body, None), bodies))
    assert [reply.status for reply in replies] == [200, 400, 200, 400]


def test_requests_larger_than_the_batch_run_in_chunks(model_dirs):
    service = ScoringService(_fp32_engine(model_dirs["bert_classifier"], max_batch_size=4))
    texts = [f"text number {i}" for i in range(10)]
    together = service.score({"query": texts})["responses"]
    alone = [service.score({"query": text})["responses"][0] for text in texts]
    assert [[item["label"] for item in entry] for entry in together] == [[item["label"] for item in entry] for entry in alone]
    scores = lambda entries: [item["score"] for entry in entries for item in entry]  # noqa: E731
    assert scores(together) == pytest.approx(scores(alone), abs=1e-6)
    assert service.engine.batcher.stats.largest_batch == 4


def test_the_wait_for_company_adapts_to_how_long_batches_take(model_dirs):
    from mii_azure.runtime.batcher import WAIT_FRACTION, Batcher

    def run(inputs, parameters, deadline):
        __import__("time").sleep(0.2)
        return list(inputs)

    batcher = Batcher(run, check=lambda i, p: None, can_share=lambda p: True, max_batch_size=8, max_wait_ms=1000, max_queue=8)
    parameters = __import__("mii_azure.tasks.classification", fromlist=["x"]).TextClassificationParameters()
    assert batcher.wait_s == 0.0, "no batch has run yet: nothing to wait for"
    assert batcher.submit(["a"], parameters, Deadline(10)) == ["a"]
    assert batcher.wait_s == pytest.approx(WAIT_FRACTION * 0.2, rel=0.25)
    capped = Batcher(run, check=lambda i, p: None, can_share=lambda p: True, max_batch_size=8, max_wait_ms=2, max_queue=8)
    capped.submit(["a"], parameters, Deadline(10))
    assert capped.wait_s == pytest.approx(0.002)
    batcher.close()
    capped.close()
