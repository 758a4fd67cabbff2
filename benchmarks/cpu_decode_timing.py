"""Shared by the CPU cost benchmarks: build a GPT-2-shaped engine and time its decode steps and prompt passes.

Decode speed is measured free of the prompt pass: the same batch generates N1 and N2 new tokens
(greedy, every sequence runs to the end), and one step is (t(N2) - t(N1)) / (N2 - N1). A prompt
pass is a generation of one new token. Each figure is the median of several runs.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import model_factory  # noqa: E402
from cpu_engine_throughput import prompts_of_exact_length  # noqa: E402

from mii_azure.hardware import Hardware  # noqa: E402
from mii_azure.models import resolve_model  # noqa: E402
from mii_azure.planner import make_plan  # noqa: E402
from mii_azure.runtime.engine import Engine  # noqa: E402
from mii_azure.tasks.base import Deadline  # noqa: E402

SHAPES = {
    "gpt2-small": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": 3072},
    "gpt2-medium": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 1024, "n_layer": 24, "n_head": 16, "n_inner": 4096},
}
PROMPT_TOKENS = 32
SHORT, LONG = 8, 40  # new tokens of the two generations whose difference is LONG - SHORT decode steps
#: bf16 FLOPs per cycle per core with AVX-512 BF16: one 512-bit VDPBF16PS (32 bf16 pairs, 2 FLOPs each) per cycle.
BF16_FLOPS_PER_CYCLE = 64
FP32_FLOPS_PER_CYCLE = 32  # two 256-bit FMA pipes (8 lanes x 2 FLOPs each)


def measure_peak_read_bandwidth(megabytes: int = 256, passes: int = 40) -> tuple[float, float]:
    """(best, median) GB/s of summing a large fp32 tensor. The best pass is the machine's attainable
    read bandwidth; it is less disturbed than the median by other processes sharing the 2 cores."""
    data = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    data.sum()
    rates = []
    for _ in range(passes):
        started = time.perf_counter()
        data.sum()
        rates.append(data.numel() * 4 / (time.perf_counter() - started) / 1e9)
    return max(rates), statistics.median(rates)


def cpu_clock_ghz() -> float:
    """The clock /proc/cpuinfo reports (the base clock on a VM)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":", 1)[1]) / 1e3
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def describe_machine() -> tuple[Hardware, dict[str, Any]]:
    """This CPU as the estimator sees it: measured read bandwidth, cores x clock x FLOPs per cycle."""
    local = Hardware.local()
    bandwidth, median_bandwidth = measure_peak_read_bandwidth()
    clock = cpu_clock_ghz()
    per_cycle = BF16_FLOPS_PER_CYCLE if local.bf16 else FP32_FLOPS_PER_CYCLE
    peak = local.cpu_cores * clock * per_cycle
    hardware = Hardware.cpu(
        cores=local.cpu_cores, ram_gb=local.ram_gb or 0.0, bf16=local.bf16, bandwidth_gb_s=bandwidth, peak_gflops=peak, name="this CPU"
    )
    facts = {
        "processor": cpu_model(),
        "cores": local.cpu_cores,
        "clock_ghz": round(clock, 3),
        "bf16": local.bf16,
        "flops_per_cycle_per_core": per_cycle,
        "peak_gflops": round(peak, 1),
        "peak_gflops_math": f"{local.cpu_cores} cores x {clock:.3f} GHz x {per_cycle} FLOPs/cycle",
        "read_bandwidth_gb_s": round(bandwidth, 2),
        "read_bandwidth_median_gb_s": round(median_bandwidth, 2),
        "read_bandwidth_method": "best of 40 passes of torch.sum over a 256 MiB fp32 tensor",
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    return hardware, facts


class TimedEngine:
    """A GPT-2-shaped random-weight model loaded by the engine with the plan made for this machine."""

    def __init__(self, shape: str, directory: Path) -> None:
        torch.manual_seed(0)
        self.shape = shape
        self.model_dir = model_factory.build_gpt2(directory / shape, **SHAPES[shape])
        self.facts = resolve_model(self.model_dir)
        self.plan = make_plan(self.facts, Hardware.local())
        self.engine = Engine.load(self.model_dir, plan=self.plan)
        self.task = self.engine.task
        self._prompts: dict[tuple[int, int], list[str]] = {}

    def prompts(self, batch: int, length: int) -> list[str]:
        if (batch, length) not in self._prompts:
            self._prompts[(batch, length)] = prompts_of_exact_length(self.task.tokenizer, batch, length)
        return self._prompts[(batch, length)]

    def generate_s(self, batch: int, new_tokens: int, prompt_tokens: int = PROMPT_TOKENS) -> float:
        """Seconds of one ``task.predict`` call; checks every sequence generated all its tokens."""
        parameters = type(self.task).parameters_model(max_new_tokens=new_tokens)
        started = time.perf_counter()
        answers = self.task.predict(self.prompts(batch, prompt_tokens), parameters, Deadline(3600))
        elapsed = time.perf_counter() - started
        counts = {answer["num_tokens"] for answer in answers}
        if counts != {new_tokens}:
            raise RuntimeError(f"expected {new_tokens} new tokens per sequence, got {sorted(counts)}")
        return elapsed

    def decode_step_s(self, batch: int, runs: int) -> dict[str, Any]:
        """Median seconds of one decode step at ``batch`` (difference of two generation lengths)."""
        self.generate_s(batch, 2)  # warm-up at this batch size
        steps = []
        for _ in range(runs):
            short = self.generate_s(batch, SHORT)
            long = self.generate_s(batch, LONG)
            steps.append((long - short) / (LONG - SHORT))
        return {
            "batch": batch,
            "step_s_median": statistics.median(steps),
            "step_s_each_run": [round(step, 5) for step in steps],
            "decode_tokens_per_s": batch / statistics.median(steps),
            "context_tokens_average": PROMPT_TOKENS + (SHORT + LONG) / 2,
        }

    def prompt_pass_s(self, prompt_tokens: int, runs: int) -> dict[str, Any]:
        """Median seconds of a generation of one token after a ``prompt_tokens`` prompt (batch 1)."""
        self.generate_s(1, 1, prompt_tokens)
        times = [self.generate_s(1, 1, prompt_tokens) for _ in range(runs)]
        return {"prompt_tokens": prompt_tokens, "seconds_median": statistics.median(times), "seconds_each_run": [round(t, 4) for t in times]}

    def close(self) -> None:
        self.engine.close()
