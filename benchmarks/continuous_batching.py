"""CPU benchmark: continuous batching against request-level batching and one-at-a-time transformers.

Workload (issue 12): a GPT-2-small-shaped model (124M parameters, random weights), 64 text-generation
requests whose max_new_tokens is drawn from {8, 32, 128} (fixed seed), prompts of 8 to 40 words,
greedy, arriving as a Poisson process at the continuous engine's measured saturated request rate.
Every request streams, so time to first token is measured on the same run.

* continuous: ``mii_azure``'s engine as it serves (per-step scheduling);
* request-level: the same engine with ``continuous_batching=False`` (today's batching before it);
* naive: plain ``transformers`` ``generate``, one request at a time in arrival order.

Throughput is generated tokens over the makespan (first arrival to last answer). The two engine
modes run ``--runs`` times each, interleaved, in this process; medians are reported with their
ratio. Also measured: an 8-token request's latency alone (median of 5), and, offline (all requests
at once), ``transformers``' own continuous batching (``ContinuousBatchingManager`` over a paged KV
cache) against this engine's scheduler. Run:

    .venv/bin/python benchmarks/continuous_batching.py --runs 3

Results go to ``benchmarks/results/continuous_batching.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import model_factory  # noqa: E402

from mii_azure.config import ServingSettings  # noqa: E402
from mii_azure.runtime.engine import Engine  # noqa: E402
from mii_azure.runtime.generation import StreamEnd, TextPiece  # noqa: E402
from mii_azure.tasks.base import Deadline, ScoringRequest  # noqa: E402

GPT2_SMALL = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": 3072}
LENGTHS = (8, 32, 128)
WORDS = "the cat sat on a mat while dogs ran past quickly and birds sang songs of summer in green trees by the river".split()
DEADLINE_S = 3600.0


def give_every_id_text(model_dir: Path, vocab_size: Any) -> None:
    """Add tokens to the tiny tokenizer up to the model's vocabulary, so that every id the random
    model generates decodes to some text and streams as a piece (time to first token is then real)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    missing = (vocab_size or len(tokenizer)) - len(tokenizer)
    if missing > 0:
        tokenizer.add_tokens([f" w{index}" for index in range(missing)])
        tokenizer.save_pretrained(str(model_dir))


def workload(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choices(WORDS, k=rng.randint(8, 40))), rng.choice(LENGTHS)) for _ in range(count)]


def arrivals(count: int, rate: float, seed: int) -> list[float]:
    """Poisson arrival times (seconds from the start) at ``rate`` requests per second."""
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate)
    return times


def _request(engine: Engine, prompt: str, new_tokens: int) -> ScoringRequest:
    return ScoringRequest([prompt], type(engine.task).parse_parameters({"max_new_tokens": new_tokens}))


