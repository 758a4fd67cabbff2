"""Continuous batching: sequences join and leave between decode steps, each with its own settings.

fp32 throughout, so that greedy answers are exactly reproducible whatever a sequence is batched with.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mii_azure.config import ServingSettings
from mii_azure.errors import BadRequestError, RequestTimeoutError, ScoringError, ServiceUnavailableError
from mii_azure.hardware import Hardware
from mii_azure.models import resolve_model
from mii_azure.planner import PlanOverrides, make_plan
from mii_azure.runtime.engine import Engine
from mii_azure.runtime.generation import StreamEnd, TextPiece
from mii_azure.runtime.generation.text import SequenceText
from mii_azure.tasks.base import Deadline, ScoringRequest

pytestmark = pytest.mark.serving

WORDS = "the cat sat on a mat while dogs ran past quickly and birds sang songs of summer in green trees".split()


def _engine(model_dir, **settings) -> Engine:
    plan = make_plan(resolve_model(model_dir), Hardware.cpu(cores=2, ram_gb=16, bf16=False), overrides=PlanOverrides(max_batch_size=8))
    return Engine.load(model_dir, settings=ServingSettings(**settings), plan=plan)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """The tiny GPT-2 with room for long generations (256 positions)."""
    from model_factory import build_gpt2

    return build_gpt2(tmp_path_factory.mktemp("continuous") / "gpt2", n_positions=256)


@pytest.fixture(scope="module")
def continuous(gpt2_dir) -> Engine:
    engine = _engine(gpt2_dir)
    assert engine.scheduling == "continuous", engine.scheduling_reason
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def request_level(gpt2_dir) -> Engine:
    engine = _engine(gpt2_dir, continuous_batching=False)
    assert engine.scheduling == "request"
    yield engine
    engine.close()


def _request(engine: Engine, prompt, **parameters) -> ScoringRequest:
    inputs = [prompt] if isinstance(prompt, str) else list(prompt)
    return ScoringRequest(inputs, type(engine.task).parse_parameters(parameters))


def _mixed_workload(count: int, seed: int = 0) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    work = []
    for index in range(count):
        parameters: dict = {"max_new_tokens": rng.choice([2, 5, 9, 16])}
        if index % 4 == 1:
            parameters["repetition_penalty"] = 1.4
        if index % 5 == 2:
            parameters["return_full_text"] = True
        work.append((" ".join(rng.choices(WORDS, k=rng.randint(1, 14))), parameters))
    return work


def test_a_mixed_greedy_workload_answers_as_each_request_would_alone(continuous, request_level):
    work = _mixed_workload(40)
    alone = [request_level.infer(_request(request_level, prompt, **parameters), Deadline(60)) for prompt, parameters in work]
    steps_before = continuous.batcher.stats.steps
    with ThreadPoolExecutor(max_workers=12) as pool:
        together = list(pool.map(lambda item: continuous.infer(_request(continuous, item[0], **item[1]), Deadline(60)), work))
    for item, expected, got in zip(work, alone, together):
        assert got == expected, item
    generated = sum(entry["num_tokens"] for answer in together for entry in answer)
    assert continuous.batcher.stats.steps - steps_before < generated, "decode steps served several sequences at once"
    assert continuous.batcher.stats.largest_batch > 1
    assert continuous.batcher.waiting == 0


def test_with_prefill_in_passes_of_its_own_the_workload_answers_the_same(gpt2_dir, request_level):
    engine = _engine(gpt2_dir)
    engine.batcher.runner.fuses_prefill = False  # the path of families whose attention cannot be packed
    try:
        work = _mixed_workload(16, seed=1)
        alone = [request_level.infer(_request(request_level, prompt, **parameters), Deadline(60)) for prompt, parameters in work]
        prefills = engine.batcher.stats.prefills
        with ThreadPoolExecutor(max_workers=8) as pool:
            together = list(pool.map(lambda item: engine.infer(_request(engine, item[0], **item[1]), Deadline(60)), work))
        assert together == alone
        assert engine.batcher.stats.prefills > prefills
    finally:
        engine.close()


def test_a_fused_step_gives_the_logits_of_separate_passes(continuous):
    """Rows join (one prompt longer than the batch's columns), decode, leave and join again: every
    step's logits from fused passes equal those of separate prefill and decode passes."""
    from mii_azure.runtime.generation.batch_cache import BatchCache

    runner = continuous.batcher.runner
    assert runner.fuses_prefill, continuous.scheduling_reason
    assert "prefilled in the decode step's own pass" in continuous.scheduling_reason
    encode = continuous.task.prompt_tokens
    first, second, long, last = (encode(text) for text in ("the cat", "a dog sat", " ".join(WORDS[:12]), "birds"))
    separate, fused = BatchCache(), BatchCache()
    steps = []

    logits, state = runner.prefill([first, second])
    separate.join(state, [0, 1])
    steps.append((logits, runner.step(fused, [], [first, second])[1]))
    for token in (5, 6):
        steps.append((runner.decode(separate, [token, token + 1]), runner.step(fused, [token, token + 1], [])[0]))
    decoded = runner.decode(separate, [7, 8])
    joined, state = runner.prefill([long])
    separate.join(state, [0])
    fused_decoded, fused_joined = runner.step(fused, [7, 8], [long])
    steps += [(decoded, fused_decoded), (joined, fused_joined)]
    for batch in (separate, fused):
        assert batch.keep([0, 2]) == [0, 2]
    decoded = runner.decode(separate, [9, 10])
    joined, state = runner.prefill([last])
    separate.join(state, [0])
    fused_decoded, fused_joined = runner.step(fused, [9, 10], [last])
    steps += [(decoded, fused_decoded), (joined, fused_joined)]
    steps.append((runner.decode(separate, [11, 12, 13]), runner.step(fused, [11, 12, 13], [])[0]))
    for index, (expected, got) in enumerate(steps):
        assert got.shape == expected.shape, index
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (index, float((got - expected).abs().max()))


def test_a_fused_step_at_the_end_of_the_buffer_moves_the_rows_before_a_long_prompt_joins(continuous):
    """The rows' columns reach the end of the cache buffer, with unused columns at its start (the
    longest row left): the joining prompt, longer than the columns left after the move, still lands
    whole and every row's next logits equal those of separate passes."""
    from mii_azure.runtime.generation.batch_cache import BatchCache

    runner = continuous.batcher.runner
    encode = continuous.task.prompt_tokens
    first, second = encode(" ".join(WORDS[:8])), encode("the")
    separate, fused = BatchCache(), BatchCache()
    _, state = runner.prefill([first, second])
    separate.join(state, [0, 1])
    runner.step(fused, [], [first, second])
    capacity = 64  # the buffers' first width
    for step in range(capacity - len(first)):
        expected, got = runner.decode(separate, [3, 4]), runner.step(fused, [3, 4], [])[0]
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    for batch in (separate, fused):
        batch.keep([1])  # the longer row leaves: the columns before the short one's are unused
    assert fused.start > 0 and fused.end == capacity
    # Longer than the columns the rows will end at once moved left, yet short enough for the
    # columns before the next one as they are now.
    joining = encode(" ".join(WORDS * 4))[: capacity - fused.start + 2]
    assert capacity - fused.start < len(joining) <= capacity + 1
    expected = runner.decode(separate, [5])
    joined, state = runner.prefill([joining])
    separate.join(state, [0])
    got, fused_joined = runner.step(fused, [5], [joining])
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(fused_joined, joined, atol=1e-4, rtol=1e-4)
    expected, got = runner.decode(separate, [6, 7]), runner.step(fused, [6, 7], [])[0]
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


_BATCH_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.lists(st.integers(1, 70), min_size=1, max_size=3)),
        st.tuples(st.just("decode"), st.integers(1, 40)),
        st.tuples(st.just("leave"), st.integers(0, 7)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=_BATCH_EVENTS)
