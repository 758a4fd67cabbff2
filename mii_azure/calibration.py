"""Efficiency factors of the cost model, with the measurements they were derived from.

An efficiency is the fraction of a device's peak memory bandwidth (or peak FLOPs) that serving
reaches. They are not guesses: ``data/calibration.json`` keeps each factor next to the numbers it
was solved from (source file or publication, date, machine, measured times) and the arithmetic.

* CPU: measured on this project's CPU by ``benchmarks/cpu_cost_calibration.py`` (the engine's
  batch-1 decode step and a prompt pass of a GPT-2-small-shaped model).
* GPU: no GPU measurement of this project exists yet, so the GPU factors are marked uncalibrated;
  they are solved from DeepSpeed-Inference's published BLOOM-176B figures on 8x A100 80GB by
  ``benchmarks/gpu_cost_calibration_published.py``. Replace them once the project measures GPUs.

Two measured times of the same model at different batch or prompt sizes determine both factors:
each time is ``a / bandwidth_efficiency + b / flops_efficiency + c``, with ``a`` the seconds of
its bytes at peak bandwidth, ``b`` of its FLOPs at peak, ``c`` the fixed (communication, offload)
seconds; :func:`fit_two_points` solves the pair.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Optional, Sequence

from .errors import ConfigError
from .hardware import Hardware
from .performance import Efficiency, Timing

__all__ = ["load_calibration", "efficiency_for", "fit_two_points", "CALIBRATION_FILE"]

CALIBRATION_FILE = "data/calibration.json"


@lru_cache(maxsize=1)
def load_calibration() -> dict[str, Any]:
    """The shipped calibration record."""
    text = resources.files("mii_azure").joinpath(CALIBRATION_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def efficiency_for(hardware: Hardware, weight_format: str, calibration: Optional[dict[str, Any]] = None) -> Efficiency:
    """The efficiency factors for a model served in ``weight_format`` (a dtype, or ``int8``) on ``hardware``."""
    record = load_calibration() if calibration is None else calibration
    section = record.get(hardware.kind) or {}
    if hardware.kind == "gpu":
        key = "int8" if weight_format == "int8" else "float16"
    else:
        key = weight_format
    entry = section.get(key)
    note = ""
    if entry is None and section:
        fallback = next(iter(section))
        entry = section[fallback]
        note = f"; {weight_format} on {hardware.kind.upper()} is not calibrated, so the {fallback} factors are used"
    if entry is None:
        raise ConfigError(
            f"No {hardware.kind.upper()} efficiency calibration is shipped in mii_azure/{CALIBRATION_FILE}; run "
            f"benchmarks/{'cpu_cost_calibration' if hardware.kind == 'cpu' else 'gpu_cost_calibration_published'}.py.",
            conflict="calibration",
        )
    calibrated = bool(entry.get("calibrated")) and not note and key in section
    if weight_format == "float32" and hardware.kind == "gpu":
        note += "; float32 on GPU uses the half-precision factors (uncalibrated)"
        calibrated = False
    return Efficiency(
        bandwidth=float(entry["bandwidth_efficiency"]),
        flops=float(entry["flops_efficiency"]),
        calibrated=calibrated,
        basis=str(entry.get("basis", "")) + note,
    )


def fit_two_points(points: Sequence[tuple[Timing, float]]) -> tuple[float, float]:
    """(bandwidth, FLOPs) efficiencies that reproduce two measured times exactly.

    Each point is the step's :class:`Timing` at peak rates (efficiency 1) and the measured seconds;
    solves ``measured = memory / e_bw + compute / e_flops + communication + offload`` for both.
    """
    if len(points) != 2:
        raise ConfigError(f"fit_two_points needs exactly 2 measurements, got {len(points)}.")
    (t1, m1), (t2, m2) = points
    a1, b1, r1 = t1.memory_s, t1.compute_s, m1 - t1.communication_s - t1.offload_s
    a2, b2, r2 = t2.memory_s, t2.compute_s, m2 - t2.communication_s - t2.offload_s
    determinant = a1 * b2 - a2 * b1
    if abs(determinant) < 1e-30:
        raise ConfigError("The two measurements have the same memory/compute mix; measure at different batch or prompt sizes.")
    inverse_bandwidth = (r1 * b2 - r2 * b1) / determinant
    inverse_flops = (a1 * r2 - a2 * r1) / determinant
    if inverse_bandwidth <= 0 or inverse_flops <= 0:
        raise ConfigError(
            "The measurements cannot be explained by positive efficiencies (a noisy run?); measure again, "
            f"got 1/e_bw={inverse_bandwidth:.3g}, 1/e_flops={inverse_flops:.3g}."
        )
    return 1 / inverse_bandwidth, 1 / inverse_flops
