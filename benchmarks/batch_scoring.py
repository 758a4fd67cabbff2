"""CPU benchmark: ``mii_azure.batch_score`` against the local harness under 32 concurrent HTTP clients.

Workload (issue 11): a GPT-2-small-shaped model (124M parameters, random weights, built by
``tests/model_factory.build_gpt2`` with the shape of ``benchmarks/continuous_batching.py``), ``--rows``
text-generation requests (prompts of 8 to 40 words, max_new_tokens drawn from {4, 8, 16}, fixed seed,
greedy), the same requests both ways:

* batch: a JSON Lines file of the requests scored by ``mii_azure.batch_score`` (engine in this process);
* harness: ``mii_azure.deploy(model, local=True)`` (the real inference server, its own process) with
  32 client threads, each posting one request to ``/score`` after another until none is left.

Rows/s and generated tokens/s are over the scoring time: for batch scoring from the first request to
the last record written (the engine's load is reported apart), for the harness from the first post
to the last answer. The two alternate ``--runs`` times (their order swapped each run); medians are
reported with their ratio. Everything runs on this machine, clients included; each run records the
machine's load average before it, since other work on a shared machine slows both alike. Run:

    .venv/bin/python benchmarks/batch_scoring.py --runs 3

Results go to ``benchmarks/results/batch_scoring.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import model_factory  # noqa: E402
from continuous_batching import GPT2_SMALL  # noqa: E402

import mii_azure  # noqa: E402

CLIENTS = 32
NEW_TOKENS = (4, 8, 16)
WORDS = "the cat sat on a mat while dogs ran past quickly and birds sang songs of summer in green trees by the river".split()


def workload(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` requests in the DESIGN.md section-3 shape."""
    rng = random.Random(seed)
    return [{"query": " ".join(rng.choices(WORDS, k=rng.randint(8, 40))), "parameters": {"max_new_tokens": rng.choice(NEW_TOKENS)}}
            for _ in range(count)]


def _post(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def run_harness(url: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """``CLIENTS`` threads post the requests one after another each; the answers' entries by row."""
    todo: "queue.Queue[int]" = queue.Queue()
    for index in range(len(requests)):
        todo.put(index)
    entries: list[Any] = [None] * len(requests)
    failures: list[str] = []

    def client() -> None:
        while True:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            try:
                entries[index] = _post(url, requests[index])["responses"][0]
            except Exception as exc:  # counted and reported, never hidden
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return _figures(entries, seconds, failures=failures)


def run_batch(model_dir: Path, requests: list[dict[str, Any]], scratch: Path) -> dict[str, Any]:
    """The requests as a JSON Lines file through ``batch_score``; the records' entries by row."""
    source, target = scratch / "requests.jsonl", scratch / "records.jsonl"
    source.write_text("".join(json.dumps(request) + "\n" for request in requests))
    started = time.perf_counter()
    summary = mii_azure.batch_score(model_dir, source, target, resume=False, quiet=True)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in target.read_text().splitlines()]
    if [record["line"] for record in records] != list(range(1, len(requests) + 1)):
        raise RuntimeError("batch_score did not write one record per line in order")
    failures = [json.dumps(record["error"]) for record in records if "error" in record]
    entries = [record["responses"][0] if "responses" in record else None for record in records]
    figures = _figures(entries, summary.seconds, failures=failures)
    figures["load_s"] = round(wall - summary.seconds, 3)
    return figures


def _figures(entries: list[Any], seconds: float, *, failures: list[str]) -> dict[str, Any]:
    answered = [entry for entry in entries if entry is not None]
    tokens = sum(entry["num_tokens"] for entry in answered)
    return {
        "answered": len(answered), "failures": len(failures), "first_failure": failures[0] if failures else None,
        "generated_tokens": tokens, "seconds": round(seconds, 3),
        "rows_per_s": round(len(answered) / seconds, 3), "tokens_per_s": round(tokens / seconds, 2),
        "_entries": entries,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "mii-azure", "azureml-inference-server-http")}