def test_fused_steps_give_the_logits_of_separate_passes_whatever_joins_and_leaves(continuous, events):
    """Rows join (prompts of 1 to 70 tokens), decode and leave in any order, across the buffers'
    growth and moves: the fused steps' logits equal the separate passes' at every step."""
    from mii_azure.runtime.generation.batch_cache import BatchCache

    runner = continuous.batcher.runner
    separate, fused = BatchCache(), BatchCache()
    lengths: list[int] = []  # each running row's tokens so far
    token = 0

    def next_tokens(count: int) -> list[int]:
        nonlocal token
        token += count
        return [(token + row) % 50 + 1 for row in range(count)]

    for kind, value in events:
        if kind == "leave":
            if lengths:
                keep = [row for row in range(len(lengths)) if row != value % len(lengths)]
                assert separate.keep(keep) == fused.keep(keep)
                lengths = [lengths[row] for row in separate_order(keep, len(lengths))]
            continue
        steps = [()] * value if kind == "decode" else [tuple(value)]
        for joining in steps:
            if max(lengths + [0]) + 1 + len(joining) > 250 or max(list(joining) + [0]) + 1 > 250:
                break
            prompts = [next_tokens(length) for length in joining]
            if len(lengths) + len(prompts) > 8:
                prompts = prompts[: 8 - len(lengths)]
            if not lengths and not prompts:
                break  # nothing to run (the scheduler makes no such step)
            tokens = next_tokens(len(lengths))
            expected = runner.decode(separate, tokens) if lengths else None
            got, got_prompts = runner.step(fused, tokens, prompts)
            if expected is not None:
                assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
            for prompt, got_prompt in zip(prompts, got_prompts):
                joined, state = runner.prefill([prompt])
                separate.join(state, [0])
                assert torch.allclose(got_prompt, joined[0], atol=1e-4, rtol=1e-4)
            lengths = [length + 1 for length in lengths] + [len(prompt) for prompt in prompts]
            assert separate.rows == fused.rows == len(lengths)


