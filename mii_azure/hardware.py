"""What a model will run on: an Azure GPU SKU or the local machine, as plain numbers.

Pure: no torch, no network. ``Hardware.local()`` reads /proc and, only if torch is already
installed, asks it for GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Hardware", "GIB", "GB"]

GB = 1e9
GIB = 2**30


class Hardware(BaseModel):
    """A machine's accelerators and host, the facts the planner and the cost model need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="SKU name, or 'local' for this machine.")
    kind: Literal["gpu", "cpu"]
    gpus: int = 0
    gpu_model: Optional[str] = None
    gpu_memory_gb: float = 0.0
    gpu_bandwidth_gb_s: float = 0.0
    gpu_fp16_tflops: float = 0.0
    gpu_int8_tops: Optional[float] = None
    bf16: bool = Field(False, description="Whether bf16 runs natively (GPU tensor cores, or CPU AVX-512 BF16 / AMX).")
    interconnect: Optional[str] = None
    interconnect_gb_s: float = 0.0
    cpu_cores: int = 1
    ram_gb: Optional[float] = None
    cpu_bandwidth_gb_s: Optional[float] = Field(None, description="Measured host memory read bandwidth, if known.")
    cpu_peak_gflops: Optional[float] = Field(
        None, description="Peak dense GFLOPs of all cores in the dtype served (cores x clock x FLOPs per cycle), if known."
    )
    usd_per_hour: Optional[float] = None
    source: str = ""

    @property
    def total_gpu_memory_gb(self) -> float:
        """GPU memory over all GPUs."""
        return self.gpus * self.gpu_memory_gb

    def describe(self) -> str:
        """One line for plans and tables."""
        if self.kind == "gpu":
            return f"{self.name}: {self.gpus}x {self.gpu_model} {self.gpu_memory_gb:g} GB"
        memory = f", {self.ram_gb:.0f} GB RAM" if self.ram_gb else ""
        return f"{self.name}: CPU, {self.cpu_cores} cores{memory}{', bf16' if self.bf16 else ''}"

    @classmethod
    def local(cls, *, cpu_bandwidth_gb_s: Optional[float] = None) -> "Hardware":
        """This machine: its CUDA GPUs when torch sees any, else its CPU."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        ram_gb = _meminfo_total_gb()
        gpu = _local_gpu()
        if gpu is not None:
            count, model, memory_gb, bf16 = gpu
            return cls(
                name="local",
                kind="gpu",
                gpus=count,
                gpu_model=model,
                gpu_memory_gb=memory_gb,
                bf16=bf16,
                cpu_cores=cores,
                ram_gb=ram_gb,
                source="detected with torch.cuda",
            )
        return cls(
            name="local",
            kind="cpu",
            bf16=_cpu_has_bf16(),
            cpu_cores=cores,
            ram_gb=ram_gb,
            cpu_bandwidth_gb_s=cpu_bandwidth_gb_s,
            source="detected from /proc",
        )

    @classmethod
    def cpu(
        cls,
        *,
        cores: int,
        ram_gb: float,
        bf16: bool = False,
        bandwidth_gb_s: Optional[float] = None,
        peak_gflops: Optional[float] = None,
        name: str = "cpu",
        usd_per_hour: Optional[float] = None,
    ) -> "Hardware":
        """A CPU-only machine described by hand; the cost estimator needs ``bandwidth_gb_s`` and ``peak_gflops``."""
        return cls(
            name=name,
            kind="cpu",
            cpu_cores=cores,
            ram_gb=ram_gb,
            bf16=bf16,
            cpu_bandwidth_gb_s=bandwidth_gb_s,
            cpu_peak_gflops=peak_gflops,
            usd_per_hour=usd_per_hour,
            source="given",
        )


def _meminfo_total_gb() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def _local_gpu() -> Optional[tuple[int, str, float, bool]]:
    """(count, model, memory GB, bf16) of local CUDA GPUs, only when torch is installed and sees any."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    properties = torch.cuda.get_device_properties(0)
    return (
        torch.cuda.device_count(),
        properties.name,
        properties.total_memory / GB,
        bool(torch.cuda.is_bf16_supported()),
    )
