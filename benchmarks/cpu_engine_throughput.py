"""CPU benchmark: the engine (planned CPU path + dynamic batching) against plain transformers.

Workload (the engine issue's): a GPT-2-small-shaped model (124M parameters, random weights), 32
concurrent text-generation requests of 32 prompt tokens and 32 new tokens, greedy.

* baseline: ``transformers.pipeline("text-generation")`` in fp32, answering one request at a time;
* engine: ``mii_azure`` with the plan it makes for this machine (bf16 where the CPU has it) and its
  batcher, 32 client threads calling the scoring service at once.

Both run in the same process, several times each; medians are reported, with the ratio. Also the
decode memory-bandwidth utilization at batch 1: weight bytes read per token / time per token / this
machine's measured read bandwidth. Run:

    .venv/bin/python benchmarks/cpu_engine_throughput.py --runs 3

Results go to ``benchmarks/results/cpu_engine_throughput.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import model_factory  # noqa: E402

from mii_azure.hardware import Hardware  # noqa: E402
from mii_azure.models import resolve_model  # noqa: E402
from mii_azure.planner import make_plan  # noqa: E402
from mii_azure.runtime.engine import Engine  # noqa: E402
from mii_azure.runtime.service import ScoringService  # noqa: E402

GPT2_SMALL = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": 3072}
REQUESTS = 32
PROMPT_TOKENS = 32
NEW_TOKENS = 32
WORDS = "the cat sat on a mat while dogs ran past quickly and birds sang songs of summer in green trees by the river".split()


def measure_read_bandwidth(megabytes: int = 256, repeats: int = 7) -> float:
    """GB/s of reading a large tensor (sum over it), median of several passes."""
    data = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    data.sum()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        timings.append(time.perf_counter() - started)
    return data.numel() * 4 / statistics.median(timings) / 1e9


def prompts_of_exact_length(tokenizer, count: int, length: int) -> list[str]:
    """Distinct prompts that tokenize to exactly ``length`` tokens."""
    prompts = []
    for index in range(count):
        words = [WORDS[(index * 7 + offset) % len(WORDS)] for offset in range(length * 2)]
        text = ""
        for word in words:
            candidate = (text + " " + word).strip()
            if len(tokenizer(candidate)["input_ids"]) > length:
                break
            text = candidate
        while len(tokenizer(text)["input_ids"]) < length:
            text += "."
        ids = tokenizer(text)["input_ids"][:length]
        prompts.append(tokenizer.decode(ids))
        assert len(tokenizer(prompts[-1])["input_ids"]) == length, prompts[-1]
    return prompts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_baseline(model_dir: Path, prompts: list[str]) -> dict:
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(model_dir), dtype=torch.float32, device="cpu")
    generator(prompts[0], max_new_tokens=2, do_sample=False)  # warm-up
    latencies = []
    started = time.perf_counter()
    for prompt in prompts:
        began = time.perf_counter()
        generator(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, return_full_text=False)
        latencies.append(time.perf_counter() - began)
    wall = time.perf_counter() - started
    tokens = len(prompts) * NEW_TOKENS
    return {"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall, "latencies_s": latencies}


def run_engine(service: ScoringService, prompts: list[str]) -> dict:
    barrier = threading.Barrier(len(prompts))
    latencies: list[float] = [0.0] * len(prompts)
    tokens: list[int] = [0] * len(prompts)

    def call(index: int) -> None:
        barrier.wait()
        began = time.perf_counter()
        answer = service.score({"query": prompts[index], "parameters": {"max_new_tokens": NEW_TOKENS}})
        latencies[index] = time.perf_counter() - began
        tokens[index] = answer["responses"][0]["num_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        list(pool.map(call, range(len(prompts))))
    wall = time.perf_counter() - started
    return {"tokens": sum(tokens), "wall_s": wall, "tokens_per_s": sum(tokens) / wall, "latencies_s": latencies}


def single_request_latency(service: ScoringService, prompt: str, repeats: int) -> list[float]:
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        service.score({"query": prompt, "parameters": {"max_new_tokens": NEW_TOKENS}})
        timings.append(time.perf_counter() - began)
    return timings


def summarize(runs: list[dict]) -> dict:
    latencies = [latency for run in runs for latency in run["latencies_s"]]
    return {
        "runs": len(runs),
        "tokens_per_s_median": statistics.median(run["tokens_per_s"] for run in runs),
        "tokens_per_s_each_run": [round(run["tokens_per_s"], 2) for run in runs],
        "latency_p50_s": percentile(latencies, 0.50),
        "latency_p95_s": percentile(latencies, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (median reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_engine_throughput.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    bandwidth = measure_read_bandwidth()
    model_dir = model_factory.build_gpt2(Path(tempfile.mkdtemp()) / "gpt2-small-shape", **GPT2_SMALL)
    facts = resolve_model(model_dir)
    hardware = Hardware.local(cpu_bandwidth_gb_s=bandwidth)
    plan = make_plan(facts, hardware)
    engine = Engine.load(model_dir, plan=plan)
    service = ScoringService(engine)
    prompts = prompts_of_exact_length(engine.task.tokenizer, REQUESTS, PROMPT_TOKENS)
    print(f"model: {facts.parameter_count:,} parameters; plan: {plan.dtype}, batch {plan.max_batch_size}; "
          f"read bandwidth {bandwidth:.1f} GB/s", flush=True)

    baseline_runs, engine_runs, single = [], [], []
    for run in range(args.runs):
        baseline_runs.append(run_baseline(model_dir, prompts))
        engine_runs.append(run_engine(service, prompts))
        single += single_request_latency(service, prompts[run % len(prompts)], repeats=3)
        print(f"run {run + 1}: baseline {baseline_runs[-1]['tokens_per_s']:.1f} tok/s, "
              f"engine {engine_runs[-1]['tokens_per_s']:.1f} tok/s", flush=True)

    baseline, optimized = summarize(baseline_runs), summarize(engine_runs)
    baseline_single = statistics.median(latency for run in baseline_runs for latency in run["latencies_s"])
    engine_single = statistics.median(single)
    bytes_per_token = facts.parameter_count * (2 if plan.dtype in ("bfloat16", "float16") else 4)
    seconds_per_token = engine_single / NEW_TOKENS  # includes the prompt pass: a lower bound on utilization
    result = {
        "benchmark": "cpu_engine_throughput",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "processor": _cpu_model(),
            "cores": hardware.cpu_cores,
            "bf16": hardware.bf16,
            "read_bandwidth_gb_s": round(bandwidth, 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "workload": {
            "model": "GPT-2-small shape, random weights",
            "parameters": facts.parameter_count,
            "requests": REQUESTS,
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": NEW_TOKENS,
            "decoding": "greedy",
        },
        "plan": {"dtype": plan.dtype, "max_batch_size": plan.max_batch_size, "applied": engine.applied.model_dump()},
        "baseline": {"what": "transformers.pipeline fp32, one request at a time", **baseline},
        "engine": {"what": "mii_azure engine, 32 concurrent clients", **optimized},
        "throughput_ratio": optimized["tokens_per_s_median"] / baseline["tokens_per_s_median"],
        "single_request_latency_s": {"baseline": baseline_single, "engine": engine_single,
                                     "ratio": engine_single / baseline_single},
        "decode_bandwidth_utilization_batch1": {
            "bytes_per_token": bytes_per_token,
            "seconds_per_token": seconds_per_token,
            "utilization": bytes_per_token / seconds_per_token / (bandwidth * 1e9),
        },
        "batcher": engine.batcher.stats.__dict__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("throughput_ratio", "single_request_latency_s", "decode_bandwidth_utilization_batch1")}, indent=2))
    print(f"baseline {baseline['tokens_per_s_median']:.1f} tok/s (p50 {baseline['latency_p50_s']:.2f} s, p95 {baseline['latency_p95_s']:.2f} s); "
          f"engine {optimized['tokens_per_s_median']:.1f} tok/s (p50 {optimized['latency_p50_s']:.2f} s, p95 {optimized['latency_p95_s']:.2f} s)")
    engine.close()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