def separate_order(keep: list[int], rows: int) -> list[int]:
    """The old row index in each slot after ``BatchCache.keep(keep)`` (the last row fills a gap)."""
    order = list(range(rows))
    slot = 0
    while slot < len(order):
        if order[slot] in keep:
            slot += 1
            continue
        if slot != len(order) - 1:
            order[slot] = order[-1]
        order.pop()
    return order


def test_a_short_request_finishes_while_a_long_one_keeps_decoding(continuous):
    finished: dict[str, float] = {}

    def run(name, prompt, tokens):
        continuous.infer(_request(continuous, prompt, max_new_tokens=tokens), Deadline(60))
        finished[name] = time.perf_counter()

    long = threading.Thread(target=run, args=("long", "the cat sat", 120))
    long.start()
    while continuous.batcher.stats.steps == 0 or continuous.batcher.waiting == 0:
        time.sleep(0.001)
    run("short", "birds sang", 3)
    long.join(60)
    assert finished["short"] < finished["long"], "the short request did not wait for the long one to end"


def test_seeded_sampling_gives_the_same_text_whatever_it_is_batched_with(continuous):
    seeded = {"max_new_tokens": 12, "temperature": 1.3, "top_k": 20, "top_p": 0.9, "seed": 7}
    alone = continuous.infer(_request(continuous, "the cat", **seeded), Deadline(60))
    noise = [("dogs ran past", {"max_new_tokens": 10, "temperature": 0.8}), ("green trees", {"max_new_tokens": 6}),
             ("birds sang", {"max_new_tokens": 14, "temperature": 1.7, "seed": 3})]

    def call(index):
        if index % 2:
            return continuous.infer(_request(continuous, "the cat", **seeded), Deadline(60))
        prompt, parameters = noise[index % len(noise)]
        return continuous.infer(_request(continuous, prompt, **parameters), Deadline(60))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(8)))
    assert all(result == alone for index, result in enumerate(results) if index % 2)
    other_seed = continuous.infer(_request(continuous, "the cat", **{**seeded, "seed": 8}), Deadline(60))
    assert other_seed != alone, "the seed decides the draw"


