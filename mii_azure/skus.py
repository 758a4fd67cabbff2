"""The Azure GPU SKU catalog: the VM sizes a managed online endpoint can run on, with their numbers.

The data (``data/azure_gpu_skus.csv``, and ``data/azure_retired_skus.csv`` for sizes Azure has
retired) says where each figure comes from and as of when. A name is matched without case and
without the ``Standard_`` prefix, and resolves to one size or to several:

* a full name (``Standard_ND96amsr_A100_v4``, ``nd96amsr_a100_v4``) or a unique prefix (``NC24ads``): that size;
* an alias of one shape (:data:`ALIASES`: ``H100x8``, ``A100-80GBx8``, ``A100-40GBx8``): that size;
* an alias of a group (:data:`GROUP_ALIASES`): ``ND96`` is every ND96 size on the managed online
  endpoint list, ``A100``/``H100``/``H200``/``A10``/``T4``/``V100`` every size with that GPU model.

:func:`resolve_sku_name` returns the sizes a name stands for; :func:`get_sku` needs exactly one.
Choosing among a group for a model (the cheapest on which it fits) is :func:`mii_azure.sku_choice.choose_sku`.
"""

from __future__ import annotations

import csv
import difflib
import io
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Callable, Iterable, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from .errors import ConfigError, SkuNotAvailableError
from .hardware import Hardware

__all__ = [
    "Sku",
    "RetiredSku",
    "SkuMatch",
    "catalog",
    "retired_skus",
    "get_sku",
    "resolve_sku_name",
    "nearest_skus",
    "compute_capability",
    "cuda_builds_for",
    "quota_family_key",
    "price_text",
    "by_price",
    "labels",
    "CATALOG_AS_OF",
    "CATALOG_SOURCE",
    "ALIASES",
    "GROUP_ALIASES",
    "MIN_COMPUTE_CAPABILITY",
]

CATALOG_AS_OF = "2026-11-26"
CATALOG_SOURCE = (
    "Microsoft managed online endpoint SKU list and VM size pages; NVIDIA data sheets; "
    "Azure Retail Prices API (Linux pay-as-you-go, eastus, indicative)"
)

#: Short names of one shape each, documented in the README.
ALIASES: dict[str, str] = {
    "A100-80GBx8": "Standard_ND96amsr_A100_v4",
    "A100-40GBx8": "Standard_ND96asr_v4",
    "H100x8": "Standard_ND96isr_H100_v5",
}

#: Short names of several sizes; with a model to fit, the cheapest size on which it fits is chosen.
GROUP_ALIASES: dict[str, str] = {
    "ND96": "every ND96 size on the managed online endpoint list (8 GPUs each)",
    "A100": "every size with NVIDIA A100 GPUs",
    "H100": "every size with NVIDIA H100 GPUs",
    "H200": "every size with NVIDIA H200 GPUs",
    "A10": "every size with NVIDIA A10 GPUs",
    "T4": "every size with NVIDIA T4 GPUs",
    "V100": "every size with NVIDIA V100 GPUs",
}
_NAME_PREFIX_GROUPS = {"nd96"}  # group aliases matched by name prefix (the others by GPU model)

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

#: The lowest compute capability each CUDA toolkit major version still compiles for. CUDA 13.0
#: removed offline compilation for Maxwell, Pascal and Volta (sm_50 to sm_72; CUDA 13.0 release
#: notes, "Deprecated Architectures"); CUDA 12 builds for sm_50 and newer. PyTorch's own CUDA 12.8
#: and 12.9 wheels already leave out sm_70 (pytorch/pytorch#157517); its CUDA 12.6 wheels keep it.
MIN_COMPUTE_CAPABILITY: dict[int, str] = {12: "5.0", 13: "7.5"}


def compute_capability(gpu_model: str) -> str:
    """The CUDA compute capability (``"8.0"``) of a catalog GPU model such as ``"A100-80GB-SXM"``."""
    for prefix in sorted(_COMPUTE_CAPABILITY, key=len, reverse=True):  # "A100" before "A10"
        if gpu_model.upper().startswith(prefix):
            return _COMPUTE_CAPABILITY[prefix]
    raise ConfigError(f"No compute capability is known for GPU model {gpu_model!r}.", gpu_model=gpu_model)


