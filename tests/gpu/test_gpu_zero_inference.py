"""ZeRO-Inference on a GPU: weights partitioned in host memory and streamed to the GPU layer by layer
(``PlanOverrides(zero_offload="cpu")``) answer with the same greedy tokens as the plain fp16 model.

It runs in a subprocess, like tests/test_zero_inference.py (which runs the same path on DeepSpeed's CPU
accelerator): ZeRO joins a torch.distributed process group (NCCL here) and makes transformers load
models partitioned, which must not leak into the other tests' process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gpu_support

pytestmark = gpu_support.GPU_MARKS

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
from pathlib import Path

import torch

import gpu_support
from mii_azure.config import ServingSettings
from mii_azure.models import find_model_folder, resolve_model
from mii_azure.planner import PlanOverrides
from mii_azure.runtime.engine import Engine
from mii_azure.tasks import get_task
from mii_azure.tasks.base import LoadOptions

model_dir = Path(sys.argv[1])
folder = find_model_folder(model_dir)
# The plain fp16 model first, before ZeRO makes transformers load models partitioned.
reference = get_task("text-generation").load(folder, resolve_model(folder), ServingSettings(), LoadOptions("cuda", "float16"))
parameters = reference.parse_parameters({"max_new_tokens": 12})
eos = reference.end_of_text_ids()
with gpu_support.recorded_generations(reference) as expected:
    reference_answers = reference.predict(gpu_support.PROMPTS, parameters, gpu_support.deadline())

engine = Engine.load(model_dir, overrides=PlanOverrides(zero_offload="cpu", dtype="float16"))
weights = list(engine.task.model.parameters())
partitioned = [p for p in weights if hasattr(p, "ds_tensor")]
with gpu_support.recorded_generations(engine.task) as served:
    answers = engine.infer(gpu_support.request(gpu_support.PROMPTS, parameters), gpu_support.deadline())
served_ids = gpu_support.new_tokens_by_prompt(served, eos)
expected_ids = gpu_support.new_tokens_by_prompt(expected, eos)
problems = []
for prompt in gpu_support.PROMPTS:
    mismatch = gpu_support.tie_or_mismatch(reference, prompt, served_ids[prompt], expected_ids[prompt])
    if mismatch:
        problems.append(f"{prompt!r}: {mismatch}")
print(json.dumps({
    "plan": {"zero_offload": engine.plan.zero_offload, "kernel_inject": engine.plan.kernel_inject, "reasons": engine.plan.reasons.get("zero_offload")},
    "applied": engine.applied.model_dump(),
    "device": str(engine.task.device),
    "parameters": len(weights),
    "partitioned": len(partitioned),
    "partitions_on": sorted({p.ds_tensor.device.type for p in partitioned}),
    "identical_tokens": served_ids == expected_ids,
    "answers": answers,
    "reference_answers": reference_answers,
    "problems": problems,
}))
"""


def test_zero_offload_to_cpu_answers_like_the_plain_fp16_model(gpu_models, report):
    model_dir = gpu_models("gpt2")
    environment = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "gpu"), environment.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_dir)], capture_output=True, text=True, timeout=140, env=environment, cwd=ROOT
    )
    assert result.returncode == 0, f"the ZeRO-Inference run failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    report.add("zero-inference cpu offload [gpt2]", **{key: value for key, value in outcome.items() if "answers" not in key})
    assert outcome["applied"]["zero_offload"] == "cpu" and outcome["applied"]["deepspeed"], outcome["applied"]
    assert outcome["device"].startswith("cuda"), f"the offloaded model computes on {outcome['device']}, not the GPU"
    assert outcome["parameters"] and outcome["partitioned"] == outcome["parameters"], (
        f"{outcome['partitioned']} of {outcome['parameters']} parameters are ZeRO-partitioned"
    )
    assert outcome["partitions_on"] == ["cpu"], f"the weights' partitions live on {outcome['partitions_on']}, not in host memory"
    assert not outcome["problems"], "\n".join(outcome["problems"])
    if outcome["identical_tokens"]:
        assert outcome["answers"] == outcome["reference_answers"]
