"""Benchmark of the local harness: what serving through it costs over calling the engine in-process.

1. Overhead, tiny model (the tests' tiny BERT classifier): p50 latency of HTTP ``POST /score`` and of
   gRPC ``ModelInfer`` (stock ``tritonclient.grpc``) against a local deployment, minus the p50 of the
   package's own ``score.py`` ``run()`` called in this process. Target: at most 3 ms each.
2. Concurrency, GPT-2-small shape (124M parameters, random weights): 32 concurrent HTTP clients through
   the harness against 32 concurrent callers of the in-process engine (same plan, same batching),
   32 prompt tokens and 32 new tokens each. Target: at least 90% of the in-process throughput.

Medians of ``--runs`` repetitions; everything on this machine, clients included. Run:

    .venv/bin/python benchmarks/harness_overhead.py --runs 3

Results go to ``benchmarks/results/harness_overhead.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import model_factory  # noqa: E402
from cpu_engine_throughput import GPT2_SMALL, NEW_TOKENS, PROMPT_TOKENS, REQUESTS, prompts_of_exact_length  # noqa: E402

import mii_azure  # noqa: E402
from mii_azure.runtime.engine import Engine  # noqa: E402
from mii_azure.runtime.service import ScoringService  # noqa: E402

SAMPLES = 300


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def _p50(call, samples: int) -> float:
    for _ in range(10):
        call()
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def _in_process_run(package_dir: Path):
    """The package's score.py init() here; a callable that runs one request through its run()."""
    from flask import Request
    from werkzeug.test import EnvironBuilder

    os.environ.pop("AZUREML_MODEL_DIR", None)
    os.environ.pop("MII_AZURE_GRPC_PORT", None)
    spec = importlib.util.spec_from_file_location("score_in_process", package_dir / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()

    def run(payload: dict) -> None:
        environ = EnvironBuilder(method="POST", data=json.dumps(payload), content_type="application/json").get_environ()
        response = module.run(Request(environ))
        if response.status_code != 200:
            raise RuntimeError(response.get_data())

    return run


def overhead(runs: int) -> dict:
    import tritonclient.grpc as grpcclient

    model_dir = model_factory.build_bert_classifier(Path(tempfile.mkdtemp()) / "tiny-classifier")
    request = {"query": ["a good day"]}
    results = []
    with mii_azure.deploy(model_dir, local=True, name="bench-overhead") as deployment:
        client = grpcclient.InferenceServerClient(deployment.grpc_target)
        tensor = grpcclient.InferInput("query", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"a good day"], dtype=object))
        run = _in_process_run(Path(mii_azure.targets.local.LocalTarget().home / "packages" / deployment.name))
        for _ in range(runs):
            in_process = _p50(lambda: run(request), SAMPLES)
            http = _p50(lambda: _post(deployment.scoring_uri, request), SAMPLES)
            grpc = _p50(lambda: client.infer(deployment.name, [tensor]), SAMPLES)
            results.append({"in_process_run_ms": in_process, "http_ms": http, "grpc_ms": grpc})
    median = {key: statistics.median(result[key] for result in results) for key in results[0]}
    return {
        "model": "tiny BERT classifier (tests/model_factory.py)",
        "samples_per_run": SAMPLES,
        "runs": results,
        "p50_ms": median,
        "http_overhead_ms": median["http_ms"] - median["in_process_run_ms"],
        "grpc_overhead_ms": median["grpc_ms"] - median["in_process_run_ms"],
    }


def _concurrent(call, prompts: list[str]) -> float:
    barrier = threading.Barrier(len(prompts))
    tokens = [0] * len(prompts)

    def one(index: int) -> None:
        barrier.wait()
        tokens[index] = call(prompts[index])["responses"][0]["num_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        list(pool.map(one, range(len(prompts))))
    return sum(tokens) / (time.perf_counter() - started)


def concurrency(runs: int) -> dict:
    model_dir = model_factory.build_gpt2(Path(tempfile.mkdtemp()) / "gpt2-small-shape", **GPT2_SMALL)
    payload = lambda prompt: {"query": prompt, "parameters": {"max_new_tokens": NEW_TOKENS}}  # noqa: E731
    in_process, harness = [], []
    with mii_azure.deploy(model_dir, local=True, name="bench-concurrency") as deployment:
        engine = Engine.load(model_dir, plan=deployment.plan)
        service = ScoringService(engine)
        prompts = prompts_of_exact_length(engine.task.tokenizer, REQUESTS, PROMPT_TOKENS)
        for _ in range(runs):
            in_process.append(_concurrent(lambda prompt: service.score(payload(prompt)), prompts))
            harness.append(_concurrent(lambda prompt: _post(deployment.scoring_uri, payload(prompt)), prompts))
        engine.close()
    return {
        "model": "GPT-2-small shape, random weights",
        "clients": REQUESTS,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "plan": {"dtype": deployment.plan.dtype, "max_batch_size": deployment.plan.max_batch_size},
        "in_process_tokens_per_s": in_process,
        "harness_tokens_per_s": harness,
        "ratio": statistics.median(harness) / statistics.median(in_process),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "harness_overhead.json")
    args = parser.parse_args()
    os.environ.setdefault("MII_AZURE_HOME", tempfile.mkdtemp(prefix="mii-azure-bench-"))
    report = {
        "benchmark": "harness_overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, CPU only; clients on the same machine",
        "overhead": overhead(args.runs),
        "concurrency": concurrency(args.runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(
        {
            "http_overhead_ms": report["overhead"]["http_overhead_ms"],
            "grpc_overhead_ms": report["overhead"]["grpc_overhead_ms"],
            "p50_ms": report["overhead"]["p50_ms"],
            "concurrency_ratio": report["concurrency"]["ratio"],
            "harness_tokens_per_s": report["concurrency"]["harness_tokens_per_s"],
            "in_process_tokens_per_s": report["concurrency"]["in_process_tokens_per_s"],
        },
        indent=2,
    ))


if __name__ == "__main__":
    main()