def cuda_builds_for(capability: str, cuda_major: int) -> bool:
    """Whether CUDA ``cuda_major``'s compiler still targets GPUs of compute ``capability`` (``"7.0"``)."""
    lowest = MIN_COMPUTE_CAPABILITY.get(cuda_major)
    if lowest is None:
        raise ConfigError(
            f"No minimum compute capability is recorded for CUDA {cuda_major}; known: "
            f"{', '.join(str(major) for major in sorted(MIN_COMPUTE_CAPABILITY))}.",
            cuda_major=cuda_major,
        )
    return _capability_tuple(capability) >= _capability_tuple(lowest)


def quota_family_key(name: str) -> str:
    """A VM family name as a comparison key: Azure writes the same family as ``standardNCASv3_T4Family``,
    ``Standard NCASv3_T4 Family`` or ``Standard NCASv3_T4 Family vCPUs`` depending on the API."""
    key = "".join(name.split()).lower()
    return key[: -len("vcpus")] if key.endswith("familyvcpus") else key


def price_text(usd_per_hour: Optional[float]) -> str:
    """``"$27.20/h"``, or ``"unpriced"`` where the catalog has no price."""
    return "unpriced" if usd_per_hour is None else f"${usd_per_hour:,.2f}/h"


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
    #: The VM family whose vCPU quota the size uses (compare with :func:`quota_family_key`).
    quota_family: str = ""
    #: Whether Azure ML skips its 20% upgrade reservation for this size.
    quota_exempt_from_reserve: bool = False
    notes: str = ""

    @property
    def compute_capability(self) -> str:
        """The CUDA compute capability of the SKU's GPUs (``"9.0"`` for H100)."""
        return compute_capability(self.gpu_model)

    @property
    def gpu_family(self) -> str:
        """The GPU model without its variant: ``"A100"`` for ``"A100-80GB-SXM"``."""
        return self.gpu_model.split("-")[0].upper()

    @property
    def total_gpu_memory_gb(self) -> float:
        """GPU memory over all GPUs."""
        return self.gpus * self.gpu_memory_gb

    @property
    def label(self) -> str:
        """``"Standard_ND96asr_v4 ($27.20/h)"``: the name and price used in messages."""
        return f"{self.instance_type} ({price_text(self.usd_per_hour)})"

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