def test_streamed_pieces_put_together_are_the_answer(continuous):
    for prompt, parameters in _mixed_workload(6, seed=3) + [("the cat sat", {"max_new_tokens": 16, "stop": [" a"]})]:
        (expected,) = continuous.infer(_request(continuous, prompt, **parameters), Deadline(60))
        events = list(continuous.stream(_request(continuous, prompt, **parameters), Deadline(60)))
        pieces = [event.text for event in events if isinstance(event, TextPiece)]
        assert isinstance(events[-1], StreamEnd) and events[-1].entry == expected
        text = expected["generated_text"]
        assert "".join(pieces) == (text[len(prompt):] if parameters.get("return_full_text") else text)
        assert all(pieces)
        if expected["num_tokens"] > 2 and not parameters.get("stop"):
            assert len(pieces) > 1, "pieces arrive as they are made"


def test_a_stream_never_shows_a_stop_sequence_or_half_a_character(gpt2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    wanted = "café ☕ is nice. END and more"
    tokens = tokenizer(wanted)["input_ids"]
    tracker = SequenceText(tokenizer, end_of_text={tokenizer.eos_token_id}, stops=[". END"])
    pieces = []
    for token in tokens:
        tracker.add(token)
        pieces.append(tracker.release())
        if tracker.finished:
            break
    pieces.append(tracker.finish())
    assert "".join(pieces) == tracker.text == "café ☕ is nice"
    assert not any("\ufffd" in piece for piece in pieces)
    assert tracker.num_tokens < len(tokens), "generation stopped at the stop sequence"


def test_a_small_kv_cache_makes_sequences_wait_their_turn_and_all_are_answered(gpt2_dir, request_level):
    engine = _engine(gpt2_dir, kv_cache_tokens=64)
    try:
        work = [(f"the cat {WORDS[i]}", {"max_new_tokens": 20}) for i in range(6)]
        alone = [request_level.infer(_request(request_level, p, **k), Deadline(60)) for p, k in work]
        with ThreadPoolExecutor(max_workers=6) as pool:
            together = list(pool.map(lambda item: engine.infer(_request(engine, item[0], **item[1]), Deadline(60)), work))
        assert together == alone
        assert engine.batcher.stats.waited_for_cache > 0
        assert engine.batcher.stats.largest_batch <= 64 // 24
        with pytest.raises(BadRequestError, match="KV cache"):
            engine.infer(_request(engine, "the cat", max_new_tokens=70), Deadline(60))
    finally:
        engine.close()


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(gpt2_dir, request_level):
    engine = _engine(gpt2_dir, prefill_chunk_tokens=16)
    try:
        long_prompt = " ".join(WORDS * 3)
        assert len(engine.task.prompt_tokens(long_prompt)) > 40
        expected = request_level.infer(_request(request_level, long_prompt, max_new_tokens=5), Deadline(60))
        prefills = engine.batcher.stats.prefills
        assert engine.infer(_request(engine, long_prompt, max_new_tokens=5), Deadline(60)) == expected
        assert engine.batcher.stats.prefills - prefills >= 3, "the prompt ran in chunks of 16 tokens"
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(engine.infer, _request(engine, long_prompt, max_new_tokens=5), Deadline(60)),
                       pool.submit(engine.infer, _request(engine, "the cat", max_new_tokens=12), Deadline(60))]
            assert futures[0].result() == expected
            assert futures[1].result() == request_level.infer(_request(request_level, "the cat", max_new_tokens=12), Deadline(60))
    finally:
        engine.close()