def _engine_plan(model_dir: Path) -> dict[str, Any]:
    """The plan batch scoring makes on this machine (an engine loaded as batch_score loads it)."""
    from mii_azure.config import ServingSettings
    from mii_azure.runtime.engine import Engine

    engine = Engine.load(model_dir, settings=ServingSettings())
    try:
        return {"dtype": engine.plan.dtype, "max_batch_size": engine.batcher.max_batch_size,
                "batcher": type(engine.batcher).__name__}
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each (medians reported)")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", default="gpt2-small", choices=["gpt2-small", "tiny"], help="tiny: a quick smoke run")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "batch_scoring.json")
    args = parser.parse_args()
    os.environ.setdefault("MII_AZURE_HOME", tempfile.mkdtemp(prefix="mii-azure-bench-"))
    import torch

    shape = GPT2_SMALL if args.shape == "gpt2-small" else {"n_positions": 256}
    requests = workload(args.rows, args.seed)
    runs: dict[str, list[dict[str, Any]]] = {"batch_score": [], "harness": []}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        model_dir = model_factory.build_gpt2(scratch / "gpt2-small-shape", **shape)
        batch_plan = _engine_plan(model_dir)
        with mii_azure.deploy(model_dir, local=True, name="bench-batch-scoring") as deployment:
            harness_plan = {"dtype": deployment.plan.dtype, "max_batch_size": deployment.plan.max_batch_size}
            for run in range(args.runs):
                order = ("harness", "batch_score") if run % 2 == 0 else ("batch_score", "harness")
                for mode in order:
                    started, load = time.perf_counter(), os.getloadavg()[0]
                    figures = run_harness(deployment.scoring_uri, requests) if mode == "harness" else run_batch(model_dir, requests, scratch)
                    figures["load_average_1min_before"] = round(load, 2)
                    runs[mode].append(figures)
                    print(f"run {run} {mode}: {figures['rows_per_s']} rows/s, {figures['tokens_per_s']} tokens/s "
                          f"({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)

    same = sum(a == b for a, b in zip(runs["batch_score"][-1]["_entries"], runs["harness"][-1]["_entries"]))
    for results in runs.values():
        for figures in results:
            figures.pop("_entries")
    keys = ("rows_per_s", "tokens_per_s", "seconds", "generated_tokens")
    median = {mode: {key: statistics.median(r[key] for r in results) for key in keys} for mode, results in runs.items()}
    rows_ratio = median["batch_score"]["rows_per_s"] / median["harness"]["rows_per_s"]
    tokens_ratio = median["batch_score"]["tokens_per_s"] / median["harness"]["tokens_per_s"]
    result = {
        "benchmark": "batch_scoring",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": {"cpu": _cpu_name(), "cores": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "gpu": None,
                     "note": "clients, harness server and batch scoring all on this machine"},
        "versions": {"python": platform.python_version(), **_versions()},
        "model": {"shape": shape, "random_weights": True, "builder": "tests/model_factory.build_gpt2"},
        "workload": {"rows": len(requests), "prompt_words": [8, 40], "max_new_tokens_from": NEW_TOKENS, "seed": args.seed,
                     "greedy": True, "harness_clients": CLIENTS},
        "plans": {"batch_score": batch_plan, "harness": harness_plan},
        "runs": runs,
        "median": median,
        "ratio_batch_vs_harness": {"rows_per_s": round(rows_ratio, 3), "tokens_per_s": round(tokens_ratio, 3)},
        "identical_entries_last_run": f"{same} of {len(requests)}",
        "targets": {"batch_throughput_at_least_harness": rows_ratio >= 1.0 and tokens_ratio >= 1.0,
                    "all_answered": all(r["answered"] == len(requests) and r["failures"] == 0 for rs in runs.values() for r in rs)},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("median", "ratio_batch_vs_harness", "targets")}, indent=2))


if __name__ == "__main__":
    main()
