"""GPU efficiency factors of the cost model, solved from published DeepSpeed-Inference figures.

No GPU measurement of this project exists yet. Until one does, the GPU factors come from the one
public, reproducible set of DeepSpeed-Inference decode timings at several batch sizes: BLOOM-176B on
8x A100 80GB (Hugging Face blog "Incredibly Fast BLOOM Inference with DeepSpeed and Accelerate",
2022-09-16, bloom-inference-scripts; greedy generation of 100 tokens from a prompt of a few tokens,
reported as milliseconds per generated token = generate time / (batch x 100)).

For each weight format two figures are fitted (batch 1 and batch 128) and the others are kept as
checks. The factors are written to ``mii_azure/data/calibration.json`` (section ``gpu``), marked
uncalibrated, with the figures, the assumptions and the residuals. Run:

    .venv/bin/python benchmarks/gpu_cost_calibration_published.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mii_azure.calibration import fit_two_points  # noqa: E402
from mii_azure.hardware import Hardware  # noqa: E402
from mii_azure.models import resolve_model  # noqa: E402
from mii_azure.performance import PEAK, Efficiency, Machine, ServedModel, Timing, decode_step, prefill  # noqa: E402
from mii_azure.planner import PlanOverrides, make_plan  # noqa: E402
from mii_azure.skus import get_sku  # noqa: E402

SOURCE = "https://huggingface.co/blog/bloom-inference-pytorch-scripts (2022-09-16), table 'ds-inference'"
PROMPT_TOKENS = 8  # "The input prompt is comprised of just a few tokens"
NEW_TOKENS = 100
#: Published ms per generated token, by batch size.
PUBLISHED = {
    "float16": {"gpus": 8, "ms_per_token": {1: 44.02, 8: 5.70, 16: 3.01, 32: 1.68, 64: 1.00, 128: 0.69}},
    "int8": {"gpus": 8, "ms_per_token": {1: 89.09, 8: 11.44, 16: 5.88, 32: 3.09, 64: 1.71, 128: 1.02, 256: 0.71}},
    "int8 on 4 GPUs": {"gpus": 4, "ms_per_token": {1: 156.51, 8: 20.11, 16: 10.38, 32: 5.50, 64: 2.96}},
}
FIT_BATCHES = (1, 128)


def per_token(served: ServedModel, machine: Machine, efficiency: Efficiency, batch: int) -> Timing:
    """Modelled seconds per generated token of the published runs: (prompt pass + 99 steps) / (batch x 100)."""
    first = prefill(served, machine, efficiency, batch=batch, prompt_tokens=PROMPT_TOKENS)
    step = decode_step(served, machine, efficiency, batch=batch, context=PROMPT_TOKENS + NEW_TOKENS / 2)
    return (first + step.scaled(NEW_TOKENS - 1)).scaled(1 / (batch * NEW_TOKENS))


def served_model(weight_format: str, gpus: int) -> tuple[ServedModel, Machine, Hardware]:
    facts = resolve_model("bigscience/bloom")
    hardware = get_sku("ND96amsr_A100_v4").hardware
    if gpus != hardware.gpus:
        hardware = hardware.model_copy(update={"gpus": gpus, "name": f"{gpus}x A100 80GB SXM"})
    overrides = PlanOverrides(
        max_input_tokens=PROMPT_TOKENS,
        max_new_tokens=NEW_TOKENS,
        tensor_parallel=gpus,
        quantization="int8" if weight_format.startswith("int8") else "none",
        zero_offload="none",
    )
    plan = make_plan(facts, hardware, overrides=overrides)
    return ServedModel.of(facts, plan), Machine.of(hardware, plan.dtype), hardware


def roofline_errors(served: ServedModel, machine: Machine, figures: dict[int, float]) -> dict[str, float]:
    """Relative errors if memory and compute overlapped (max instead of sum), fitted the same way."""
    first, last = FIT_BATCHES
    raw_first = per_token(served, machine, PEAK, first)
    e_bw = raw_first.memory_s / (figures[first] / 1e3 - raw_first.communication_s)
    raw_last = per_token(served, machine, PEAK, last)
    e_flops = raw_last.compute_s / (figures[last] / 1e3 - raw_last.communication_s)
    errors = {}
    for batch, published in figures.items():
        raw = per_token(served, machine, PEAK, batch)
        modelled = max(raw.memory_s / e_bw, raw.compute_s / e_flops) + raw.communication_s
        errors[str(batch)] = round(modelled * 1e3 / published - 1, 3)
    return errors


def main() -> None:
    section: dict = {}
    fitted: dict[str, Efficiency] = {}
    for name in ("float16", "int8"):
        figures = PUBLISHED[name]["ms_per_token"]
        served, machine, hardware = served_model(name, PUBLISHED[name]["gpus"])
        points = [(per_token(served, machine, PEAK, batch), figures[batch] / 1e3) for batch in FIT_BATCHES]
        e_bw, e_flops = fit_two_points(points)
        efficiency = Efficiency(bandwidth=e_bw, flops=e_flops)
        fitted[name] = efficiency
        checks = {}
        for batch, published in figures.items():
            modelled = per_token(served, machine, efficiency, batch).total_s * 1e3
            checks[str(batch)] = {"published_ms": published, "modelled_ms": round(modelled, 3), "error": round(modelled / published - 1, 3)}
        raw1 = per_token(served, machine, PEAK, 1)
        section[name] = {
            "bandwidth_efficiency": round(e_bw, 4),
            "flops_efficiency": round(e_flops, 4),
            "calibrated": False,
            "basis": (
                f"GPU {'int8' if name == 'int8' else 'fp16/bf16'}: uncalibrated (no GPU measurement of this project yet); "
                f"solved from DeepSpeed-Inference's published BLOOM-176B {name} figures on 8x A100 80GB "
                f"(bandwidth {e_bw:.2f}, FLOPs {e_flops:.2f} of peak)"
            ),
            "source": SOURCE,
            "date": time.strftime("%Y-%m-%d"),
            "setup": {
                "model": "bigscience/bloom (176B, planner's parameter estimate "
                f"{served.parameters:,.0f})",
                "hardware": f"{hardware.gpus}x A100 80GB SXM ({hardware.gpu_bandwidth_gb_s:g} GB/s, {hardware.gpu_fp16_tflops:g} "
                f"FP16 TFLOPS, NVLink {hardware.interconnect_gb_s:g} GB/s)",
                "tensor_parallel": served.tensor_parallel,
                "weight_bytes_per_gpu": served.weight_bytes / served.tensor_parallel,
                "prompt_tokens_assumed": PROMPT_TOKENS,
                "new_tokens": NEW_TOKENS,
            },
            "fit_batches": list(FIT_BATCHES),
            "math": [
                "ms/token(batch) = [prefill(batch) + 99 x step(batch)] / (batch x 100), each time = memory/e_bw + compute/e_flops + all-reduce",
                f"batch 1 at peak: memory {raw1.memory_s * 1e3:.3f} ms + compute {raw1.compute_s * 1e3:.4f} ms + all-reduce "
                f"{raw1.communication_s * 1e3:.4f} ms per token; published {figures[1]} ms",
                f"weights per GPU {served.weight_bytes / served.tensor_parallel / 1e9:.2f} GB / {hardware.gpu_bandwidth_gb_s:g} GB/s = "
                f"{served.weight_bytes / served.tensor_parallel / hardware.gpu_bandwidth_gb_s / 1e6:.2f} ms at peak, so about "
                f"{served.weight_bytes / served.tensor_parallel / hardware.gpu_bandwidth_gb_s / 1e6 / figures[1]:.2f} of peak bandwidth at batch 1",
                f"solving batch {FIT_BATCHES[0]} and {FIT_BATCHES[1]} together: e_bw = {e_bw:.4f}, e_flops = {e_flops:.4f}",
            ],
            "checks": checks,
            "roofline_max_errors": roofline_errors(served, machine, figures),
        }
    # The 4-GPU int8 figures are a check of the int8 factors at another tensor-parallel degree.
    served, machine, _ = served_model("int8", 4)
    section["int8"]["checks_4_gpus"] = {
        str(batch): {
            "published_ms": published,
            "modelled_ms": round(per_token(served, machine, fitted["int8"], batch).total_s * 1e3, 3),
            "error": round(per_token(served, machine, fitted["int8"], batch).total_s * 1e3 / published - 1, 3),
        }
        for batch, published in PUBLISHED["int8 on 4 GPUs"]["ms_per_token"].items()
    }
    path = ROOT / "mii_azure" / "data" / "calibration.json"
    record = json.loads(path.read_text()) if path.exists() else {"schema": 1}
    record["gpu"] = section
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({name: {k: v for k, v in entry.items() if k in ("bandwidth_efficiency", "flops_efficiency", "checks", "checks_4_gpus", "roofline_max_errors")} for name, entry in section.items()}, indent=1))


if __name__ == "__main__":
    main()