def serve_engine(engine: Engine, work: list[tuple[str, int]], schedule: list[float]) -> list[dict[str, Any]]:
    """Each request streams from its own thread, released at its arrival time."""
    records: list[dict[str, Any]] = [{} for _ in work]
    start = time.perf_counter() + 0.05

    def client(index: int) -> None:
        prompt, new_tokens = work[index]
        time.sleep(max(0.0, start + schedule[index] - time.perf_counter()))
        arrived = time.perf_counter()
        first = None
        entry: dict[str, Any] = {}
        for event in engine.stream(_request(engine, prompt, new_tokens), Deadline(DEADLINE_S)):
            if isinstance(event, TextPiece) and first is None:
                first = time.perf_counter()
            if isinstance(event, StreamEnd):
                entry = event.entry
        done = time.perf_counter()
        records[index] = {"class": new_tokens, "arrived": arrived - start, "first": (first or done) - arrived,
                          "latency": done - arrived, "done": done - start, "tokens": entry.get("num_tokens", 0)}

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def serve_naive(model: Any, tokenizer: Any, work: list[tuple[str, int]], schedule: list[float]) -> list[dict[str, Any]]:
    """One request at a time, in arrival order, with plain ``generate``."""
    records = []
    start = time.perf_counter()
    for (prompt, new_tokens), arrival in zip(work, schedule):
        time.sleep(max(0.0, start + arrival - time.perf_counter()))
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        done = time.perf_counter()
        new = output[0, encoded["input_ids"].shape[1] :].tolist()
        tokens = new.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in new else len(new)
        latency = done - (start + arrival)
        records.append({"class": new_tokens, "arrived": arrival, "first": latency, "latency": latency,
                        "done": done - start, "tokens": tokens})
    return records


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    makespan = max(r["done"] for r in records) - min(r["arrived"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    summary: dict[str, Any] = {
        "answered": sum(1 for r in records if r), "generated_tokens": tokens, "makespan_s": round(makespan, 3),
        "throughput_tokens_s": round(tokens / makespan, 2),
        "ttft_p50_s": round(_percentile([r["first"] for r in records], 50), 4),
        "ttft_p95_s": round(_percentile([r["first"] for r in records], 95), 4),
    }
    for length in LENGTHS:
        latencies = [r["latency"] for r in records if r["class"] == length]
        if latencies:
            summary[f"latency_p50_s_{length}"] = round(_percentile(latencies, 50), 4)
            summary[f"latency_p95_s_{length}"] = round(_percentile(latencies, 95), 4)
    return summary


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def saturated_rate(engine: Engine, work: list[tuple[str, int]]) -> float:
    """Requests per second the engine answers when every request arrives at once."""
    records = serve_engine(engine, work, [0.0] * len(work))
    return len(work) / max(r["done"] for r in records)


def alone_latency(engine: Engine, prompt: str, new_tokens: int, runs: int = 5) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.infer(_request(engine, prompt, new_tokens), Deadline(DEADLINE_S))
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def offline_transformers_cb(model_dir: Path, dtype: torch.dtype, work: list[tuple[str, int]], tokenizer: Any) -> dict[str, Any]:
    """transformers' own continuous batching (paged KV cache), every request submitted at once."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="paged|sdpa").eval()
    config = GenerationConfig(max_new_tokens=max(LENGTHS), do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.eos_token_id)
    manager = model.init_continuous_batching(generation_config=config)
    manager.start()
    try:
        started = time.perf_counter()
        for index, (prompt, new_tokens) in enumerate(work):
            manager.add_request(tokenizer(prompt)["input_ids"], request_id=f"r{index}", max_new_tokens=new_tokens)
        tokens, answered = 0, 0
        while answered < len(work):
            result = manager.get_result(timeout=DEADLINE_S)
            if result is None or not result.is_finished():
                continue
            answered += 1
            tokens += len(result.generated_tokens)
        elapsed = time.perf_counter() - started
    finally:
        manager.stop(block=True)
    return {"answered": answered, "generated_tokens": tokens, "makespan_s": round(elapsed, 3),
            "throughput_tokens_s": round(tokens / elapsed, 2)}


def offline_engine(engine: Engine, work: list[tuple[str, int]]) -> dict[str, Any]:
    records = serve_engine(engine, work, [0.0] * len(work))
    return summarize(records)


def _timed(label: str, run: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = run()
    print(f"{label}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="Poisson runs of each engine mode (medians reported)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", default="gpt2-small", choices=["gpt2-small", "tiny"], help="tiny: a quick smoke run")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "continuous_batching.json")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    shape = GPT2_SMALL if args.shape == "gpt2-small" else {"n_positions": 256}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = model_factory.build_gpt2(Path(scratch) / "gpt2", **shape)
        give_every_id_text(model_dir, shape.get("vocab_size"))
        continuous = Engine.load(model_dir)
        request_level = Engine.load(model_dir, settings=ServingSettings(continuous_batching=False))
        dtype = getattr(torch, continuous.plan.dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        work = workload(args.requests, args.seed)

        rate = _timed("saturated rate", lambda: saturated_rate(continuous, work))
        schedule = arrivals(len(work), rate, args.seed)
        runs: dict[str, list[dict[str, Any]]] = {"continuous": [], "request_level": []}
        for run in range(args.runs):
            runs["continuous"].append(_timed(f"continuous run {run}", lambda: summarize(serve_engine(continuous, work, schedule))))
            runs["request_level"].append(_timed(f"request-level run {run}", lambda: summarize(serve_engine(request_level, work, schedule))))
        short = next(prompt for prompt, length in work if length == 8)
        alone_8 = _timed("alone", lambda: alone_latency(continuous, short, 8))
        offline = {
            "engine_continuous": _timed("offline engine", lambda: offline_engine(continuous, work)),
            "transformers_continuous_batching": _timed(
                "offline transformers CB", lambda: offline_transformers_cb(model_dir, dtype, work, tokenizer)),
        }
        continuous.close()
        request_level.close()
        naive = None
        if not args.skip_naive:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
            naive = _timed("naive", lambda: summarize(serve_naive(model, tokenizer, work, schedule)))

    median = {mode: {key: statistics.median(r[key] for r in results) for key in results[0]} for mode, results in runs.items()}
    ratio = median["continuous"]["throughput_tokens_s"] / median["request_level"]["throughput_tokens_s"]
    p50_8 = median["continuous"]["latency_p50_s_8"]
    result = {
        "benchmark": "continuous_batching",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
                     "platform": platform.platform(), "torch": torch.__version__},
        "model": {"shape": shape, "dtype": str(dtype).replace("torch.", ""), "random_weights": True},
        "workload": {"requests": len(work), "max_new_tokens_from": LENGTHS, "seed": args.seed, "greedy": True,
                     "arrivals": "Poisson", "rate_requests_s": round(rate, 4)},
        "engine": {"max_batch_size": continuous.batcher.max_batch_size,
                   "kv_cache_tokens": getattr(continuous.batcher, "kv_cache_tokens", None)},
        "runs": runs,
        "median": median,
        "naive_one_at_a_time": naive,
        "alone_latency_s_8_tokens": round(alone_8, 4),
        "offline_all_at_once": offline,
        "throughput_ratio_continuous_vs_request_level": round(ratio, 3),
        "throughput_ratio_continuous_vs_naive": round(median["continuous"]["throughput_tokens_s"] / naive["throughput_tokens_s"], 3) if naive else None,
        "latency_p50_8_tokens_vs_alone": round(p50_8 / alone_8, 3),
        "offline_ratio_engine_vs_transformers_cb": round(
            offline["engine_continuous"]["throughput_tokens_s"] / offline["transformers_continuous_batching"]["throughput_tokens_s"], 3),
        "targets": {"throughput_at_least_1.5x_request_level": ratio >= 1.5,
                    "p50_8_token_latency_at_most_3x_alone": p50_8 / alone_8 <= 3,
                    "all_answered": all(r["answered"] == len(work) for rs in runs.values() for r in rs)},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("throughput_ratio_continuous_vs_request_level", "latency_p50_8_tokens_vs_alone",
                                                   "offline_ratio_engine_vs_transformers_cb", "targets")}, indent=2))


if __name__ == "__main__":
    main()
