"""GPU benchmark: what CUDA graphs add for a static-shape task (embeddings from a BERT encoder).

On one GPU, for BERT-base- and BERT-large-shaped encoders built from configs with random weights (no
hub), the feature-extraction task's latency per call at batch 1 and batch 8 (inputs of about 20
tokens, padded to the 64-token bucket when graphs are on), three ways on the same weights in the same
process:

* ``hf_eager_fp16``: the task over the plain transformers model;
* ``engine_no_graphs``: the engine's plan with ``cuda_graph=False`` (kernel injection only);
* ``engine``: the engine's plan as planned (kernel injection and CUDA graphs per shape bucket).

It also checks that the three give the same embeddings (cosine similarity). Each figure is the
median over ``--runs`` repetitions of ``--calls`` timed calls. About a minute on an H100::

    python benchmarks/gpu_encoder_graphs.py --runs 5

Results go to ``benchmarks/results/gpu_encoder_graphs.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import model_factory  # noqa: E402

from mii_azure.config import ServingSettings  # noqa: E402
from mii_azure.hardware import Hardware  # noqa: E402
from mii_azure.models import ModelRef, ModelSource, config_facts  # noqa: E402
from mii_azure.planner import PlanOverrides, make_plan  # noqa: E402
from mii_azure.runtime.optimize import apply_plan, graph_failures  # noqa: E402
from mii_azure.tasks.base import Deadline  # noqa: E402
from mii_azure.tasks.feature_extraction import FeatureExtraction, FeatureExtractionParameters, Pooling  # noqa: E402

SHAPES = {
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "bert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
TEXT = "deepspeed makes large models fast and cheap to serve on azure"
BATCHES = (1, 8)


def timed_calls(task: FeatureExtraction, texts: list[str], calls: int) -> float:
    """Median seconds of one predict call over ``calls`` calls."""
    parameters = FeatureExtractionParameters()
    seconds = []
    for _ in range(calls):
        torch.cuda.synchronize()
        started = time.perf_counter()
        task.predict(texts, parameters, Deadline(60))
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def variant(name, base_model, tokenizer, facts, gpu, overrides):
    model = copy.deepcopy(base_model)
    task = FeatureExtraction(facts, ServingSettings(), model, tokenizer, Pooling())
    if overrides is None:
        return task, None
    plan = make_plan(facts, gpu, task="feature-extraction", overrides=overrides)
    applied = apply_plan(task, plan)
    return task, applied


def benchmark_shape(name: str, shape: dict, runs: int, calls: int, gpu: Hardware, folder: Path) -> dict:
    from transformers import BertConfig, BertModel

    tokenizer = model_factory._bert_tokenizer(folder, model_max_length=512)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **shape)
    torch.manual_seed(0)
    with torch.device("cuda"):
        base = BertModel(config).to(torch.float16).eval()
    facts = config_facts(ModelRef(reference=name, source=ModelSource.HUB, name=name), {**config.to_dict(), "architectures": ["BertModel"]})
    variants = {
        "hf_eager_fp16": None,
        "engine_no_graphs": PlanOverrides(cuda_graph=False),
        "engine": PlanOverrides(),
    }
    results: dict = {"parameters": sum(p.numel() for p in base.parameters())}
    embeddings = {}
    for label, overrides in variants.items():
        task, applied = variant(label, base, tokenizer, facts, gpu, overrides)
        entry: dict = {"applied": applied.model_dump() if applied else None}
        for batch in BATCHES:
            texts = [TEXT] * batch
            task.predict(texts, FeatureExtractionParameters(), Deadline(600))  # warm-up; captures the bucket's graph
            entry[f"batch{batch}_ms"] = 1000 * statistics.median(timed_calls(task, texts, calls) for _ in range(runs))
        entry["graph_failures"] = graph_failures(task)
        embeddings[label] = torch.tensor(task.predict([TEXT], FeatureExtractionParameters(), Deadline(60))[0]["embedding"])
        results[label] = entry
        del task
        gc.collect()
        torch.cuda.empty_cache()
    reference = embeddings["hf_eager_fp16"]
    results["cosine_vs_eager"] = {
        label: float(torch.nn.functional.cosine_similarity(vector, reference, dim=0)) for label, vector in embeddings.items()
    }
    for batch in BATCHES:
        key = f"batch{batch}_ms"
        results[f"speedup_batch{batch}"] = {
            "engine_vs_eager": results["hf_eager_fp16"][key] / results["engine"][key],
            "graphs_vs_no_graphs": results["engine_no_graphs"][key] / results["engine"][key],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--models", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_encoder_graphs.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("This benchmark needs a CUDA GPU.")
    started = time.perf_counter()
    gpu = Hardware.local().model_copy(update={"gpus": 1})
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            results[name] = benchmark_shape(name, SHAPES[name], args.runs, args.calls, gpu, Path(scratch))
            print(name, json.dumps({key: value for key, value in results[name].items() if key.startswith("speedup")}), flush=True)
    report = {
        "benchmark": "gpu_encoder_graphs",
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "workload": {"task": "feature-extraction", "text": TEXT, "batches": list(BATCHES), "calls_per_run": args.calls, "runs": args.runs},
        "models": results,
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