def test_closing_a_stream_frees_its_slot_at_the_next_step(continuous):
    stream = continuous.stream(_request(continuous, "the cat", max_new_tokens=200), Deadline(60))
    first = next(stream)
    assert isinstance(first, TextPiece)
    cancelled = continuous.batcher.stats.cancelled
    stream.close()
    deadline = time.monotonic() + 10
    while continuous.batcher.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert continuous.batcher.waiting == 0
    assert continuous.batcher.stats.cancelled == cancelled + 1

    never_read = continuous.stream(_request(continuous, "the cat", max_new_tokens=200), Deadline(60))
    never_read.close()
    deadline = time.monotonic() + 10
    while continuous.batcher.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert continuous.batcher.waiting == 0, "a stream closed before its first event is given up too"
    assert continuous.batcher.stats.cancelled == cancelled + 2
    assert continuous.infer(_request(continuous, "the cat", max_new_tokens=2), Deadline(60))[0]["num_tokens"] == 2


def test_a_request_past_its_deadline_is_504_and_leaves_the_batch(continuous):
    with pytest.raises(RequestTimeoutError, match="timeout"):
        continuous.infer(_request(continuous, "the cat", max_new_tokens=250), Deadline(0.05))
    with pytest.raises(RequestTimeoutError):
        list(continuous.stream(_request(continuous, "the cat", max_new_tokens=250), Deadline(0.05)))
    deadline = time.monotonic() + 10
    while continuous.batcher.waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert continuous.batcher.waiting == 0


def test_a_full_queue_is_503_and_a_failing_model_call_fails_only_its_requests(gpt2_dir, monkeypatch):
    engine = _engine(gpt2_dir, max_queue=2)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            accepted = [pool.submit(engine.infer, _request(engine, "the cat", max_new_tokens=60), Deadline(60)) for _ in range(2)]
            while engine.batcher.waiting < 2:
                time.sleep(0.001)
            with pytest.raises(ServiceUnavailableError, match="queue is full") as refused:
                engine.infer(_request(engine, "one too many"), Deadline(60))
            assert refused.value.retry_after == 1
            assert [answer.result(timeout=60)[0]["num_tokens"] for answer in accepted] == [60, 60]

        calls = []
        runner = engine.batcher.runner
        prefill = "step" if runner.fuses_prefill else "prefill"  # the pass that takes a joining prompt
        original = getattr(runner, prefill)

        def fail_once(*args):
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("tensor shapes disagree")
            return original(*args)

        monkeypatch.setattr(runner, prefill, fail_once)
        with pytest.raises(ScoringError, match="Scoring failed: RuntimeError: tensor shapes disagree"):
            engine.infer(_request(engine, "the cat"), Deadline(60))
        assert engine.infer(_request(engine, "the cat", max_new_tokens=3), Deadline(60))[0]["num_tokens"] == 3
    finally:
        engine.close()


def test_close_answers_what_was_accepted(gpt2_dir):
    engine = _engine(gpt2_dir)
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = [pool.submit(engine.infer, _request(engine, f"the cat {i}", max_new_tokens=20), Deadline(60)) for i in range(3)]
        while engine.batcher.waiting < 3:
            time.sleep(0.001)
        engine.close()
        assert [answer.result(timeout=60)[0]["num_tokens"] for answer in answers] == [20, 20, 20]
    with pytest.raises(ServiceUnavailableError, match="shutting down"):
        engine.infer(_request(engine, "the cat"), Deadline(5))


def test_scheduling_says_why_when_generation_batches_whole_requests(model_dirs):
    engine = _engine(model_dirs["t5"])
    try:
        assert engine.scheduling == "request"
        assert "text2text-generation" in engine.scheduling_reason
    finally:
        engine.close()


def test_an_input_that_encodes_to_no_tokens_is_a_400(continuous, monkeypatch):
    monkeypatch.setattr(continuous.batcher, "_encode", lambda text: [])  # a tokenizer that drops everything
    with pytest.raises(BadRequestError, match="encodes to no tokens"):
        continuous.infer(_request(continuous, "the cat"), Deadline(60))
    assert continuous.batcher.waiting == 0
