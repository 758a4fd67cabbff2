"""Encoders on a GPU through the real engine: BERT fill-mask, BERT and RoBERTa feature-extraction and
BERT text-classification, with DeepSpeed kernel injection and CUDA graphs (and once without graphs).

For batches of 1x5, 3x17 and 8x60 tokens (the longest row; the others shorter, so rows are padded),
two different inputs A and B of the same shape are served alternately, A B A B, and every answer is
compared with the same task around the Hugging Face eager fp16 model: a replayed graph must never
return a previous call's result. Tolerances are explained in gpu_support.
"""

from __future__ import annotations

import math

import pytest
import torch

import gpu_support
from gpu_support import LAYERS, LOGITS_ATOL, TIE

pytestmark = gpu_support.GPU_MARKS

SHAPES = [(1, 5), (3, 17), (8, 60)]
#: (model, cuda_graph asked for)
CASES = [
    ("bert_fill_mask", True),
    ("bert_encoder", True),
    ("bert_encoder", False),
    ("roberta_encoder", True),
    ("bert_classifier", True),
]
#: Probabilities: each logit may be off by LOGITS_ATOL, so a probability by a factor up to exp(TIE).
PROBABILITY_RTOL = math.exp(TIE) - 1
PARAMETERS = {"fill-mask": {"top_k": 5}, "text-classification": {"top_k": 3}, "feature-extraction": {}}
#: The reference ranks more candidates, so that a near-tie across the engine's last rank is recognized.
REFERENCE_PARAMETERS = {**PARAMETERS, "fill-mask": {"top_k": 10}}


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= PROBABILITY_RTOL * abs(want) + 1e-4


def compare_ranked(got: list[dict], want: list[dict], key: str) -> str | None:
    """Scored candidates, best first: scores within tolerance at every rank; a different candidate at
    a rank only where the reference scores it within tolerance of the one it ranks there (a tie).
    ``want`` may rank more candidates than ``got``."""
    if len(got) > len(want) or not got:
        return f"{len(got)} candidates, the reference has {len(want)}"
    reference_scores = {entry[key]: entry["score"] for entry in want}
    for rank, (mine, theirs) in enumerate(zip(got, want)):
        if not _close(mine["score"], theirs["score"]):
            return f"rank {rank}: score {mine['score']:.5f} vs {theirs['score']:.5f} ({mine[key]!r} vs {theirs[key]!r})"
        if mine[key] != theirs[key]:
            tied = mine[key] in reference_scores and _close(reference_scores[mine[key]], theirs["score"])
            if not tied:
                return f"rank {rank}: {mine[key]!r} where the reference has {theirs[key]!r} (not a tie)"
    return None


def compare_answers(task_name: str, got: list, want: list) -> str | None:
    if len(got) != len(want):
        return f"{len(got)} answers for {len(want)} inputs"
    for index, (mine, theirs) in enumerate(zip(got, want)):
        if task_name == "feature-extraction":
            difference = max(abs(a - b) for a, b in zip(mine["embedding"], theirs["embedding"]))
            if len(mine["embedding"]) != len(theirs["embedding"]) or difference > LOGITS_ATOL:
                return f"input {index}: embedding differs by up to {difference:.4f} (tolerance {LOGITS_ATOL})"
        else:
            key = "token_str" if task_name == "fill-mask" else "label"
            problem = compare_ranked(mine, theirs, key)
            if problem:
                return f"input {index}: {problem}"
    return None


def main_output(output) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if value is not None:
            return value.float()
    raise AssertionError(f"no logits or last_hidden_state in {type(output).__name__}")


