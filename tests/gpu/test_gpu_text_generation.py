"""Text generation on a GPU through the real engine: DeepSpeed kernel injection for GPT-2, OPT, LLaMA
(with and without grouped-query attention), BLOOM and GPT-J shapes; GPT-NeoX served without it, as
planned; and concurrent requests batched together answering as they would alone.

Each engine is ``Engine.load(model_dir, overrides=PlanOverrides(...))`` on this machine's GPU, warmed
up as a deployment is; references are the same task code around the Hugging Face eager fp16 model
loaded from the same folder. Tolerances are explained in gpu_support.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import gpu_support
import model_factory
from gpu_support import LAYERS, LOGITS_ATOL, PROMPTS, TIE, MORE_PROMPTS

pytestmark = gpu_support.GPU_MARKS

INJECTED_FAMILIES = ["gpt2", "opt", "llama", "llama_gqa", "bloom", "gptj"]
NEW_TOKENS = 12


def one_token_prompt(tokenizer) -> str:
    for word in ("Hello", "The", "Paris", "This", "the"):
        if len(tokenizer(word)["input_ids"]) == 1:
            return word
    raise AssertionError("the test tokenizer has no one-token word among the candidates")


@pytest.mark.parametrize("family", INJECTED_FAMILIES)
def test_kernel_injection_generates_what_hf_fp16_would(family, gpu_models, engines, inference_op, report):
    # The op is built once (or found unbuildable once) before the engine loads; if it cannot be built,
    # injection fails at once, the engine falls back, and the rest checks that fallback's answers.
    built, op_error = inference_op
    model_dir = gpu_models(family)
    engine = engines(model_dir, dtype="float16")
    plan, applied, task = engine.plan, engine.applied, engine.task
    assert plan.kernel_inject, f"the planner should inject kernels into {family}: {plan.reasons.get('kernel_inject')}"

    layers = gpu_support.injected_layers(task.model)
    facts = {
        "applied": applied.model_dump(),
        "injected_layers": len(layers),
        "deepspeed_modules": dict(gpu_support.deepspeed_module_types(task.model)),
    }
    if applied.kernel_inject:
        facts["kernel_injection"] = "applied"
        assert len(layers) == LAYERS, (
            f"applied.kernel_inject is True but {len(layers)} of {LAYERS} layers are DeepSpeed's fused layers: "
            f"injection silently did nothing ({facts['deepspeed_modules']})"
        )
    else:
        reasons = [fallback for fallback in applied.fallbacks if "kernel injection" in fallback]
        facts["kernel_injection"] = f"fell back: {reasons}" + ("" if built else f" (op not built: {op_error})")
        assert reasons, f"kernel injection was planned, is not applied, and no fallback says why: {applied}"
        assert not layers, f"kernel injection reported off but DeepSpeed layers are in the model: {facts['deepspeed_modules']}"

    reference = gpu_support.reference_task(engine, model_dir)
    problems: list[str] = []

    # 1. One forward pass (the prompt pass of generation), unpadded, at batch 1 then batch 2. The
    #    engine warmed up at batch 1; DeepSpeed sizes its KV-cache workspace at the first call.
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, len(task.tokenizer), (2, 24), generator=generator).to(task.device)
    for rows in (1, 2):
        try:
            with torch.inference_mode():
                mask = torch.ones_like(ids[:rows])
                got = task.model(input_ids=ids[:rows], attention_mask=mask).logits.float()
                want = reference.model(input_ids=ids[:rows], attention_mask=mask).logits.float()
            difference = float((got - want).abs().max())
            facts[f"forward_max_abs_logit_diff_batch{rows}"] = round(difference, 5)
            if not difference <= LOGITS_ATOL:
                hint = ""
                if rows > 1 and facts.get("forward_max_abs_logit_diff_batch1", 1.0) <= LOGITS_ATOL:
                    hint = (
                        " while batch 1 matches: DeepSpeed sizes its KV-cache workspace by the batch of the first call "
                        "(the engine's warm-up had 1 input) and does not grow it"
                    )
                problems.append(
                    f"forward pass at batch {rows}: logits differ from HF fp16 by up to {difference:.4f} (tolerance {LOGITS_ATOL}){hint}"
                )
        except Exception as exc:  # noqa: BLE001 - every step is checked and reported
            problems.append(f"forward pass at batch {rows} raised {type(exc).__name__}: {exc}")

    # 2. Greedy generation with the task's own generate call (what predict runs, here also returning
    #    each step's logits), in an order that exercises the KV cache: one prompt, four left-padded
    #    ones, a one-token prompt right after them (a fresh sequence that must not attend to the
    #    previous one), eight prompts. Every decode step's logits are compared with the reference's
    #    for the same prefix, unpadded and in one pass (teacher forcing), so a stale or misaligned
    #    cache shows even where the greedy token happens to survive it.
    parameters = task.parse_parameters({"max_new_tokens": NEW_TOKENS})
    eos = task.end_of_text_ids()
    steps = [
        ("1 prompt", PROMPTS[:1]),
        ("4 left-padded prompts", PROMPTS),
        ("a one-token prompt after them", [one_token_prompt(task.tokenizer)]),
        ("8 prompts", MORE_PROMPTS),
    ]
    hints = {
        "a one-token prompt after them": (
            " [DeepSpeed's kernels take a one-token input for the next step of the previous sequence unless its "
            "KV cache is reset first: InferenceEngine.generate calls reset_cache(), the task calls the module's generate]"
        ),
    }
    agreeing, compared, worst = 0, 0, 0.0
    served_texts = None
    for label, prompts in steps:
        try:
            rows, step_logits = gpu_support.generate_with_logits(task, prompts, parameters)
            ref_input_ids, ref_output = reference.run_generate(prompts, parameters, gpu_support.deadline())
        except Exception as exc:  # noqa: BLE001
            problems.append(f"generation ({label}) raised {type(exc).__name__}: {exc}")
            continue
        if prompts is PROMPTS:
            served_texts = [text for text, _ in task.decode(torch.tensor(rows), parameters)]
        for index, (prompt, row, ref_row) in enumerate(zip(prompts, rows, ref_output[:, ref_input_ids.shape[1] :].tolist())):
            tokens, ref_tokens = gpu_support.cut_at_eos(row, eos), gpu_support.cut_at_eos(ref_row, eos)
            if not tokens:
                problems.append(f"generation ({label}): no token for {prompt!r}")
                continue
            expected = gpu_support.reference_logits(reference, prompt, tokens)
            differences = (step_logits[index, : len(tokens)] - expected).abs().amax(dim=1)
            worst = max(worst, float(differences.max()))
            if not float(differences.max()) <= LOGITS_ATOL:
                step = int((differences > LOGITS_ATOL).nonzero()[0])
                problems.append(
                    f"generation ({label}): for {prompt!r} the logits of new token {step} differ from HF fp16's after the "
                    f"same prefix by {float(differences[step]):.4f} (tolerance {LOGITS_ATOL}; steps: "
                    f"{[round(float(d), 3) for d in differences]}); engine {tokens}, HF fp16 {ref_tokens}{hints.get(label, '')}"
                )
            gap, where = gpu_support.greedy_gap(reference, prompt, tokens)
            if gap > TIE:
                problems.append(
                    f"generation ({label}): for {prompt!r} new token {where} ({tokens[where]}) scores {gap:.3f} below the "
                    f"reference's best choice after the same prefix (tolerance {TIE}); engine {tokens}, HF fp16 {ref_tokens}"
                )
            same = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), min(len(tokens), len(ref_tokens)))
            agreeing += same
            compared += max(len(tokens), len(ref_tokens))
    facts["decode_max_abs_logit_diff"] = round(worst, 5)
    # Reported, not asserted: near-uniform random logits make exact agreement a matter of ties.
    facts["greedy_prefix_agreement_with_hf_fp16"] = f"{agreeing}/{compared}"

    # 3. Served through the batcher: the same four prompts give the texts generated above.
    try:
        answers = engine.infer(gpu_support.request(PROMPTS, parameters), gpu_support.deadline())
        texts = [answer["generated_text"] for answer in answers]
        if served_texts is not None and texts != served_texts:
            problems.append(f"engine.infer answered {texts}, the same generate call gave {served_texts}")
        if any(answer["num_tokens"] < 1 for answer in answers):
            problems.append(f"engine.infer answered without new tokens: {answers}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"engine.infer raised {type(exc).__name__}: {exc}")

    report.add(f"text-generation kernel injection [{family}]", problems=problems, **facts)
    assert not problems, f"{family} ({facts['kernel_injection']}):\n  " + "\n  ".join(problems)


def test_a_prompt_longer_than_deepspeeds_default_workspace_is_answered_right(gpu_models, engines, inference_op, report):
    """A 2048-position model, planned for prompts up to 1792 tokens: a 1100-token prompt must work.
    DeepSpeed's injected layers keep each sequence's KV cache in a workspace sized for
    ``max_out_tokens`` tokens (1024 unless init_inference is told otherwise), and only its own
    InferenceEngine.generate checks the length; the task calls the module's generate directly."""
    model_dir = gpu_models("gpt2_2k")
    engine = engines(model_dir, dtype="float16")
    task = engine.task
    plan = engine.plan
    prompt = gpu_support.text_of_tokens(task.tokenizer, 1100)
    assert plan.max_input_tokens >= 1100, f"the plan accepts prompts of {plan.max_input_tokens} tokens only"
    reference = gpu_support.reference_task(engine, model_dir)
    parameters = task.parse_parameters({"max_new_tokens": 8})
    facts = {"applied": engine.applied.model_dump(), "plan_tokens": plan.max_input_tokens + plan.max_new_tokens}
    problems = []
    try:
        rows, step_logits = gpu_support.generate_with_logits(task, [prompt], parameters)
        tokens = gpu_support.cut_at_eos(rows[0], task.end_of_text_ids())
        expected = gpu_support.reference_logits(reference, prompt, tokens)
        differences = (step_logits[0, : len(tokens)] - expected).abs().amax(dim=1)
        facts["decode_max_abs_logit_diff"] = round(float(differences.max()), 5)
        if not float(differences.max()) <= LOGITS_ATOL:
            problems.append(
                f"the logits of the {len(tokens)} new tokens after a 1100-token prompt differ from HF fp16's by "
                f"{[round(float(d), 3) for d in differences]} (tolerance {LOGITS_ATOL}); DeepSpeed's workspace holds "
                "max_out_tokens (default 1024) tokens a sequence: init_inference needs max_tokens >= the plan's "
                "max_input_tokens + max_new_tokens"
            )
        answers = engine.infer(gpu_support.request([prompt], parameters), gpu_support.deadline())
        if answers[0]["num_tokens"] < 1:
            problems.append(f"no new token: {answers}")
    except Exception as exc:  # noqa: BLE001 - reported with the facts
        problems.append(f"raised {type(exc).__name__}: {exc}")
    report.add("text-generation 1100-token prompt [gpt2, 2048 positions]", problems=problems, **facts)
    assert not problems, "\n".join(problems)


