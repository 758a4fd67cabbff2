"""The optimization planner: which DeepSpeed-Inference optimizations fit a model on given hardware, and why.

Everything here is planned from configuration facts alone (the shipped catalog of well-known models,
tiny model folders, or config.json files written to tmp_path): no weights are loaded and the planner
itself needs no torch. Every produced plan is re-checked by recomputing its memory from the model's
facts, and its "smallest / largest" choices are re-checked by asking the planner for the next
setting and expecting a ConfigError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional

import pytest

from mii_azure.cli import main
from mii_azure.errors import ConfigError
from mii_azure.hardware import GB, Hardware
from mii_azure.known_models import CATALOG_NOTE
from mii_azure.models import ModelFacts, resolve_model
from mii_azure.planner import (
    MAX_PLANNED_BATCH,
    CPU_BATCH,
    HEADROOM_FRACTION,
    HOST_RAM_USABLE,
    STATIC_SHAPE_TASKS,
    MemoryBreakdown,
    OptimizationPlan,
    PlanOverrides,
    make_plan,
    plan,
)
from mii_azure.skus import ALIASES, CATALOG_AS_OF, catalog, get_sku

ND96AMSR = "Standard_ND96amsr_A100_v4"  # 8x A100 80GB
ND96ASR = "Standard_ND96asr_v4"  # 8x A100 40GB
NC24ADS = "Standard_NC24ads_A100_v4"  # 1x A100 80GB
T4 = "Standard_NC4as_T4_v3"  # 1x T4 16GB

CHOICES = ("dtype", "tensor_parallel", "replicas", "kernel_inject", "quantization", "zero_offload", "cuda_graph", "max_batch_size")
GENERATION = {"text-generation", "text2text-generation"}
DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
INT8_BYTES = 1.02  # one byte per weight plus 2% for the scales

CPU_BF16 = Hardware.cpu(cores=2, ram_gb=24, bf16=True)
CPU_FP32 = Hardware.cpu(cores=2, ram_gb=24, bf16=False)
CPU_BIG = Hardware.cpu(cores=8, ram_gb=64, bf16=True)

GPT2_SMALL_CONFIG = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_positions": 1024,
    "n_ctx": 1024,
    "vocab_size": 50257,
    "activation_function": "gelu_new",
}
# A Llama-shaped model trained in bf16 (TinyLlama-1.1B's shape).
BF16_LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "vocab_size": 32000,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Well-known hub ids must come from the shipped catalog, whatever this machine's HF cache holds."""
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("empty-hf-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- invariants, by recomputation


def same_sizes(p: OptimizationPlan, **changes: Any) -> PlanOverrides:
    """Overrides that pin the plan's dtype and sequence lengths (and whatever ``changes`` adds)."""
    fields: dict[str, Any] = {"dtype": p.dtype, "max_input_tokens": p.max_input_tokens}
    if p.max_new_tokens:
        fields["max_new_tokens"] = p.max_new_tokens
    fields.update(changes)
    return PlanOverrides(**fields)


def kv_bytes_per_token(facts: ModelFacts, task: str, dtype: str) -> float:
    """KV-cache bytes per token for the whole model: K and V, every layer, every KV head."""
    if task not in GENERATION or facts.is_diffusion:
        return 0.0
    head_dim = facts.hidden_size / facts.num_attention_heads
    kv_heads = facts.num_kv_heads or facts.num_attention_heads
    stacks = 2 if facts.is_encoder_decoder else 1
    return 2 * facts.num_layers * kv_heads * head_dim * DTYPE_BYTES[dtype] * stacks


def check_memory(p: OptimizationPlan, facts: ModelFacts) -> None:
    memory = p.memory
    hw = p.hardware
    tokens = p.max_input_tokens + p.max_new_tokens
    batch = p.max_batch_size
    assert memory.used_gb == pytest.approx(
        memory.weights_gb + memory.kv_cache_gb + memory.workspace_gb + memory.headroom_gb
    )
    assert memory.used_gb <= memory.capacity_gb + 1e-9, p.describe()
    assert memory.fits

    if hw.kind == "gpu":
        assert memory.capacity_gb == hw.gpu_memory_gb
    else:
        # Each copy's share of the host RAM (all of it for one copy).
        assert memory.capacity_gb == pytest.approx(hw.ram_gb * HOST_RAM_USABLE / p.replicas)
    assert memory.headroom_gb == pytest.approx(memory.capacity_gb * HEADROOM_FRACTION)

    per_parameter = INT8_BYTES if p.quantization == "int8" else DTYPE_BYTES[p.dtype]
    total_weights_gb = facts.parameter_count * per_parameter / GB
    if p.zero_offload:
        # Two layers resident (computing + arriving), the rest streamed from host memory or NVMe.
        assert p.quantization is None and p.tensor_parallel == 1
        assert memory.weights_gb == pytest.approx(2 * total_weights_gb / facts.num_layers)
        assert memory.weights_gb + memory.offloaded_gb == pytest.approx(total_weights_gb)
        shards = 1
    elif hw.kind == "gpu":
        assert memory.offloaded_gb == 0
        assert memory.weights_gb == pytest.approx(total_weights_gb / p.tensor_parallel)
        shards = p.tensor_parallel
    else:
        assert memory.offloaded_gb == 0
        assert memory.weights_gb == pytest.approx(total_weights_gb)  # CPU processes share one host's RAM
        shards = 1

    kv_dtype = p.dtype
    expected_kv = kv_bytes_per_token(facts, p.task, kv_dtype) * batch * tokens / shards / GB
    if p.quantization == "int8" and p.dtype == "float32" and hw.kind == "gpu":
        # int8 kernels keep a half-precision cache; checked for consistency below, not by value.
        expected_kv = kv_bytes_per_token(facts, p.task, "float16") * batch * tokens / shards / GB
    assert memory.kv_cache_gb == pytest.approx(expected_kv)

    if not facts.is_diffusion:
        activations = 4 * batch * tokens * (facts.hidden_size or 0) * DTYPE_BYTES[p.dtype] / shards
        logits = batch * (facts.vocab_size or 0) * 4 if p.task in GENERATION else 0
        assert memory.workspace_gb == pytest.approx(1.0 + (activations + logits) / GB)
    else:
        assert memory.workspace_gb > 1.0  # 1 GB base plus the images of the batch

    # The KV-cache budget: what is left of the device after weights, workspace and headroom.
    free = memory.capacity_gb - memory.weights_gb - memory.workspace_gb - memory.headroom_gb
    assert p.kv_cache_gb == pytest.approx(round(max(0.0, free), 3), abs=1e-9)
    assert p.kv_cache_gb + 1e-3 >= memory.kv_cache_gb
    if p.task in GENERATION:
        per_token_gb = memory.kv_cache_gb / (batch * tokens)  # per GPU, as the memory breakdown counts it
        assert abs(p.kv_cache_tokens - free / per_token_gb) <= 1.5, (p.kv_cache_tokens, free / per_token_gb)
        assert p.kv_cache_tokens >= batch * tokens
    else:
        assert p.kv_cache_tokens == 0 and memory.kv_cache_gb == 0


def check_parallelism(p: OptimizationPlan, facts: ModelFacts) -> None:
    heads = facts.num_attention_heads or 1
    degree = p.tensor_parallel
    assert degree >= 1 and heads % degree == 0
    if p.hardware.kind == "cpu":
        assert degree <= p.hardware.cpu_cores
        return
    assert p.hardware.gpus % degree == 0 and degree <= p.hardware.gpus
    if p.zero_offload or "tensor_parallel" in p.overrides or "quantization" in p.overrides:
        return
    valid = [d for d in range(1, p.hardware.gpus + 1) if heads % d == 0 and p.hardware.gpus % d == 0]
    # The smallest valid degree that fits: every smaller one, with the same weights, does not.
    for smaller in (d for d in valid if d < degree):
        overrides = same_sizes(p, tensor_parallel=smaller, quantization=p.quantization or "none")
        assert_does_not_fit_in_gpu_memory(facts, p, overrides, f"tensor_parallel={smaller}")
    if p.quantization == "int8":
        # int8 only because unquantized weights fit at no valid degree.
        overrides = same_sizes(p, tensor_parallel=max(valid), quantization="none")
        assert_does_not_fit_in_gpu_memory(facts, p, overrides, f"tensor_parallel={max(valid)}")


def check_replicas(p: OptimizationPlan, facts: ModelFacts) -> None:
    """Copies per instance: each on its own GPUs (cores), as many as fit unless offloaded or on CPU."""
    hw = p.hardware
    if hw.kind == "cpu":
        assert p.replicas * p.tensor_parallel <= hw.cpu_cores
        if "replicas" not in p.overrides:
            assert p.replicas == 1
        return
    assert p.replicas * p.tensor_parallel <= hw.gpus
    if p.zero_offload:
        assert p.replicas == 1
        return
    if "replicas" in p.overrides:
        return
    # As many copies as the GPUs hold, unless host RAM cannot stage every copy's weights at once.
    staged_gb = facts.parameter_count * DTYPE_BYTES[p.dtype] / GB
    expected = hw.gpus // p.tensor_parallel
    if hw.ram_gb:
        expected = max(1, min(expected, int(hw.ram_gb * HOST_RAM_USABLE // staged_gb)))
    assert p.replicas == expected, p.describe()
    # The largest: one more copy is refused, naming this plan's count.
    overrides = same_sizes(
        p, tensor_parallel=p.tensor_parallel, quantization=p.quantization or "none", replicas=p.replicas + 1
    )
    with pytest.raises(ConfigError) as raised:
        make_plan(facts, hw, task=p.task, overrides=overrides)
    assert raised.value.conflict == "replicas" and raised.value.nearest == p.replicas
    assert f"use replicas={p.replicas}" in raised.value.message


def assert_does_not_fit_in_gpu_memory(facts: ModelFacts, p: OptimizationPlan, overrides: PlanOverrides, named: str) -> None:
    """Either a memory ConfigError naming the setting, or (tensor_parallel=1 without quantization, which
    ZeRO-Inference can serve) a plan that must offload the weights."""
    try:
        other = make_plan(facts, p.hardware, task=p.task, overrides=overrides)
    except ConfigError as raised:
        assert raised.conflict == "memory"
        assert named in raised.message
    else:
        assert other.zero_offload is not None, f"{named} would have fitted in GPU memory"


def check_batch(p: OptimizationPlan, facts: ModelFacts) -> None:
    batch = p.max_batch_size
    if "max_batch_size" in p.overrides:
        return
    assert batch >= 1 and batch & (batch - 1) == 0, "a power of two"
    limit = CPU_BATCH if p.hardware.kind == "cpu" else MAX_PLANNED_BATCH
    assert batch <= limit
    if batch * 2 > limit:
        return
    # The largest: twice the batch does not fit.
    if p.hardware.kind == "cpu":
        overrides = same_sizes(p, max_batch_size=batch * 2, quantization=p.quantization or "none")
    elif p.zero_offload:
        overrides = same_sizes(p, max_batch_size=batch * 2, zero_offload=p.zero_offload)
    else:
        overrides = same_sizes(
            p, max_batch_size=batch * 2, tensor_parallel=p.tensor_parallel, quantization=p.quantization or "none"
        )
    with pytest.raises(ConfigError) as raised:
        make_plan(facts, p.hardware, task=p.task, overrides=overrides)
    assert "max_batch_size" in raised.value.message or f"batch {batch * 2}" in raised.value.message
    if p.hardware.kind == "gpu" and not p.zero_offload:
        assert raised.value.nearest == batch
        assert f"use max_batch_size={batch}" in raised.value.message


def check_reasons(p: OptimizationPlan) -> None:
    assert set(CHOICES) <= set(p.reasons), sorted(set(CHOICES) - set(p.reasons))
    for name, reason in p.reasons.items():
        assert isinstance(reason, str) and len(reason.split()) >= 4, (name, reason)
        assert reason.rstrip().endswith((".", ")")), (name, reason)
    # Each reason starts with the choice it explains (unless the caller made it).
    shown = {
        "dtype": p.dtype,
        "tensor_parallel": str(p.tensor_parallel),
        "replicas": str(p.replicas),
        "kernel_inject": "on" if p.kernel_inject else "off",
        "quantization": p.quantization or "none",
        "zero_offload": p.zero_offload or "none",
        "cuda_graph": "on" if p.cuda_graph else "off",
        "max_batch_size": str(p.max_batch_size),
    }
    for name, value in shown.items():
        if name in p.overrides:
            assert "caller" in p.reasons[name], (name, p.reasons[name])
        else:
            assert p.reasons[name].startswith(f"{value}:"), (name, p.reasons[name])


def check_round_trip(p: OptimizationPlan) -> None:
    data = json.loads(json.dumps(p.to_dict()))
    assert OptimizationPlan.from_dict(data) == p
    assert OptimizationPlan.from_dict(json.loads(p.to_json())) == p


def check_plan(p: OptimizationPlan, facts: Optional[ModelFacts] = None) -> OptimizationPlan:
    """Every invariant of a produced plan, recomputed from the model's facts."""
    facts = facts or resolve_model(p.model)
    assert p.parameter_count == facts.parameter_count
    assert p.facts_source == facts.config_source
    if p.hardware.kind == "cpu":
        assert not p.kernel_inject and not p.cuda_graph and p.zero_offload is None
    if p.cuda_graph:
        assert p.task in STATIC_SHAPE_TASKS and p.tensor_parallel == 1 and not p.zero_offload
    check_memory(p, facts)
    check_parallelism(p, facts)
    check_replicas(p, facts)
    check_batch(p, facts)
    check_reasons(p)
    check_round_trip(p)
    return p


def planned(model: Any, **kwargs: Any) -> OptimizationPlan:
    facts = model if isinstance(model, ModelFacts) else resolve_model(model)
    return check_plan(plan(facts, **kwargs), facts)


# --------------------------------------------------------------------------- 1. table tests from configurations alone

TABLE = [
    # (model, sku, expected choices)
    ("bigscience/bloom", ND96AMSR, dict(dtype="float16", tensor_parallel=8, quantization=None, zero_offload=None, kernel_inject=True, cuda_graph=False)),
    ("bigscience/bloom", ND96ASR, dict(dtype="float16", tensor_parallel=8, quantization="int8", zero_offload=None, kernel_inject=True)),
    # 352 GB of fp16 weights > the 220 GiB of host RAM of the NC24ads, so ZeRO-Inference streams from NVMe.
    ("bigscience/bloom", NC24ADS, dict(dtype="float16", tensor_parallel=1, quantization=None, zero_offload="nvme", cuda_graph=False)),
    ("meta-llama/Llama-2-70b-hf", ND96AMSR, dict(dtype="float16", tensor_parallel=2, quantization=None, zero_offload=None, kernel_inject=True, cuda_graph=False)),
    ("facebook/opt-66b", ND96AMSR, dict(dtype="float16", tensor_parallel=2, quantization=None, zero_offload=None, kernel_inject=True)),
    # 131 GB of fp16 weights fit the NC24ads' host RAM: CPU offload.
    ("facebook/opt-66b", NC24ADS, dict(tensor_parallel=1, quantization=None, zero_offload="cpu", cuda_graph=False)),
    ("EleutherAI/gpt-j-6b", NC24ADS, dict(dtype="float16", tensor_parallel=1, kernel_inject=True, quantization=None, cuda_graph=False)),
    ("EleutherAI/gpt-neox-20b", ND96AMSR, dict(dtype="float16", tensor_parallel=1, kernel_inject=False, cuda_graph=False, zero_offload=None)),
    ("bert-base-uncased", T4, dict(dtype="float16", tensor_parallel=1, kernel_inject=True, cuda_graph=True, quantization=None)),
    ("roberta-base", T4, dict(dtype="float16", tensor_parallel=1, kernel_inject=True, cuda_graph=True, quantization=None)),
    ("runwayml/stable-diffusion-v1-5", T4, dict(dtype="float16", tensor_parallel=1, kernel_inject=True, cuda_graph=True, zero_offload=None)),
]


@pytest.mark.parametrize("model,sku,expected", TABLE, ids=[f"{m}@{s}" for m, s, _ in TABLE])
def test_well_known_models_plan_from_configuration_alone(model, sku, expected):
    p = planned(model, sku=sku)
    assert {name: getattr(p, name) for name in expected} == expected, p.describe()
    assert p.hardware.name == sku and p.overrides == ()
    assert CATALOG_NOTE in p.facts_source


def test_bloom_parameter_count_and_weights_from_config():
    p = planned("bigscience/bloom", sku=ND96AMSR)
    assert p.parameter_count == pytest.approx(176_247_271_424, rel=0.001)  # published BLOOM total
    # 2 bytes per parameter over 8 GPUs.
    assert p.memory.weights_gb == pytest.approx(p.parameter_count * 2 / 8 / 1e9)
    # BLOOM has 70 layers of 14336 hidden: 2 (K, V) x 70 x 14336 x 2 bytes per token, split over 8 GPUs.
    per_token_per_gpu = 2 * 70 * 14336 * 2 / 8
    assert p.memory.kv_cache_gb == pytest.approx(per_token_per_gpu * p.max_batch_size * 2304 / 1e9)
    assert (p.max_input_tokens, p.max_new_tokens) == (2048, 256)  # ALiBi: no fixed limit, 2048 assumed


def test_bloom_fp16_cannot_fit_8x_a100_40gb_so_int8_is_planned():
    p = planned("bigscience/bloom", sku=ND96ASR)
    assert p.memory.weights_gb == pytest.approx(p.parameter_count * INT8_BYTES / 8 / 1e9)
    assert p.parameter_count * 2 / 8 / 1e9 > 40 * (1 - HEADROOM_FRACTION)  # fp16 shards alone overflow
    assert "int8" in p.reasons["quantization"] and "do not fit" in p.reasons["quantization"]
    # Without quantization the only way left is ZeRO-Inference offload.
    assert plan("bigscience/bloom", sku=ND96ASR, quantization="none").zero_offload is not None
    with pytest.raises(ConfigError, match="does not fit|needs"):
        plan("bigscience/bloom", sku=ND96ASR, quantization="none", zero_offload="none")


def test_bloom_on_one_a100_offloads_with_zero_inference():
    p = planned("bigscience/bloom", sku=NC24ADS)
    assert p.zero_offload in {"cpu", "nvme"}
    fp16_gb = p.parameter_count * 2 / 1e9
    assert fp16_gb > p.hardware.ram_gb * HOST_RAM_USABLE  # hence NVMe rather than host memory
    assert p.zero_offload == "nvme" and "NVMe" in p.reasons["zero_offload"]
    assert p.memory.offloaded_gb > 300
    assert "offload" in p.reasons["cuda_graph"]


def test_gpt2_folder_on_one_gpu_plans_tensor_parallel_1_with_kernel_injection(model_dirs):
    facts = resolve_model(model_dirs["gpt2"])
    for sku in (T4, NC24ADS, ND96AMSR):
        p = planned(facts, sku=sku)
        assert p.tensor_parallel == 1 and p.kernel_inject is True, sku
        assert p.task == "text-generation" and p.cuda_graph is False
        assert p.dtype == "float16" and p.quantization is None and p.zero_offload is None
        # n_positions=64: a quarter for new tokens, the rest for the prompt.
        assert (p.max_input_tokens, p.max_new_tokens) == (48, 16)
        assert p.facts_source == "config.json" and p.parameter_count == facts.parameter_count


def test_gpt2_small_config_on_one_gpu(tmp_path):
    folder = write_config(tmp_path / "gpt2-small", GPT2_SMALL_CONFIG)
    p = planned(str(folder), sku=T4)
    assert p.parameter_count == pytest.approx(124_439_808, rel=0.01)  # published GPT-2 small
    assert p.tensor_parallel == 1 and p.kernel_inject is True and p.zero_offload is None
    assert p.dtype == "float16" and p.quantization is None
    assert (p.max_input_tokens, p.max_new_tokens) == (1024 - 256, 256)
    assert p.facts_source == "config.json"
    assert "gpt2" in p.reasons["kernel_inject"]


@pytest.mark.parametrize("hardware,dtype", [(CPU_BF16, "bfloat16"), (CPU_FP32, "float32")], ids=["bf16", "no-bf16"])
def test_cpu_plans_no_gpu_features(model_dirs, tmp_path, hardware, dtype):
    small = write_config(tmp_path / "gpt2-small", GPT2_SMALL_CONFIG)
    for model in (model_dirs["gpt2"], small, model_dirs["t5"]):  # generation: bf16 where the CPU has it
        p = planned(str(model), hardware=hardware)
        assert p.hardware.kind == "cpu"
        assert (p.kernel_inject, p.cuda_graph, p.tensor_parallel, p.zero_offload) == (False, False, 1, None)
        assert p.dtype == dtype and p.quantization is None
        assert "GPU" in p.reasons["cuda_graph"] and "CUDA" in p.reasons["kernel_inject"]
        assert p.reasons["dtype"].startswith(f"{dtype}:")
        assert ("has native bf16" in p.reasons["dtype"]) is (dtype == "bfloat16")
        assert ("no native bf16" in p.reasons["dtype"]) is (dtype == "float32")
        assert p.memory.capacity_gb == pytest.approx(24 * HOST_RAM_USABLE)


@pytest.mark.parametrize("hardware", [CPU_BF16, CPU_FP32], ids=["bf16", "no-bf16"])
@pytest.mark.parametrize("name", ["bert_classifier", "sentence_transformer", "stable_diffusion"])
def test_cpu_keeps_single_pass_tasks_and_pipelines_in_float32(model_dirs, hardware, name):
    p = planned(str(model_dirs[name]), hardware=hardware)
    assert p.dtype == "float32" and (p.kernel_inject, p.cuda_graph, p.tensor_parallel) == (False, False, 1)
    assert p.reasons["dtype"].startswith("float32:")


def test_gpt_neox_has_no_kernel_injection_because_its_policy_is_broken():
    p = planned("EleutherAI/gpt-neox-20b", sku=ND96AMSR)
    assert p.kernel_inject is False
    reason = p.reasons["kernel_inject"]
    assert reason.startswith("off:") and "policy" in reason and "GPT-NeoX" in reason
    assert "generation changes shapes" in p.reasons["cuda_graph"]


@pytest.mark.parametrize("model", ["bert-base-uncased", "roberta-base"])
@pytest.mark.parametrize("task", ["fill-mask", "feature-extraction"])
@pytest.mark.parametrize("sku", [T4, ND96AMSR])
def test_encoders_inject_kernels_and_capture_cuda_graphs_for_static_shapes(model, task, sku):
    p = planned(model, sku=sku, task=task)
    assert p.kernel_inject is True and p.cuda_graph is True and p.tensor_parallel == 1
    assert p.task in p.reasons["cuda_graph"] and "shape buckets" in p.reasons["cuda_graph"]
    assert p.max_new_tokens == 0 and p.kv_cache_tokens == 0


def test_generation_gets_no_cuda_graph_even_on_one_gpu():
    p = planned("EleutherAI/gpt-j-6b", sku=NC24ADS)
    assert p.tensor_parallel == 1 and p.kernel_inject is True and p.cuda_graph is False
    assert "generation" in p.reasons["cuda_graph"]


def test_stable_diffusion_on_a_t4_is_fp16_with_cuda_graph():
    p = planned("runwayml/stable-diffusion-v1-5", sku=T4)
    assert p.dtype == "float16" and "no bf16" in p.reasons["dtype"]
    assert p.cuda_graph is True and p.kernel_inject is True and "UNet" in p.reasons["kernel_inject"]
    assert p.parameter_count == 859_520_964 + 83_653_863 + 123_060_480 + 303_956_880
    assert (p.max_input_tokens, p.max_new_tokens) == (77, 0)


def test_tiny_stable_diffusion_folder_plans_from_its_model_index(model_dirs):
    p = planned(str(model_dirs["stable_diffusion"]), sku=T4)
    assert p.task == "text-to-image" and p.facts_source == "model_index.json"
    assert p.cuda_graph is True and p.dtype == "float16"


def test_native_bf16_model_plans_bf16_where_the_gpu_has_it_and_fp16_on_a_t4(tmp_path):
    folder = str(write_config(tmp_path / "bf16-llama", BF16_LLAMA_CONFIG))
    on_a100 = planned(folder, sku=NC24ADS)
    assert on_a100.dtype == "bfloat16" and "bf16" in on_a100.reasons["dtype"]
    assert on_a100.memory.weights_gb == pytest.approx(on_a100.parameter_count * 2 / 1e9)
    on_t4 = planned(folder, sku=T4)
    assert on_t4.dtype == "float16" and "T4 has no bf16" in on_t4.reasons["dtype"]
    on_cpu = planned(folder, hardware=CPU_BF16)
    assert on_cpu.dtype == "bfloat16"
    # GQA: 4 KV heads of 64, not 32.
    per_token = 2 * 22 * 4 * 64 * 2
    seq = on_a100.max_input_tokens + on_a100.max_new_tokens
    assert on_a100.memory.kv_cache_gb == pytest.approx(per_token * on_a100.max_batch_size * seq / 1e9)


# --------------------------------------------------------------------------- 2./3./5. invariants over many plans

KNOWN = [
    "bigscience/bloom",
    "bigscience/bloom-7b1",
    "EleutherAI/gpt-j-6b",
    "EleutherAI/gpt-neox-20b",
    "facebook/opt-30b",
    "facebook/opt-66b",
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-hf",
    "bert-base-uncased",
    "roberta-base",
    "runwayml/stable-diffusion-v1-5",
]


@pytest.mark.parametrize("model", KNOWN)
def test_every_known_model_on_every_sku_plans_consistently_or_says_why_not(model):
    facts = resolve_model(model)
    planned_any = False
    for sku in catalog():
        try:
            p = plan(facts, sku=sku.instance_type)
        except ConfigError as error:
            # The only reason a default plan may fail: not even one streamed layer fits.
            assert error.conflict == "memory" and "even with ZeRO-Inference offload" in error.message
            assert sku.gpu_memory_gb <= 24, (model, sku.instance_type)
            continue
        planned_any = True
        check_plan(p, facts)
    assert planned_any


TINY = ["gpt2", "t5", "bert_classifier", "bert_fill_mask", "bert_token_classifier", "bert_question_answering",
        "bert_encoder", "sentence_transformer", "stable_diffusion", "minilm"]


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_folders_plan_consistently_everywhere(model_dirs, name):
    facts = resolve_model(model_dirs[name])
    for target in ({"sku": T4}, {"sku": NC24ADS}, {"sku": ND96AMSR}, {"hardware": CPU_BF16}, {"hardware": CPU_FP32}):
        p = check_plan(plan(facts, **target), facts)
        assert p.tensor_parallel == 1 and p.zero_offload is None and p.quantization is None
        assert p.facts_source in {"config.json", "model_index.json"}
        if p.hardware.kind == "gpu":
            assert p.cuda_graph is (p.task not in GENERATION and p.kernel_inject)


def test_t5_plan(model_dirs):
    p = planned(str(model_dirs["t5"]), sku=T4)
    assert p.task == "text2text-generation" and p.kernel_inject is False
    assert "no injection policy for t5" in p.reasons["kernel_inject"]
    assert p.kv_cache_tokens > 0  # self- and cross-attention caches
    with pytest.raises(ConfigError, match="quantization=None"):
        plan(str(model_dirs["t5"]), sku=T4, quantization="int8")


def test_memory_breakdown_used_and_fits():
    memory = MemoryBreakdown(capacity_gb=10, weights_gb=4, kv_cache_gb=3, workspace_gb=1, headroom_gb=1)
    assert memory.used_gb == 9 and memory.fits
    assert not MemoryBreakdown(capacity_gb=10, weights_gb=9, kv_cache_gb=0.5, workspace_gb=1, headroom_gb=1).fits


def test_describe_shows_choices_memory_and_every_reason():
    p = plan("bigscience/bloom", sku=NC24ADS)
    text = p.describe()
    assert str(p) == text
    assert "zero_offload=nvme" in text and "offloaded" in text and "of 80.0 GB" in text
    for choice, reason in p.reasons.items():
        assert f"{choice}: {reason}" in text


# --------------------------------------------------------------------------- replicas: model copies per instance

REPLICAS_TABLE = [
    # (model, sku, tensor_parallel, replicas): copies of tensor_parallel GPUs fill the instance's 8 GPUs.
    ("meta-llama/Llama-2-70b-hf", ND96ASR, 4, 2),
    ("meta-llama/Llama-2-70b-hf", ND96AMSR, 2, 4),
    ("bigscience/bloom", ND96AMSR, 8, 1),
    ("bigscience/bloom", ND96ASR, 8, 1),
    ("EleutherAI/gpt-j-6b", ND96AMSR, 1, 8),
    # ZeRO-Inference streams from the VM's shared host memory / NVMe: one copy.
    ("bigscience/bloom", NC24ADS, 1, 1),
    ("facebook/opt-66b", NC24ADS, 1, 1),
    ("EleutherAI/gpt-j-6b", T4, 1, 1),
]


@pytest.mark.parametrize("model,sku,tensor_parallel,replicas", REPLICAS_TABLE, ids=[f"{m}@{s}" for m, s, _, _ in REPLICAS_TABLE])
def test_replicas_fill_the_instance_with_copies_of_tensor_parallel_gpus(model, sku, tensor_parallel, replicas):
    p = planned(model, sku=sku)
    assert (p.tensor_parallel, p.replicas) == (tensor_parallel, replicas), p.describe()
    assert p.replicas * p.tensor_parallel <= p.hardware.gpus
    assert p.reasons["replicas"].startswith(f"{replicas}:")
    assert f"replicas={replicas}" in p.describe()
    if p.zero_offload:
        assert "host memory or NVMe" in p.reasons["replicas"] and "shares" in p.reasons["replicas"]
    elif replicas > 1:
        assert f"{replicas} copies of {tensor_parallel} GPU" in p.reasons["replicas"]


def test_gpt2_on_an_8_gpu_sku_serves_8_copies(tmp_path):
    folder = write_config(tmp_path / "gpt2-small", GPT2_SMALL_CONFIG)
    p = planned(str(folder), sku=ND96AMSR)
    assert (p.tensor_parallel, p.replicas) == (1, 8)
    assert "no GPU stays idle" in p.reasons["replicas"]
    assert OptimizationPlan.from_dict(json.loads(p.to_json())).replicas == 8


def test_replicas_are_limited_by_the_host_memory_that_stages_every_copy():
    # 8 A100-80GB hold eight fp16 copies of a 45e9-parameter shape (90 GB, two GPUs each would need tp2),
    # so use a 30e9 one: 60 GB of fp16 weights fit one GPU, and 8 copies would stage 480 GB through host
    # memory at once. With 200 GB of RAM, 180 GB usable hold 3 of them.
    from mii_azure.workload import ModelShape

    facts = ModelShape(parameters=30e9, layers=48, hidden_size=7168, heads=56, vocab_size=50000, name="shape-30b").facts()
    small_host = get_sku(ND96AMSR).hardware.model_copy(update={"name": "small-host", "ram_gb": 200.0})
    p = check_plan(make_plan(facts, small_host, overrides=PlanOverrides(max_new_tokens=64, max_input_tokens=256)), facts)
    assert p.tensor_parallel == 1
    assert p.replicas == int(200.0 * HOST_RAM_USABLE // (30e9 * 2 / GB)) == 3
    assert "host memory" in p.reasons["replicas"] and "8 copies" in p.reasons["replicas"]
    with pytest.raises(ConfigError) as raised:
        make_plan(facts, small_host, overrides=PlanOverrides(max_new_tokens=64, max_input_tokens=256, replicas=4))
    assert raised.value.conflict == "replicas" and raised.value.nearest == 3
    assert "use replicas=3" in raised.value.message and "host memory" in raised.value.message


def test_cpu_serves_one_copy_unless_asked(model_dirs):
    p = planned(str(model_dirs["gpt2"]), hardware=CPU_BIG)
    assert p.replicas == 1 and p.reasons["replicas"].startswith("1:") and "every core" in p.reasons["replicas"]
    two = planned(str(model_dirs["gpt2"]), hardware=CPU_BIG, replicas=2)
    assert two.replicas == 2 and two.overrides == ("replicas",)
    assert "caller" in two.reasons["replicas"] and "4 of the 8 cores" in two.reasons["replicas"]
    # Each copy plans in its half of the usable RAM.
    assert two.memory.capacity_gb == pytest.approx(p.memory.capacity_gb / 2)
    assert "host RAM per copy (1/2 of it)" in two.describe()
    assert OptimizationPlan.from_dict(two.to_dict()) == two


def test_cpu_replicas_must_fit_the_ram_and_the_cores(tmp_path, model_dirs):
    with pytest.raises(ConfigError) as raised:
        plan(str(model_dirs["gpt2"]), hardware=CPU_BF16, replicas=3)
    assert raised.value.conflict == "replicas" and raised.value.nearest == 2
    assert "use replicas=2" in raised.value.message and "2 cores" in raised.value.message
    # A 6B model: 12 GB of bf16 weights; 21.6 GB usable hold one copy at batch 1, not two.
    with pytest.raises(ConfigError) as raised:
        plan(J6B, hardware=CPU_BF16, replicas=2)
    assert raised.value.conflict == "replicas" and raised.value.nearest == 1
    assert "use replicas=1" in raised.value.message and "RAM" in raised.value.message


@pytest.mark.parametrize(
    "model,target,override,nearest,needle",
    [
        ("bigscience/bloom", {"sku": ND96AMSR}, {"replicas": 0}, 1, "serve no model copy"),
        ("bigscience/bloom", {"sku": ND96AMSR}, {"replicas": 2}, 1, "need 16 GPUs"),
        ("meta-llama/Llama-2-70b-hf", {"sku": ND96ASR}, {"replicas": 4}, 2, "need 16 GPUs"),
        ("EleutherAI/gpt-j-6b", {"sku": ND96AMSR}, {"replicas": 4, "tensor_parallel": 4}, 2, "need 16 GPUs"),
        ("EleutherAI/gpt-j-6b", {"sku": NC24ADS}, {"replicas": 2}, 1, "need 2 GPUs"),
        ("bigscience/bloom", {"sku": NC24ADS}, {"replicas": 2}, 1, "ZeRO-Inference offload"),
        ("EleutherAI/gpt-j-6b", {"sku": NC24ADS}, {"replicas": 2, "zero_offload": "cpu"}, 1, "ZeRO-Inference offload"),
        ("bert-base-uncased", {"hardware": CPU_BF16}, {"replicas": 0}, 1, "serve no model copy"),
    ],
    ids=["zero", "bloom-tp8", "llama-tp4", "tp-given", "one-gpu", "offload", "offload-asked", "cpu-zero"],
)
def test_replicas_conflicts_name_the_nearest_working_value(model, target, override, nearest, needle):
    with pytest.raises(ConfigError) as raised:
        plan(model, **target, **override)
    assert raised.value.conflict == "replicas" and raised.value.nearest == nearest
    assert needle in raised.value.message and f"use replicas={nearest}" in raised.value.message
    fixed = {**override, "replicas": nearest}
    assert planned(model, **target, **fixed).replicas == nearest  # and the nearest value works


def test_fewer_replicas_than_fit_leave_gpus_idle_and_say_so():
    p = planned("EleutherAI/gpt-j-6b", sku=ND96AMSR, replicas=3)
    assert p.replicas == 3 and p.overrides == ("replicas",)
    assert "5 of the 8 GPUs stay idle" in p.reasons["replicas"]


def test_plans_without_replicas_read_back_as_one_copy():
    """Packages written before replicas existed keep loading: their plans serve one copy."""
    data = plan("bigscience/bloom", sku=ND96AMSR).to_dict()
    del data["replicas"]
    assert OptimizationPlan.from_dict(data).replicas == 1


# --------------------------------------------------------------------------- 4. overrides that cannot work


def test_tensor_parallel_above_the_gpu_count():
    with pytest.raises(ConfigError) as raised:
        plan("bigscience/bloom", sku=ND96AMSR, tensor_parallel=16)
    assert "tensor_parallel=16" in raised.value.message and "8 GPUs" in raised.value.message
    assert "use tensor_parallel=8" in raised.value.message and raised.value.nearest == 8
    with pytest.raises(ConfigError, match="use tensor_parallel=1"):
        plan("bert-base-uncased", sku=T4, tensor_parallel=2)


@pytest.mark.parametrize("given,nearest", [(3, 4), (5, 4), (6, 8)])
def test_tensor_parallel_not_dividing_the_heads(given, nearest):
    with pytest.raises(ConfigError) as raised:
        plan("bigscience/bloom", sku=ND96AMSR, tensor_parallel=given)
    assert f"tensor_parallel={given}" in raised.value.message and "112 attention heads" in raised.value.message
    assert raised.value.nearest == nearest and f"use tensor_parallel={nearest}" in raised.value.message
    assert raised.value.conflict == "tensor_parallel"
    plan("bigscience/bloom", sku=ND96AMSR, tensor_parallel=nearest)  # and the nearest one works


def test_tensor_parallel_on_cpu_must_divide_heads_and_not_exceed_cores(model_dirs):
    with pytest.raises(ConfigError) as raised:
        plan(str(model_dirs["bert_classifier"]), hardware=CPU_BF16, tensor_parallel=3)  # 4 heads, 2 cores
    assert raised.value.nearest == 2 and "use tensor_parallel=2" in raised.value.message


def test_int8_on_an_architecture_without_int8_kernels():
    with pytest.raises(ConfigError) as raised:
        plan("bert-base-uncased", sku=T4, quantization="int8")
    assert "quantization='int8'" in raised.value.message and "BertForMaskedLM" in raised.value.message
    assert "quantization=None" in raised.value.message and raised.value.conflict == "quantization"


def test_int8_on_cpu_for_conv1d_models(model_dirs):
    with pytest.raises(ConfigError, match="quantization=None"):
        plan(str(model_dirs["gpt2"]), hardware=CPU_BF16, quantization="int8")


def test_a_model_that_cannot_fit_even_with_offload():
    with pytest.raises(ConfigError) as raised:
        plan("bigscience/bloom", sku=T4)
    assert "even with ZeRO-Inference offload" in raised.value.message
    assert "Pick a SKU with more GPU memory" in raised.value.message and raised.value.conflict == "memory"


def test_forced_tensor_parallel_and_quantization_that_do_not_fit_name_the_setting_that_does():
    with pytest.raises(ConfigError) as raised:
        plan("bigscience/bloom", sku=ND96AMSR, tensor_parallel=4, quantization="none")
    assert "With tensor_parallel=4 and quantization=None" in raised.value.message
    assert "use tensor_parallel=8, quantization=None" in raised.value.message
    assert raised.value.needed_gb > raised.value.capacity_gb == 80


def test_cuda_graph_conflicts():
    with pytest.raises(ConfigError, match="ZeRO-Inference offload.*use cuda_graph=False"):
        plan("bigscience/bloom", sku=NC24ADS, cuda_graph=True)
    with pytest.raises(ConfigError, match="tensor_parallel=8; use cuda_graph=False"):
        plan("bigscience/bloom", sku=ND96AMSR, cuda_graph=True)
    with pytest.raises(ConfigError, match="text-generation changes shape with every new token.*use cuda_graph=False"):
        plan("EleutherAI/gpt-neox-20b", sku=ND96AMSR, cuda_graph=True)


def test_cuda_graphs_do_not_need_kernel_injection():
    """The engine captures its own graphs per shape bucket, over whatever modules the model runs."""
    p = plan("bert-base-uncased", sku=T4, kernel_inject=False)
    assert (p.kernel_inject, p.cuda_graph) == (False, True)
    assert "shape buckets" in p.reasons["cuda_graph"]


@pytest.mark.parametrize(
    "override,fix",
    [({"cuda_graph": True}, "cuda_graph=False"), ({"kernel_inject": True}, "kernel_inject=False"),
     ({"zero_offload": "cpu"}, "zero_offload=None"), ({"zero_offload": "nvme"}, "zero_offload=None")],
)
def test_gpu_only_features_on_cpu(model_dirs, override, fix):
    with pytest.raises(ConfigError) as raised:
        plan(str(model_dirs["bert_classifier"]), hardware=CPU_BF16, **override)
    assert "needs GPUs" in raised.value.message and fix in raised.value.message
    assert raised.value.conflict == next(iter(override))


def test_bfloat16_on_a_t4():
    with pytest.raises(ConfigError) as raised:
        plan("bert-base-uncased", sku=T4, dtype="bfloat16")
    assert "bfloat16" in raised.value.message and "T4" in raised.value.message
    assert "use dtype='float16'" in raised.value.message and raised.value.conflict == "dtype"


def test_kernel_inject_on_gpt_neox():
    with pytest.raises(ConfigError) as raised:
        plan("EleutherAI/gpt-neox-20b", sku=ND96AMSR, kernel_inject=True)
    assert "kernel_inject=True" in raised.value.message and "GPT-NeoX policy" in raised.value.message
    assert "use kernel_inject=False" in raised.value.message


def test_max_batch_size_too_large_names_the_nearest_fitting_batch():
    default = plan("EleutherAI/gpt-j-6b", sku=NC24ADS)
    with pytest.raises(ConfigError) as raised:
        plan("EleutherAI/gpt-j-6b", sku=NC24ADS, max_batch_size=1000)
    assert raised.value.conflict == "max_batch_size" and raised.value.nearest == default.max_batch_size
    assert f"use max_batch_size={default.max_batch_size}" in raised.value.message
    p = planned("EleutherAI/gpt-j-6b", sku=NC24ADS, max_batch_size=raised.value.nearest)
    assert p.max_batch_size == default.max_batch_size


@pytest.mark.parametrize(
    "model,given,fix",
    [("EleutherAI/gpt-j-6b", 3000, "use max_input_tokens=2047"), ("bert-base-uncased", 1000, "use max_input_tokens=512")],
)
def test_max_input_tokens_above_the_model_positions(model, given, fix):
    with pytest.raises(ConfigError) as raised:
        plan(model, sku=NC24ADS, max_input_tokens=given)
    assert f"max_input_tokens={given}" in raised.value.message and fix in raised.value.message
    assert raised.value.limit in (2048, 512)


def test_zero_offload_cpu_when_the_weights_do_not_fit_host_ram():
    with pytest.raises(ConfigError) as raised:
        plan("bigscience/bloom", sku=NC24ADS, zero_offload="cpu")
    assert "zero_offload='cpu'" in raised.value.message and "use zero_offload='nvme'" in raised.value.message
    planned("bigscience/bloom", sku=NC24ADS, zero_offload="nvme")


def test_invalid_override_values_are_config_errors():
    with pytest.raises(ConfigError, match="tensor_parallel"):
        plan("bert-base-uncased", sku=T4, tensor_parallel=0)
    with pytest.raises(ConfigError, match="dtype"):
        plan("bert-base-uncased", sku=T4, dtype="int4")


def test_overrides_fail_from_the_configuration_alone(tmp_path):
    """A folder with only config.json (no weights, no tokenizer): every conflict is found from it."""
    folder = str(write_config(tmp_path / "gpt2-small", GPT2_SMALL_CONFIG))
    assert sorted(os.listdir(folder)) == ["config.json"]
    with pytest.raises(ConfigError, match="use tensor_parallel=1"):
        plan(folder, sku=T4, tensor_parallel=2)
    with pytest.raises(ConfigError, match="use max_input_tokens=1023"):
        plan(folder, sku=T4, max_input_tokens=4096)
    with pytest.raises(ConfigError, match="use dtype='float16'"):
        plan(folder, sku=T4, dtype="bfloat16")
    with pytest.raises(ConfigError, match="use cuda_graph=False"):
        plan(folder, hardware=CPU_BF16, cuda_graph=True)


# --------------------------------------------------------------------------- valid overrides are honoured

J6B = "EleutherAI/gpt-j-6b"

HONOURED = [
    (J6B, {"sku": NC24ADS}, {"dtype": "float32"}),
    (J6B, {"sku": NC24ADS}, {"dtype": "bfloat16"}),
    (J6B, {"sku": ND96AMSR}, {"tensor_parallel": 4}),
    (J6B, {"sku": NC24ADS}, {"quantization": "int8"}),
    (J6B, {"sku": NC24ADS}, {"zero_offload": "cpu"}),
    ("facebook/opt-66b", {"sku": NC24ADS}, {"zero_offload": "nvme"}),
    ("bert-base-uncased", {"sku": T4}, {"cuda_graph": True}),
    (J6B, {"sku": NC24ADS}, {"max_batch_size": 3}),
    (J6B, {"sku": NC24ADS}, {"max_new_tokens": 32}),
    (J6B, {"sku": NC24ADS}, {"max_input_tokens": 1024}),
    ("bert-base-uncased", {"sku": T4}, {"kernel_inject": False}),
    ("bert-base-uncased", {"sku": T4}, {"cuda_graph": False}),
    ("bert-base-uncased", {"sku": T4}, {"max_input_tokens": 128}),
    (J6B, {"hardware": CPU_BIG}, {"dtype": "float32"}),
    (J6B, {"hardware": CPU_BF16}, {"quantization": "int8"}),
    (J6B, {"hardware": CPU_BF16}, {"tensor_parallel": 2}),
    (J6B, {"hardware": CPU_BF16}, {"max_batch_size": 2}),
    pytest.param(J6B, {"sku": NC24ADS}, {"quantization": "none"}),
    pytest.param(J6B, {"sku": NC24ADS}, {"zero_offload": "none"}),
    pytest.param(J6B, {"hardware": CPU_BF16}, {"kernel_inject": False}),
    pytest.param(J6B, {"hardware": CPU_BF16}, {"cuda_graph": False}),
    pytest.param("facebook/opt-66b", {"sku": NC24ADS}, {"max_batch_size": 2}),
]


def short_id(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v.name if isinstance(v, Hardware) else v}" for k, v in value.items())
    return str(value).rsplit("/", 1)[-1]


@pytest.mark.parametrize("model,target,override", HONOURED, ids=short_id)
def test_valid_overrides_are_honoured_and_attributed_to_the_caller(model, target, override):
    facts = resolve_model(model)
    p = check_plan(plan(facts, **target, **override), facts)
    (name, value), = override.items()
    shown = {"none": None}.get(value, value) if name in ("quantization", "zero_offload") else value
    assert getattr(p, name) == shown
    assert p.overrides == (name,)
    if name in CHOICES:
        assert "caller" in p.reasons[name], p.reasons[name]


def test_several_overrides_are_listed_in_field_order():
    p = planned(J6B, sku=ND96AMSR, max_batch_size=4, dtype="float16", tensor_parallel=2)
    assert p.overrides == ("dtype", "tensor_parallel", "max_batch_size")
    assert (p.dtype, p.tensor_parallel, p.max_batch_size) == ("float16", 2, 4)


def test_overriding_tensor_parallel_and_quantization_within_the_gpus():
    p = planned("bigscience/bloom", sku=ND96AMSR, quantization="int8")
    assert p.quantization == "int8" and p.tensor_parallel == 4  # smallest degree int8 weights fit
    assert "caller" in p.reasons["quantization"]


# --------------------------------------------------------------------------- edge cases


def test_zero_offload_none_is_not_silently_replaced_by_offload():
    with pytest.raises(ConfigError):
        plan("bigscience/bloom", sku=NC24ADS, zero_offload="none")


@pytest.mark.parametrize("model,given,nearest", [("bigscience/bloom", 7, 8), ("facebook/opt-66b", 6, 8)])
def test_tensor_parallel_override_must_divide_the_gpu_count(model, given, nearest):
    with pytest.raises(ConfigError) as raised:
        plan(model, sku=ND96AMSR, tensor_parallel=given)
    assert raised.value.nearest == nearest


@pytest.mark.parametrize("override", [{"max_new_tokens": 4000}, {"max_new_tokens": 2048}, {"max_input_tokens": 2000}])
def test_prompt_and_continuation_fit_the_positions(override):
    try:
        p = plan(J6B, sku=NC24ADS, **override)
    except ConfigError as error:
        assert "max_new_tokens" in error.message or "max_input_tokens" in error.message
        return
    assert p.max_input_tokens >= 1 and p.max_input_tokens + p.max_new_tokens <= 2048


@pytest.mark.parametrize("model", ["bigscience/bloom", "facebook/opt-66b"])
@pytest.mark.parametrize("override", [{"tensor_parallel": 1}, {"quantization": "none"}])
def test_restating_the_offload_plans_own_choice_gives_the_same_plan(model, override):
    default = plan(model, sku=NC24ADS)
    again = plan(model, sku=NC24ADS, **override)
    assert (again.tensor_parallel, again.quantization, again.zero_offload) == (
        default.tensor_parallel, default.quantization, default.zero_offload
    )


@pytest.mark.parametrize("override,name,value", [({"tensor_parallel": 8}, "tensor_parallel", 8), ({"quantization": "int8"}, "quantization", "int8")])
def test_overrides_combined_with_zero_offload_are_not_silently_dropped(override, name, value):
    try:
        p = plan("bigscience/bloom", sku=ND96AMSR, zero_offload="cpu", **override)
    except ConfigError:
        return
    assert getattr(p, name) == value


@pytest.mark.parametrize("target", [{"sku": NC24ADS, "zero_offload": "cpu"}, {"hardware": CPU_BF16}], ids=["offload", "cpu"])
def test_max_batch_size_too_large_names_the_nearest_batch_on_every_path(target):
    model = "facebook/opt-66b" if "sku" in target else J6B
    default = plan(model, **target)
    with pytest.raises(ConfigError) as raised:
        plan(model, **target, max_batch_size=1000)
    assert getattr(raised.value, "nearest", None) == default.max_batch_size
    assert f"max_batch_size={default.max_batch_size}" in raised.value.message


def test_kv_cache_tokens_consistent_for_float32_with_int8():
    check_plan(plan(J6B, sku=NC24ADS, dtype="float32", quantization="int8"))


@pytest.mark.parametrize("alias", ["h100x8", "a100-80gbx8", "A100-40GBX8"])
def test_aliases_are_case_insensitive(alias):
    canonical = next(key for key in ALIASES if key.lower() == alias.lower())
    assert get_sku(alias) == get_sku(canonical)


def test_diffusion_max_input_tokens_is_limited_by_the_text_encoder():
    with pytest.raises(ConfigError, match="77"):
        plan("runwayml/stable-diffusion-v1-5", sku=T4, max_input_tokens=1000)


def test_cpu_with_unknown_ram_is_refused_with_the_fix(model_dirs):
    hardware = Hardware(name="box", kind="cpu", cpu_cores=4)
    with pytest.raises(ConfigError, match=r"Hardware\.cpu\(cores=\.\.\., ram_gb=\.\.\.\)"):
        plan(str(model_dirs["gpt2"]), hardware=hardware)


# --------------------------------------------------------------------------- 6. SKUs


@pytest.mark.parametrize(
    "name,expected",
    [
        ("A100-80GBx8", ND96AMSR),
        ("A100-40GBx8", ND96ASR),
        ("H100x8", "Standard_ND96isr_H100_v5"),
        ("V100", "Standard_ND40rs_v2"),  # a GPU alias with one size
        ("NC24ads", NC24ADS),
        ("nc24ADS", NC24ADS),
        ("ND96asr", ND96ASR),
        ("standard_nd96amsr_a100_v4", ND96AMSR),
        ("ND96amsr_A100_v4", ND96AMSR),
        (" Standard_NC4as_T4_v3 ", T4),
    ],
)
def test_get_sku_names_aliases_and_prefixes(name, expected):
    assert get_sku(name).instance_type == expected


@pytest.mark.parametrize("alias", ["ND96", "nd96", "A100", "a100", "T4", "t4", "A10", "H100"])
def test_get_sku_refuses_an_alias_of_several_sizes_and_lists_them_with_prices(alias):
    with pytest.raises(ConfigError) as raised:
        get_sku(alias)
    candidates = raised.value.candidates
    assert len(candidates) > 1 and raised.value.reason == "ambiguous"
    for name in candidates:
        sku = get_sku(name)
        assert f"{name} (${sku.usd_per_hour:,.2f}/h)" in raised.value.message


def test_plan_with_a_group_alias_is_the_plan_on_the_size_it_chose():
    # "ND96" is every ND96 size on the endpoint list; BLOOM fits fp16 without int8 first on 8x A100 80GB.
    by_alias = plan("bigscience/bloom", sku="ND96")
    by_name = plan("bigscience/bloom", sku=ND96AMSR)
    assert by_alias.hardware.name == ND96AMSR
    assert ND96AMSR in by_alias.reasons["sku"] and "sku" not in by_name.reasons
    assert by_alias.model_copy(update={"reasons": {k: v for k, v in by_alias.reasons.items() if k != "sku"}}) == by_name
    assert plan("bigscience/bloom", sku="nc24ads").hardware.name == NC24ADS


def test_unknown_sku_lists_the_catalog():
    with pytest.raises(ConfigError) as raised:
        plan("bigscience/bloom", sku="Standard_NotAGpu_v9")
    message = raised.value.message
    assert "not in the Azure GPU SKU catalog" in message
    for sku in catalog():
        assert sku.instance_type in message
    assert "ND96" in message  # the aliases too
    assert raised.value.candidates == [sku.instance_type for sku in catalog()]


@pytest.mark.parametrize("prefix,count", [("ND96a", 2), ("NC", 9), ("ND96i", 2)])
def test_ambiguous_prefix(prefix, count):
    with pytest.raises(ConfigError) as raised:
        get_sku(prefix)
    assert "matches several SKUs" in raised.value.message
    assert len(raised.value.candidates) == count
    assert all(name.lower().startswith(f"standard_{prefix.lower()}") for name in raised.value.candidates)


def test_sku_and_hardware_together():
    with pytest.raises(ConfigError, match="either sku= or hardware="):
        plan("bigscience/bloom", sku="ND96", hardware=CPU_BF16)


def test_unknown_override_keyword():
    with pytest.raises(ConfigError) as raised:
        plan("bigscience/bloom", sku="ND96", tensor_paralel=8)
    assert "tensor_paralel" in raised.value.message and raised.value.overrides == {"tensor_paralel": 8}


def test_catalog_numbers():
    skus = catalog()
    assert len(skus) >= 10 and len({sku.instance_type for sku in skus}) == len(skus)
    for sku in skus:
        for field in ("gpus", "gpu_memory_gb", "gpu_bandwidth_gb_s", "gpu_fp16_tflops", "interconnect_gb_s", "vcpus"):
            assert getattr(sku, field) > 0, (sku.instance_type, field)
        for field in ("gpu_int8_tops", "ram_gib", "usd_per_hour"):
            assert getattr(sku, field) is None or getattr(sku, field) > 0, (sku.instance_type, field)
        assert sku.instance_type.startswith("Standard_")
        hw = sku.hardware
        assert (hw.kind, hw.gpus, hw.gpu_memory_gb, hw.bf16) == ("gpu", sku.gpus, sku.gpu_memory_gb, sku.bf16)
        assert hw.total_gpu_memory_gb == sku.gpus * sku.gpu_memory_gb
        if sku.ram_gib:
            assert hw.ram_gb == pytest.approx(sku.ram_gib * 2**30 / 1e9)
        assert CATALOG_AS_OF in hw.source
    without_bf16 = {sku.gpu_model.split("-")[0] for sku in skus if not sku.bf16}
    assert without_bf16 == {"T4", "V100"}
    assert all(not sku.bf16 for sku in skus if sku.gpu_model.startswith(("T4", "V100")))
    # The documented hardware of the table tests.
    assert (get_sku(ND96AMSR).gpus, get_sku(ND96AMSR).gpu_memory_gb) == (8, 80)
    assert (get_sku(ND96ASR).gpus, get_sku(ND96ASR).gpu_memory_gb) == (8, 40)
    assert (get_sku(NC24ADS).gpus, get_sku(NC24ADS).gpu_memory_gb) == (1, 80)
    assert all(alias_target in {s.instance_type for s in skus} for alias_target in ALIASES.values())


def test_catalog_csv_says_its_sources_and_date():
    from importlib import resources

    text = resources.files("mii_azure").joinpath("data/azure_gpu_skus.csv").read_text(encoding="utf-8")
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments and text.startswith("#")
    header = "\n".join(comments)
    assert f"as of {CATALOG_AS_OF}" in header
    assert "Sources:" in header and "NVIDIA" in header and "Retail Prices" in header


# --------------------------------------------------------------------------- 7. where facts come from


def test_facts_source_of_a_well_known_model_and_of_a_local_folder(model_dirs):
    known = plan("bigscience/bloom", sku="ND96")
    assert "catalog" in known.facts_source and "no weights" in known.facts_source
    assert "catalog" in known.reasons["model facts"] and "estimated from the configuration" in known.reasons["model facts"]
    local = plan(str(model_dirs["gpt2"]), sku=T4)
    assert local.facts_source == "config.json"
    assert "config.json" in local.reasons["model facts"] and "safetensors headers" in local.reasons["model facts"]


# --------------------------------------------------------------------------- 8. CLI


def test_cli_plan_json(capsys):
    assert main(["plan", "bigscience/bloom", "--sku", "ND96asr", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["quantization"] == "int8" and data["tensor_parallel"] == 8
    assert data["hardware"]["name"] == ND96ASR
    assert OptimizationPlan.from_dict(data) == plan("bigscience/bloom", sku=ND96ASR)


def test_cli_plan_text_prints_the_reasons(capsys):
    assert main(["plan", "bigscience/bloom", "--sku", "ND96"]) == 0
    out = capsys.readouterr().out
    expected = plan("bigscience/bloom", sku="ND96")
    assert out.strip() == expected.describe()
    assert "why:" in out
    for choice in CHOICES:
        assert f"    {choice}: {expected.reasons[choice]}" in out


def test_cli_plan_overrides(capsys):
    assert main(["plan", "bert-base-uncased", "--sku", "T4", "--json", "--no-cuda-graph", "--max-batch-size", "8"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cuda_graph"] is False and data["max_batch_size"] == 8
    assert data["overrides"] == ["cuda_graph", "max_batch_size"]


def test_cli_plan_shows_and_overrides_replicas(capsys):
    assert main(["plan", "meta-llama/Llama-2-70b-hf", "--sku", "ND96asr"]) == 0
    out = capsys.readouterr().out
    assert "tensor_parallel=4 replicas=2" in out and "    replicas: 2: " in out
    assert main(["plan", "bert-base-uncased", "--sku", "ND96", "--json", "--replicas", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["replicas"] == 3 and data["overrides"] == ["replicas"]
    assert main(["plan", "bigscience/bloom", "--sku", "ND96", "--replicas", "2"]) == 1
    assert "use replicas=1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--sku", "ND96", "--tensor-parallel", "16"], "use tensor_parallel=8"),
        (["--sku", "ND96", "--cuda-graph"], "use cuda_graph=False"),
        (["--sku", "ND9"], "matches several SKUs"),
    ],
)
def test_cli_conflict_exits_1_with_one_error_line(capsys, args, needle):
    assert main(["plan", "bigscience/bloom", *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in captured.err


# --------------------------------------------------------------------------- 9. no torch


def test_planning_a_well_known_model_does_not_import_torch(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        import mii_azure
        from mii_azure import Hardware, plan
        plans = [
            plan("bigscience/bloom", sku="ND96asr"),
            plan("runwayml/stable-diffusion-v1-5", sku="T4"),
            plan("gpt-j-6b", hardware=Hardware.cpu(cores=2, ram_gb=64, bf16=True)),
        ]
        assert plans[0].quantization == "int8", plans[0]
        heavy = sorted(name for name in ("torch", "transformers", "diffusers", "deepspeed") if name in sys.modules)
        print("HEAVY=" + ",".join(heavy))
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout, result.stdout
