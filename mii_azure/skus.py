"""The Azure GPU SKU catalog: the VM sizes a managed online endpoint can run on, with their numbers.

The data (``data/azure_gpu_skus.csv``) says where each figure comes from and as of when. Names are
matched without case and without the ``Standard_`` prefix; a unique prefix is enough (``NC24ads``),
and a few documented aliases name common choices (``ND96`` is 8x A100 80GB, the hardware of the
DeepSpeed-MII Azure results).
"""

from __future__ import annotations

import csv
import io
from functools import lru_cache
from importlib import resources
from typing import Optional

from pydantic import BaseModel, ConfigDict

from .errors import ConfigError
from .hardware import Hardware

__all__ = ["Sku", "catalog", "get_sku", "compute_capability", "CATALOG_AS_OF", "CATALOG_SOURCE", "ALIASES"]

CATALOG_AS_OF = "2026-11-26"
CATALOG_SOURCE = (
    "Microsoft managed online endpoint SKU list and VM size pages; NVIDIA data sheets; "
    "Azure Retail Prices API (Linux pay-as-you-go, eastus, indicative)"
)

#: Short names for common choices, documented in the README.
ALIASES: dict[str, str] = {
    "ND96": "Standard_ND96amsr_A100_v4",
    "A100-80GBx8": "Standard_ND96amsr_A100_v4",
    "A100-40GBx8": "Standard_ND96asr_v4",
    "H100x8": "Standard_ND96isr_H100_v5",
    "A100": "Standard_NC24ads_A100_v4",
    "T4": "Standard_NC4as_T4_v3",
    "A10": "Standard_NV36ads_A10_v5",
}


#: CUDA compute capability of each GPU model of the catalog (NVIDIA's CUDA GPUs table), by the
#: catalog's ``gpu_model`` prefix: what a CUDA build must target (``TORCH_CUDA_ARCH_LIST``).
_COMPUTE_CAPABILITY: dict[str, str] = {
    "T4": "7.5",
    "A10": "8.6",
    "A100": "8.0",
    "H100": "9.0",
    "H200": "9.0",
    "V100": "7.0",
}


def compute_capability(gpu_model: str) -> str:
    """The CUDA compute capability (``"8.0"``) of a catalog GPU model such as ``"A100-80GB-SXM"``."""
    for prefix in sorted(_COMPUTE_CAPABILITY, key=len, reverse=True):  # "A100" before "A10"
        if gpu_model.upper().startswith(prefix):
            return _COMPUTE_CAPABILITY[prefix]
    raise ConfigError(f"No compute capability is known for GPU model {gpu_model!r}.", gpu_model=gpu_model)


class Sku(BaseModel):
    """One Azure VM size of the catalog."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str
    gpus: int
    gpu_model: str
    gpu_memory_gb: float
    gpu_bandwidth_gb_s: float
    gpu_fp16_tflops: float
    gpu_int8_tops: Optional[float]
    bf16: bool
    interconnect: str
    interconnect_gb_s: float
    vcpus: int
    ram_gib: Optional[float]
    usd_per_hour: Optional[float]
    on_managed_endpoint_list: bool
    notes: str = ""

    @property
    def compute_capability(self) -> str:
        """The CUDA compute capability of the SKU's GPUs (``"9.0"`` for H100)."""
        return compute_capability(self.gpu_model)

    @property
    def hardware(self) -> Hardware:
        """The SKU as the planner's Hardware."""
        return Hardware(
            name=self.instance_type,
            kind="gpu",
            gpus=self.gpus,
            gpu_model=self.gpu_model,
            gpu_memory_gb=self.gpu_memory_gb,
            gpu_bandwidth_gb_s=self.gpu_bandwidth_gb_s,
            gpu_fp16_tflops=self.gpu_fp16_tflops,
            gpu_int8_tops=self.gpu_int8_tops,
            bf16=self.bf16,
            interconnect=self.interconnect,
            interconnect_gb_s=self.interconnect_gb_s,
            cpu_cores=self.vcpus,
            ram_gb=self.ram_gib * 2**30 / 1e9 if self.ram_gib else None,
            usd_per_hour=self.usd_per_hour,
            source=f"Azure SKU catalog as of {CATALOG_AS_OF}",
        )


@lru_cache(maxsize=1)
def catalog() -> tuple[Sku, ...]:
    """Every SKU of the catalog, in catalog order."""
    text = resources.files("mii_azure").joinpath("data/azure_gpu_skus.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#"))))
    return tuple(_sku(row) for row in rows)


def get_sku(name: str) -> Sku:
    """The SKU called ``name`` (full name, alias, or unique prefix; case does not matter)."""
    aliases = {alias.lower(): target for alias, target in ALIASES.items()}
    wanted = _normalize(aliases.get(name.strip().lower(), name))
    skus = catalog()
    exact = [sku for sku in skus if _normalize(sku.instance_type) == wanted]
    if exact:
        return exact[0]
    matches = [sku for sku in skus if _normalize(sku.instance_type).startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sku.instance_type for sku in (matches or skus))
    problem = "matches several SKUs" if matches else "is not in the Azure GPU SKU catalog"
    raise ConfigError(
        f"SKU {name!r} {problem}. Use one of: {known} (or an alias: {', '.join(ALIASES)}).",
        sku=name,
        candidates=[sku.instance_type for sku in (matches or skus)],
    )


def _normalize(name: str) -> str:
    lowered = name.strip().lower()
    return lowered[len("standard_") :] if lowered.startswith("standard_") else lowered


def _number(text: str) -> Optional[float]:
    return float(text) if text.strip() else None


def _sku(row: dict[str, str]) -> Sku:
    return Sku(
        instance_type=row["instance_type"],
        gpus=int(row["gpus"]),
        gpu_model=row["gpu_model"],
        gpu_memory_gb=float(row["gpu_mem_gb"]),
        gpu_bandwidth_gb_s=float(row["gpu_hbm_gb_s"]),
        gpu_fp16_tflops=float(row["gpu_fp16_tflops_dense"]),
        gpu_int8_tops=_number(row["gpu_int8_tops_dense"]),
        bf16=row["bf16"] == "yes",
        interconnect=row["interconnect"],
        interconnect_gb_s=float(row["interconnect_gb_s"]),
        vcpus=int(row["vcpus"]),
        ram_gib=_number(row["ram_gib"]),
        usd_per_hour=_number(row["usd_per_hour_eastus"]),
        on_managed_endpoint_list=row["on_managed_endpoint_list"] == "yes",
        notes=row["notes"],
    )