class RetiredSku(BaseModel):
    """A VM size Azure has retired: when, what it had, and what to use instead."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str
    series: str
    gpus: int
    gpu_model: str
    gpu_memory_gb: float
    retired_on: date
    replacement: str
    source: str

    @property
    def total_gpu_memory_gb(self) -> float:
        """GPU memory over all GPUs."""
        return self.gpus * self.gpu_memory_gb


class SkuMatch(BaseModel):
    """The sizes a name stands for, and how it matched (``kind``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requested: str
    kind: Literal["name", "prefix", "alias", "group"]
    skus: tuple[Sku, ...]

    def describe(self) -> str:
        """How the name matched, for a choice's reason: ``"'NC24ads' is the unique prefix of ..."``."""
        if self.kind == "group":
            return f"{self.requested!r} is an alias of {GROUP_ALIASES[_group_key(self.requested)]}"
        target = self.skus[0].instance_type
        if self.kind == "name":
            return f"{target} was named"
        if self.kind == "prefix":
            return f"{self.requested!r} is the unique prefix of {target}"
        return f"{self.requested!r} is an alias of {target}"


@lru_cache(maxsize=1)
def catalog() -> tuple[Sku, ...]:
    """Every SKU of the catalog, in catalog order."""
    return tuple(_sku(row) for row in _rows("data/azure_gpu_skus.csv"))


@lru_cache(maxsize=1)
def retired_skus() -> tuple[RetiredSku, ...]:
    """Every retired size of ``data/azure_retired_skus.csv``, with its retirement date and replacement."""
    return tuple(
        RetiredSku(
            instance_type=row["instance_type"],
            series=row["series"],
            gpus=int(row["gpus"]),
            gpu_model=row["gpu_model"],
            gpu_memory_gb=float(row["gpu_mem_gb"]),
            retired_on=date.fromisoformat(row["retired_on"]),
            replacement=row["replacement"],
            source=row["source"],
        )
        for row in _rows("data/azure_retired_skus.csv")
    )


def resolve_sku_name(name: str, *, keep: Optional[Callable[[Sku], bool]] = None) -> SkuMatch:
    """The size(s) ``name`` stands for (full name, unique prefix, or alias; any case, with or
    without ``Standard_``).

    Raises :class:`~mii_azure.errors.SkuNotAvailableError` for an unknown name (with the closest
    names), a retired size (with its retirement date and replacement) or a prefix of several sizes.
    ``keep`` narrows the alternatives a refusal names to sizes it accepts (e.g. those a model plans on).
    """
    wanted = _normalize(name)
    skus = catalog()
    exact = [sku for sku in skus if _normalize(sku.instance_type) == wanted]
    if exact:
        return SkuMatch(requested=name.strip(), kind="name", skus=(exact[0],))
    retired = _retired_named(wanted)
    if retired is not None:
        raise _retired_error(name, retired, keep)
    shapes = {alias.lower(): target for alias, target in ALIASES.items()}
    if wanted in shapes:
        return SkuMatch(requested=name.strip(), kind="alias", skus=(_by_name(shapes[wanted]),))
    group = _group_members(wanted)
    if group is not None:
        return SkuMatch(requested=name.strip(), kind="group", skus=group)
    matches = [sku for sku in skus if _normalize(sku.instance_type).startswith(wanted)] if wanted else []
    if len(matches) == 1:
        return SkuMatch(requested=name.strip(), kind="prefix", skus=(matches[0],))
    if matches:
        listed = ", ".join(sku.label for sku in matches)
        raise SkuNotAvailableError(
            f"SKU {name!r} matches several SKUs: {listed}. Name one (a longer prefix will do), or use an alias "
            f"that picks the cheapest on which the model fits: {', '.join(GROUP_ALIASES)}.",
            sku=name,
            reason="ambiguous",
            candidates=[sku.instance_type for sku in matches],
            alternatives=_priced(matches),
        )
    retired_prefix = [item for item in retired_skus() if _normalize(item.instance_type).startswith(wanted)] if wanted else []
    if retired_prefix and len({item.series for item in retired_prefix}) == 1:
        raise _retired_error(name, retired_prefix[0], keep)
    raise _unknown_error(name, wanted)


def get_sku(name: str) -> Sku:
    """The SKU called ``name`` (full name, unique prefix, or an alias of one size; case does not matter).

    An alias of several sizes (``ND96``, ``A100``, ...) raises :class:`~mii_azure.errors.SkuNotAvailableError`
    listing them with their prices: without a model there is nothing to choose by. ``plan``,
    ``package`` and ``estimate_cost`` choose among them (:func:`mii_azure.sku_choice.choose_sku`).
    """
    match = resolve_sku_name(name)
    if len(match.skus) == 1:
        return match.skus[0]
    raise SkuNotAvailableError(
        f"SKU {name!r} matches several SKUs ({GROUP_ALIASES[_group_key(name)]}): "
        f"{', '.join(sku.label for sku in match.skus)}. Name one, or plan a model with sku={name.strip()!r} "
        "(mii_azure.plan, package, deploy, estimate_cost) to get the cheapest on which it fits.",
        sku=name,
        reason="ambiguous",
        candidates=[sku.instance_type for sku in match.skus],
        alternatives=_priced(match.skus),
    )


def nearest_skus(
    gpu_family: str,
    total_gpu_memory_gb: float,
    *,
    exclude: Iterable[str] = (),
    keep: Optional[Callable[[Sku], bool]] = None,
    limit: int = 3,
) -> tuple[Sku, ...]:
    """Sizes like a refused one, cheapest first: on the managed online endpoint list, with the same GPU
    model or between half and twice its GPU memory, accepted by ``keep``; any listed size ``keep``
    accepts when none of those is."""
    excluded = {_normalize(name) for name in exclude}
    pool = [sku for sku in catalog() if sku.on_managed_endpoint_list and _normalize(sku.instance_type) not in excluded]
    alike = [
        sku
        for sku in pool
        if sku.gpu_family == gpu_family.upper() or total_gpu_memory_gb / 2 <= sku.total_gpu_memory_gb <= total_gpu_memory_gb * 2
    ]
    accepted = [sku for sku in alike if keep is None or keep(sku)]
    if not accepted and keep is not None:
        accepted = [sku for sku in pool if keep(sku)]
    return tuple(sorted(accepted, key=by_price)[:limit])


def by_price(sku: Sku) -> tuple[bool, float, int]:
    """Sort key: cheapest first, unpriced sizes last, then catalog order."""
    return (sku.usd_per_hour is None, sku.usd_per_hour or 0.0, catalog().index(sku))


def labels(skus: Sequence[Sku]) -> str:
    """``"A ($1.00/h), B ($2.00/h)"``."""
    return ", ".join(sku.label for sku in skus)


# --- internals ------------------------------------------------------------------------------
def _rows(path: str) -> list[dict[str, str]]:
    text = resources.files("mii_azure").joinpath(path).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#")))))


def _normalize(name: str) -> str:
    lowered = name.strip().lower()
    return lowered[len("standard_") :] if lowered.startswith("standard_") else lowered


def _capability_tuple(capability: str) -> tuple[int, ...]:
    return tuple(int(part) for part in capability.split("."))


def _by_name(instance_type: str) -> Sku:
    return next(sku for sku in catalog() if sku.instance_type == instance_type)


def _group_key(name: str) -> str:
    wanted = _normalize(name)
    return next(alias for alias in GROUP_ALIASES if alias.lower() == wanted)


def _group_members(wanted: str) -> Optional[tuple[Sku, ...]]:
    if wanted not in {alias.lower() for alias in GROUP_ALIASES}:
        return None
    if wanted in _NAME_PREFIX_GROUPS:
        return tuple(
            sku for sku in catalog() if _normalize(sku.instance_type).startswith(wanted) and sku.on_managed_endpoint_list
        )
    return tuple(sku for sku in catalog() if sku.gpu_family.lower() == wanted)


def _retired_named(wanted: str) -> Optional[RetiredSku]:
    return next((item for item in retired_skus() if _normalize(item.instance_type) == wanted), None)


def _priced(skus: Iterable[Sku]) -> list[dict[str, object]]:
    return [{"instance_type": sku.instance_type, "usd_per_hour": sku.usd_per_hour} for sku in skus]


def _retired_error(name: str, retired: RetiredSku, keep: Optional[Callable[[Sku], bool]]) -> SkuNotAvailableError:
    replacement = _by_name(retired.replacement)
    alike = nearest_skus(retired.gpu_model, retired.total_gpu_memory_gb, exclude=[replacement.instance_type], keep=keep)
    replacement_ok = keep is None or keep(replacement)
    offered = ([replacement] if replacement_ok else []) + list(alike)
    suggestion = (
        f"use {replacement.label}, the suggested replacement"
        if replacement_ok
        else f"its suggested replacement, {replacement.label}, does not serve this model"
    )
    others = f"; sizes like it: {labels(alike)}" if alike else ""
    return SkuNotAvailableError(
        f"{retired.instance_type} ({retired.series}-series, {retired.gpus}x {retired.gpu_model} {retired.gpu_memory_gb:g} GB) "
        f"was retired by Azure on {retired.retired_on.isoformat()} ({retired.source}); {suggestion}{others}.",
        sku=name,
        reason="retired",
        retired_on=retired.retired_on,
        replacement=replacement.instance_type,
        alternatives=_priced(offered),
    )


def _unknown_error(name: str, wanted: str) -> SkuNotAvailableError:
    names = {_normalize(sku.instance_type): sku.label for sku in catalog()}
    names.update({alias.lower(): f"{alias} (alias)" for alias in [*ALIASES, *GROUP_ALIASES]})
    close = [names[match] for match in difflib.get_close_matches(wanted, list(names), n=3, cutoff=0.6)]
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return SkuNotAvailableError(
        f"SKU {name!r} is not in the Azure GPU SKU catalog.{hint} Use one of: "
        f"{', '.join(sku.instance_type for sku in catalog())} (or an alias: {', '.join([*GROUP_ALIASES, *ALIASES])}).",
        sku=name,
        reason="unknown",
        did_you_mean=[text.split(" (")[0] for text in close],
        candidates=[sku.instance_type for sku in catalog()],
    )


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
        quota_family=row["quota_family"],
        quota_exempt_from_reserve=row["quota_exempt_from_reserve"] == "yes",
        notes=row["notes"],
    )