def test_gpt_neox_is_planned_without_injection_and_still_serves(gpu_models, engines, report):
    from mii_azure.planner import BROKEN_INJECTION

    model_dir = gpu_models("gpt_neox")
    engine = engines(model_dir, dtype="float16")
    reason = engine.plan.reasons.get("kernel_inject", "")
    assert not engine.plan.kernel_inject and BROKEN_INJECTION["gpt_neox"] in reason, reason
    assert not engine.applied.kernel_inject and engine.applied.deepspeed, engine.applied
    assert not gpu_support.injected_layers(engine.task.model)

    reference = gpu_support.reference_task(engine, model_dir)
    parameters = engine.task.parse_parameters({"max_new_tokens": NEW_TOKENS})
    eos = engine.task.end_of_text_ids()
    with gpu_support.recorded_generations(engine.task) as served, gpu_support.recorded_generations(reference) as expected:
        answers = engine.infer(gpu_support.request(PROMPTS, parameters), gpu_support.deadline())
        reference_answers = reference.predict(PROMPTS, parameters, gpu_support.deadline())
    served_ids = gpu_support.new_tokens_by_prompt(served, eos)
    expected_ids = gpu_support.new_tokens_by_prompt(expected, eos)
    # The same Hugging Face layers run on both sides (DeepSpeed only wraps the model), so the answers
    # should be identical; a difference is accepted only at a numerical tie.
    problems = [
        f"{prompt!r}: {mismatch}"
        for prompt in PROMPTS
        if (mismatch := gpu_support.tie_or_mismatch(reference, prompt, served_ids[prompt], expected_ids[prompt]))
    ]
    identical = served_ids == expected_ids
    if identical and answers != reference_answers:
        problems.append(f"same tokens but different answers: {answers} vs {reference_answers}")
    report.add(
        "text-generation gpt_neox (no injection)",
        plan_reason=reason,
        applied=engine.applied.model_dump(),
        identical_to_hf_fp16=identical,
        problems=problems,
    )
    assert not problems, "\n".join(problems)


