"""The engine applies its plan on CPU, and the optimized outputs match the unoptimized model."""

from __future__ import annotations

import pytest
import torch

from mii_azure.config import ServingSettings
from mii_azure.errors import ConfigError
from mii_azure.hardware import Hardware
from mii_azure.models import resolve_model
from mii_azure.planner import PlanOverrides, make_plan
from mii_azure.runtime.engine import Engine
from mii_azure.runtime.service import ScoringService
from mii_azure.tasks.base import Deadline, ScoringRequest

pytestmark = pytest.mark.serving

BF16_CPU = Hardware.cpu(cores=2, ram_gb=16, bf16=True)
FP32_CPU = Hardware.cpu(cores=2, ram_gb=16, bf16=False)
PROMPTS = ["the cat sat on the mat", "DeepSpeed is", "a b c"]


def _engine(model_dir, hardware, **overrides) -> Engine:
    plan = make_plan(resolve_model(model_dir), hardware, overrides=PlanOverrides(**overrides))
    return Engine.load(model_dir, plan=plan)


def test_fp32_greedy_generation_equals_plain_transformers(model_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = _engine(model_dirs["gpt2"], FP32_CPU)
    assert (engine.plan.dtype, engine.applied.dtype, engine.applied.deepspeed) == ("float32", "float32", False)
    served = ScoringService(engine).score({"query": PROMPTS, "parameters": {"max_new_tokens": 10}})["responses"]
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["gpt2"])
    model = AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"], dtype=torch.float32).eval()
    for prompt, entry in zip(PROMPTS, served):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        new = output[0, ids["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        assert entry == {"generated_text": tokenizer.decode(new, skip_special_tokens=True), "num_tokens": len(new)}


def test_bf16_plan_is_applied_and_stays_close_to_fp32(model_dirs):
    """bf16 keeps 8 bits of mantissa: relative error about 2^-8 per operation. Through two tiny layers
    the next-token log-probabilities stay within 0.05 of fp32, and the most likely token agrees."""
    engine = _engine(model_dirs["gpt2"], BF16_CPU)
    assert engine.plan.dtype == engine.applied.dtype == "bfloat16"
    assert next(engine.task.model.parameters()).dtype == torch.bfloat16
    reference = _engine(model_dirs["gpt2"], FP32_CPU)
    encoded = reference.task.encode(PROMPTS)
    with torch.no_grad():
        fast = engine.task.model(**encoded).logits[:, -1].float().log_softmax(-1)
        exact = reference.task.model(**encoded).logits[:, -1].float().log_softmax(-1)
    assert (fast - exact).abs().max() < 0.05
    assert torch.equal(fast.argmax(-1), exact.argmax(-1))


def test_int8_plan_quantizes_linear_layers_and_stays_close(model_dirs):
    """Dynamic int8 rounds weights to 1/255 of each tensor's range; on these small random layers the
    class probabilities move by far less than 0.02."""
    engine = _engine(model_dirs["bert_classifier"], FP32_CPU, quantization="int8")
    assert engine.applied.quantization == "int8"
    assert any("quantized" in type(module).__module__ for module in engine.task.model.modules())
    reference = _engine(model_dirs["bert_classifier"], FP32_CPU)
    request = {"query": PROMPTS, "parameters": {"top_k": 3}}
    fast = ScoringService(engine).score(request)["responses"]
    exact = ScoringService(reference).score(request)["responses"]
    for fast_entry, exact_entry in zip(fast, exact):
        fast_scores = {item["label"]: item["score"] for item in fast_entry}
        for item in exact_entry:
            assert abs(fast_scores[item["label"]] - item["score"]) < 0.02


@pytest.mark.parametrize("name", ["bert_classifier", "bert_fill_mask", "bert_token_classifier", "bert_question_answering", "sentence_transformer", "t5", "stable_diffusion"])
def test_every_task_serves_its_planned_cpu_path(model_dirs, name):
    engine = _engine(model_dirs[name], BF16_CPU)
    generation = engine.task_name in {"text-generation", "text2text-generation"}
    assert engine.applied.dtype == ("bfloat16" if generation else "float32")
    assert (engine.applied.kernel_inject, engine.applied.cuda_graph, engine.applied.tensor_parallel) == (False, False, 1)
    sample = engine.task.sample_inputs
    parameters = type(engine.task).parse_parameters({"num_inference_steps": 2} if name == "stable_diffusion" else {})
    assert len(engine.infer(ScoringRequest(sample, parameters), Deadline(60))) == len(sample)


def test_plan_for_another_task_is_refused(model_dirs):
    plan = make_plan(resolve_model(model_dirs["bert_fill_mask"]), FP32_CPU, task="feature-extraction")
    with pytest.raises(ConfigError, match="plan is for 'feature-extraction'"):
        Engine.load(model_dirs["bert_fill_mask"], plan=plan, settings=ServingSettings())


def test_what_was_applied_is_logged_at_load(model_dirs, caplog):
    with caplog.at_level("INFO", logger="mii_azure.runtime.engine"):
        engine = _engine(model_dirs["bert_classifier"], FP32_CPU, quantization="int8")
    loaded = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Loaded ")]
    assert len(loaded) == 1
    assert loaded[0].endswith("applied: " + engine.applied.describe())
    assert "quantization=int8" in loaded[0] and "kernel_inject=False" in loaded[0] and "cuda_graph=False" in loaded[0]