def masked_difference(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest difference over the real (unpadded) tokens, or over rows for per-sequence outputs."""
    difference = (got - want).abs()
    if difference.dim() == 3:
        difference = difference * mask[..., None].to(difference.dtype)
    return float(difference.max())


@pytest.mark.parametrize(("kind", "cuda_graph"), CASES, ids=[f"{kind}-graphs-{'on' if graph else 'off'}" for kind, graph in CASES])
def test_encoder_answers_like_hf_fp16_with_kernels_and_graphs(kind, cuda_graph, gpu_models, engines, inference_op, report):
    built, op_error = inference_op
    model_dir = gpu_models(kind)
    engine = engines(model_dir, dtype="float16", cuda_graph=cuda_graph)
    task = engine.task
    plan, applied = engine.plan, engine.applied
    assert plan.kernel_inject, f"the planner should inject kernels into {kind}: {plan.reasons.get('kernel_inject')}"
    assert plan.cuda_graph == cuda_graph, plan.reasons.get("cuda_graph")

    layers = gpu_support.injected_layers(gpu_support.unwrap(task.model))
    facts = {"plan": {"kernel_inject": plan.kernel_inject, "cuda_graph": plan.cuda_graph, "max_batch_size": plan.max_batch_size}}
    if applied.kernel_inject:
        assert len(layers) == LAYERS, (
            f"applied.kernel_inject is True but {len(layers)} of {LAYERS} layers are DeepSpeed's fused layers: injection "
            f"silently did nothing ({dict(gpu_support.deepspeed_module_types(gpu_support.unwrap(task.model)))})"
        )
    else:
        reasons = [fallback for fallback in applied.fallbacks if "kernel injection" in fallback]
        assert reasons, f"kernel injection was planned, is not applied, and no fallback says why: {applied}"
    if not built:
        facts["deepspeed_op"] = op_error

    reference = gpu_support.reference_task(engine, model_dir)
    parameters = task.parse_parameters(PARAMETERS[task.name])
    fill_mask = task.name == "fill-mask"
    problems: list[str] = []
    for batch, longest in SHAPES:
        lengths = gpu_support.batch_lengths(batch, longest, seed=batch)
        first = gpu_support.texts_of_lengths(task.tokenizer, lengths, seed=100 + batch, mask=fill_mask)
        second = gpu_support.texts_of_lengths(task.tokenizer, lengths, seed=200 + batch, mask=fill_mask)
        shape = f"{batch}x{longest}"
        reference_parameters = reference.parse_parameters(REFERENCE_PARAMETERS[task.name])
        expected = {
            "A": reference.predict(first, reference_parameters, gpu_support.deadline()),
            "B": reference.predict(second, reference_parameters, gpu_support.deadline()),
        }
        for call, name in enumerate("ABAB"):
            inputs = first if name == "A" else second
            try:
                answers = engine.infer(gpu_support.request(inputs, parameters), gpu_support.deadline())
            except Exception as exc:  # noqa: BLE001 - every call is checked and reported
                problems.append(f"{shape} call {call} ({name}) raised {type(exc).__name__}: {exc}")
                continue
            problem = compare_answers(task.name, answers, expected[name])
            if problem:
                problems.append(f"{shape} call {call} ({name}): {problem}")
        # The model itself: A's outputs must still be A's after B ran (graph outputs are copied out).
        try:
            encoded_first, encoded_second = task.encode(first), task.encode(second)
            with torch.inference_mode():
                out_first = main_output(task.model(**encoded_first))
                out_second = main_output(task.model(**encoded_second))
                want_first = main_output(reference.model(**encoded_first))
                want_second = main_output(reference.model(**encoded_second))
            for name, got, want, encoded in (
                ("A", out_first, want_first, encoded_first),
                ("B", out_second, want_second, encoded_second),
            ):
                difference = masked_difference(got, want, encoded["attention_mask"])
                facts[f"model_max_abs_diff_{shape}_{name}"] = round(difference, 5)
                if not difference <= LOGITS_ATOL:
                    problems.append(f"{shape} model output {name} differs from HF fp16 by up to {difference:.4f} (tolerance {LOGITS_ATOL})")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{shape} model call raised {type(exc).__name__}: {exc}")

    refresh = getattr(engine, "refresh_applied", None)
    applied = refresh() if callable(refresh) else engine.applied
    facts["applied"] = applied.model_dump()
    if applied.cuda_graph:
        graphed = task.model
        count = getattr(graphed, "graph_count", None)
        facts["graphs_captured"] = count
        assert type(graphed).__name__ == "GraphedModule" and getattr(graphed, "captures", False), (
            f"applied.cuda_graph is True but the task's model is a {type(graphed).__name__} that replays no graph"
        )
        # Buckets used: the warm-up's (1 row) and rows 1, 3 and 8 padded to 1, 4 and 8.
        assert count and count >= 3, f"applied.cuda_graph is True but only {count} graphs were captured"
    elif cuda_graph:
        reasons = [fallback for fallback in applied.fallbacks if "graph" in fallback.lower()]
        facts["cuda_graph"] = f"fell back: {reasons}"
        assert reasons, f"CUDA graphs were planned, are not in use, and no fallback says why: {applied}"
    report.add(f"{task.name} [{kind}, graphs {'on' if cuda_graph else 'off'}]", problems=problems, **facts)
    assert not problems, f"{kind} (applied {applied.model_dump()}):\n  " + "\n  ".join(problems)

