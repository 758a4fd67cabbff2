"""Calibrate the cost model's CPU efficiency factors on this machine.

Two measurements of the engine serving a GPT-2-small-shaped model (124M parameters, random weights,
the plan the planner makes for this machine: bf16 where the CPU has AVX-512 BF16):

1. one decode step at batch 1 (32-token prompts; the difference of generating 8 and 40 tokens);
2. a 512-token prompt pass at batch 1 (a generation of one token).

The cost model says each takes ``memory / e_bw + compute / e_flops`` (bytes over the measured read
bandwidth, FLOPs over cores x clock x FLOPs per cycle); the two measurements fix both factors. They
are NOT the points ``benchmarks/cost_accuracy_cpu.py`` validates against (batch 8, and a
GPT-2-medium shape at batches 1 and 8), except the batch-1 GPT-2-small decode, which it reports as
the calibration point. Run:

    .venv/bin/python benchmarks/cpu_cost_calibration.py --runs 5 --update-calibration

Writes ``benchmarks/results/cpu_cost_calibration.json`` (or ``--out``) and, with
``--update-calibration``, the ``cpu`` section of ``mii_azure/data/calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cpu_decode_timing import ROOT, TimedEngine, describe_machine

from mii_azure.calibration import fit_two_points
from mii_azure.performance import PEAK, Machine, ServedModel, decode_step, prefill

CALIBRATION_PROMPT = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each measurement (median used)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_cost_calibration.json")
    parser.add_argument("--update-calibration", action="store_true", help="write the factors to mii_azure/data/calibration.json")
    args = parser.parse_args()
    args.out = args.out.resolve()

    hardware, machine_facts = describe_machine()
    timed = TimedEngine("gpt2-small", Path(tempfile.mkdtemp()))
    decode = timed.decode_step_s(1, args.runs)
    prompt = timed.prompt_pass_s(CALIBRATION_PROMPT, args.runs)
    timed.close()

    served = ServedModel.of(timed.facts, timed.plan)
    machine = Machine.of(hardware, timed.plan.dtype)
    raw_decode = decode_step(served, machine, PEAK, batch=1, context=decode["context_tokens_average"])
    raw_prompt = prefill(served, machine, PEAK, batch=1, prompt_tokens=CALIBRATION_PROMPT)
    e_bw, e_flops = fit_two_points([(raw_decode, decode["step_s_median"]), (raw_prompt, prompt["seconds_median"])])
    weight_format = "int8" if timed.plan.quantization == "int8" else timed.plan.dtype
    result = {
        "benchmark": "cpu_cost_calibration",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_facts,
        "model": {"shape": "gpt2-small", "parameters": timed.facts.parameter_count, "plan_dtype": timed.plan.dtype},
        "measured": {"decode_batch_1": decode, f"prompt_pass_{CALIBRATION_PROMPT}": prompt},
        "at_peak": {
            "decode_batch_1": {"memory_s": raw_decode.memory_s, "compute_s": raw_decode.compute_s},
            f"prompt_pass_{CALIBRATION_PROMPT}": {"memory_s": raw_prompt.memory_s, "compute_s": raw_prompt.compute_s},
        },
        "derived": {"weight_format": weight_format, "bandwidth_efficiency": e_bw, "flops_efficiency": e_flops},
        "math": [
            "measured = memory_at_peak / e_bw + compute_at_peak / e_flops, for both measurements",
            f"decode b1: {decode['step_s_median'] * 1e3:.2f} ms = {raw_decode.memory_s * 1e3:.3f} ms / e_bw + "
            f"{raw_decode.compute_s * 1e3:.3f} ms / e_flops",
            f"prompt {CALIBRATION_PROMPT}: {prompt['seconds_median'] * 1e3:.1f} ms = {raw_prompt.memory_s * 1e3:.3f} ms / e_bw + "
            f"{raw_prompt.compute_s * 1e3:.2f} ms / e_flops",
            f"solved: e_bw = {e_bw:.4f}, e_flops = {e_flops:.4f}",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"derived": result["derived"], "math": result["math"]}, indent=2))
    if args.update_calibration:
        path = ROOT / "mii_azure" / "data" / "calibration.json"
        record = json.loads(path.read_text()) if path.exists() else {"schema": 1}
        source = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
        record["cpu"] = {
            weight_format: {
                "bandwidth_efficiency": round(e_bw, 4),
                "flops_efficiency": round(e_flops, 4),
                "calibrated": True,
                "basis": (
                    f"CPU {weight_format}: calibrated on {machine_facts['processor']} ({machine_facts['cores']} cores, "
                    f"{result['date']}) from the engine's batch-1 decode step and a {CALIBRATION_PROMPT}-token prompt pass "
                    f"of a GPT-2-small shape (bandwidth {e_bw:.2f}, FLOPs {e_flops:.2f} of peak); other CPUs: uncalibrated"
                ),
                "source": str(source),
                "date": result["date"],
                "machine": machine_facts,
                "measured": {
                    "decode_step_batch_1_s": decode["step_s_median"],
                    f"prompt_pass_{CALIBRATION_PROMPT}_s": prompt["seconds_median"],
                },
                "math": result["math"],
            }
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"updated {path}")


if __name__ == "__main__":
    main()