def test_concurrent_requests_are_batched_and_each_answers_as_alone(gpu_models, engines, inference_op, report):
    model_dir = gpu_models("gpt2")
    engine = engines(model_dir, dtype="float16")
    task = engine.task
    prompts = list(model_factory.CORPUS[:16])
    parameters = task.parse_parameters({"max_new_tokens": 8})
    eos = task.end_of_text_ids()

    with gpu_support.recorded_generations(task) as solo_records:
        alone = {prompt: engine.infer(gpu_support.request([prompt], parameters), gpu_support.deadline())[0] for prompt in prompts}
    barrier = threading.Barrier(len(prompts))

    def ask(prompt: str):
        barrier.wait(timeout=60)
        return engine.infer(gpu_support.request([prompt], parameters), gpu_support.deadline())[0]

    with gpu_support.recorded_generations(task) as batched_records:
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            together = dict(zip(prompts, pool.map(ask, prompts)))

    sizes = sorted((len(inputs) for inputs, _ in batched_records), reverse=True)
    assert sizes and sizes[0] > 1, f"the batcher ran the {len(prompts)} concurrent requests one at a time: batches {sizes}"
    assert sum(sizes) == len(prompts), f"batches {sizes} do not hold the {len(prompts)} requests once each"

    alone_ids = gpu_support.new_tokens_by_prompt(solo_records, eos)
    together_ids = gpu_support.new_tokens_by_prompt(batched_records, eos)
    reference = gpu_support.reference_task(engine, model_dir)
    problems, ties = [], 0
    for prompt in prompts:
        if together[prompt]["num_tokens"] < 1:
            problems.append(f"{prompt!r}: no new token in a batch")
        mismatch = gpu_support.tie_or_mismatch(reference, prompt, alone_ids[prompt], together_ids[prompt])
        if mismatch:
            problems.append(f"{prompt!r}: batched vs alone: {mismatch}")
        elif alone_ids[prompt] != together_ids[prompt]:
            ties += 1
        elif together[prompt] != alone[prompt]:
            problems.append(f"{prompt!r}: same tokens, different answers {together[prompt]} vs {alone[prompt]}")
    report.add(
        "batching 16 concurrent requests [gpt2]",
        applied=engine.applied.model_dump(),
        batch_sizes=sizes,
        answers_differing_only_at_a_tie=ties,
        problems=problems,
    )
    assert not problems, "\n".join(problems)
