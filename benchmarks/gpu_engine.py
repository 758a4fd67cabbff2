"""GPU benchmark: Hugging Face eager fp16 against the engine's planned DeepSpeed-Inference path.

On one H100/H200, for GPT-2-XL-, GPT-J-6B- and OPT-13B-shaped models built from configs with random
weights (no hub): per-token decode latency at batch 1, throughput at batch 32, and the decode
memory-bandwidth utilization (weight bytes read per token / time per token / the GPU's peak bandwidth
from the SKU catalog). The engine path is ``mii_azure.planner.make_plan`` for this GPU followed by
``mii_azure.runtime.optimize.apply_plan`` (kernel injection; CUDA graphs where planned), the code the
serving engine runs. Each figure is the median of ``--runs`` repetitions, baseline and engine in the
same process on the same weights. Designed to finish within 8 minutes:

    python benchmarks/gpu_engine.py --runs 3

Results go to ``benchmarks/results/gpu_engine.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import model_factory  # noqa: E402

from mii_azure.config import ServingSettings  # noqa: E402
from mii_azure.hardware import Hardware  # noqa: E402
from mii_azure.models import ModelRef, ModelSource, config_facts  # noqa: E402
from mii_azure.planner import make_plan  # noqa: E402
from mii_azure.runtime.optimize import apply_plan  # noqa: E402
from mii_azure.skus import catalog  # noqa: E402
from mii_azure.tasks.generation import TextGeneration  # noqa: E402

SHAPES = {
    "gpt2-xl": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25, "n_positions": 1024, "vocab_size": 50257},
    "gpt-j-6b": {"architectures": ["GPTJForCausalLM"], "model_type": "gptj", "n_embd": 4096, "n_layer": 28, "n_head": 16, "n_positions": 2048, "rotary_dim": 64, "vocab_size": 50400, "tie_word_embeddings": False},
    "opt-13b": {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 5120, "ffn_dim": 20480, "num_hidden_layers": 40, "num_attention_heads": 40, "max_position_embeddings": 2048, "vocab_size": 50272, "word_embed_proj_dim": 5120},
}
PROMPT_TOKENS = 32
NEW_TOKENS = 64
BATCH = 32


def gpu_peak_bandwidth(name: str) -> tuple[str, float]:
    """The catalog GPU whose model name appears in the device name, and its HBM GB/s."""
    lowered = name.lower()
    for sku in catalog():
        model = sku.gpu_model.lower()
        if model.split("-")[0] in lowered and ("nvl" in model) == ("nvl" in lowered):
            return sku.gpu_model, sku.gpu_bandwidth_gb_s
    return name, float("nan")


def generate(model, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy tokens, as the serving task runs them (DeepSpeed's KV cache cleared first)."""
    reset = getattr(model, "reset_cache", None)
    if callable(reset):
        reset()
    with torch.inference_mode():
        return model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )


def timed_generate(model, input_ids: torch.Tensor, new_tokens: int) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    generate(model, input_ids, new_tokens)
    torch.cuda.synchronize()
    return time.perf_counter() - started


def greedy_agreement(baseline: torch.Tensor, engine: torch.Tensor) -> float:
    """Share of new tokens where the engine chose what the baseline chose, up to the first difference
    (after one, the sequences continue from different prefixes)."""
    same = (baseline == engine).int().cumprod(dim=-1)
    return float(same.float().mean())


def measure(model, vocab: int, runs: int) -> dict:
    """Per-token latency at batch 1 (decode only: prompt pass subtracted) and tokens/s at batch 32."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    single = torch.randint(0, vocab, (1, PROMPT_TOKENS), device="cuda", generator=generator)
    batch = torch.randint(0, vocab, (BATCH, PROMPT_TOKENS), device="cuda", generator=generator)
    timed_generate(model, single, 4)  # warm-up (and CUDA graph capture where used)
    per_token, throughput = [], []
    for _ in range(runs):
        prefill = timed_generate(model, single, 1)
        full = timed_generate(model, single, NEW_TOKENS)
        per_token.append((full - prefill) / (NEW_TOKENS - 1))
        throughput.append(BATCH * NEW_TOKENS / timed_generate(model, batch, NEW_TOKENS))
    return {
        "per_token_latency_ms": 1000 * statistics.median(per_token),
        "throughput_tokens_per_s_batch32": statistics.median(throughput),
        "runs": runs,
    }


def benchmark_shape(name: str, config: dict, runs: int, tokenizer, gpu: Hardware, peak: float) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    facts = config_facts(ModelRef(reference=name, source=ModelSource.HUB, name=name), config)
    hf_config = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k not in ("model_type", "architectures")})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float16).eval()
    parameters = sum(p.numel() for p in model.parameters())
    check_prompts = torch.randint(0, config["vocab_size"], (4, PROMPT_TOKENS), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    baseline_tokens = generate(model, check_prompts, 16)[:, PROMPT_TOKENS:]
    baseline = measure(model, config["vocab_size"], runs)

    plan = make_plan(facts, gpu)
    task = TextGeneration(facts, ServingSettings(), model, tokenizer)
    applied = apply_plan(task, plan)
    engine = measure(task.model, config["vocab_size"], runs)
    engine_tokens = generate(task.model, check_prompts, 16)[:, PROMPT_TOKENS:]

    bytes_per_token = parameters * 2
    for result in (baseline, engine):
        seconds = result["per_token_latency_ms"] / 1000
        result["decode_bandwidth_utilization"] = bytes_per_token / seconds / (peak * 1e9)
    del task, model
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "parameters": parameters,
        "plan": {key: getattr(plan, key) for key in ("dtype", "tensor_parallel", "kernel_inject", "quantization", "cuda_graph", "max_batch_size")},
        "applied": applied.model_dump(),
        "baseline_hf_eager_fp16": baseline,
        "engine": engine,
        "greedy_agreement_with_baseline": greedy_agreement(baseline_tokens, engine_tokens),
        "latency_speedup": baseline["per_token_latency_ms"] / engine["per_token_latency_ms"],
        "throughput_speedup": engine["throughput_tokens_per_s_batch32"] / baseline["throughput_tokens_per_s_batch32"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_engine.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("This benchmark needs a CUDA GPU.")

    started = time.perf_counter()
    device_name = torch.cuda.get_device_name(0)
    gpu_model, peak = gpu_peak_bandwidth(device_name)
    gpu = Hardware.local()
    gpu = gpu.model_copy(update={"gpus": 1, "gpu_bandwidth_gb_s": peak})
    tokenizer = model_factory._gpt2_tokenizer(model_max_length=2048)
    results = {}
    for name in args.models:
        results[name] = benchmark_shape(name, SHAPES[name], args.runs, tokenizer, gpu, peak)
        print(name, json.dumps({key: results[name][key] for key in ("latency_speedup", "throughput_speedup")}), flush=True)
    report = {
        "benchmark": "gpu_engine",
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name,
        "gpu_model_in_catalog": gpu_model,
        "peak_bandwidth_gb_s": peak,
        "torch": torch.__version__,
        "workload": {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, "batch_for_throughput": BATCH, "decoding": "greedy"},
        "models": results,
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
