"""Which Azure VM size serves a model: resolving a SKU name for a plan, and the pure preflight checks.

``choose_sku(facts, "ND96")`` resolves a name (:func:`mii_azure.skus.resolve_sku_name`), plans the
model on every size it stands for, and picks one:

* a full name, unique prefix or one-shape alias is that size;
* a group alias (``ND96``, ``A100``, ``H100``, ...) picks the cheapest size on which the plan fits
  *plainly*: at its planned dtype, without int8 weights or ZeRO-Inference offload the caller did not
  ask for. When none fits plainly, it picks the cheapest on which the plan fits at all and says so.
  ``strict=True`` refuses to pick and lists the candidates instead.

Refused, each naming the nearest workable sizes with their prices (same GPU model or similar memory,
cheapest first, only sizes on which the model plans): unknown names (with "did you mean"), retired
sizes (with the retirement date and replacement), sizes not on the managed online endpoint list,
GPUs the serving image's CUDA cannot build for (V100's sm_70 under CUDA 13), a model that plans on
no candidate, and tensor parallelism above a size's GPUs.

The quota and timeout rules of managed online endpoints live here too (:func:`required_vcpus`,
:func:`check_request_timeout`), so the Azure-calling preflight only has to read the numbers.
Pure: no torch, no azure, no network.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict

from .errors import ConfigError, SkuDoesNotFitError, SkuNotAvailableError
from .hardware import GB
from .models import ModelFacts, resolve_model, resolve_task
from .planner import OptimizationPlan, PlanOverrides, make_plan
from .skus import (
    CATALOG_AS_OF,
    Sku,
    SkuMatch,
    by_price,
    catalog,
    cuda_builds_for,
    labels,
    nearest_skus,
    price_text,
    resolve_sku_name,
)

__all__ = [
    "SkuCandidate",
    "SkuChoice",
    "choose_sku",
    "required_vcpus",
    "check_request_timeout",
    "SERVING_CUDA_MAJOR",
    "AZURE_MAX_REQUEST_TIMEOUT_S",
    "UPGRADE_RESERVE",
]

#: CUDA major version of the serving image's torch: torch 2.13.0's Linux wheel on PyPI is a CUDA 13
#: build (its metadata requires cuda-toolkit 13.0.3; see /work/shared/reference/FACTS.md).
SERVING_CUDA_MAJOR = 13
#: Managed online endpoints cap a request at 180 s (Azure ML "manage quotas" page, endpoint limits).
AZURE_MAX_REQUEST_TIMEOUT_S = 180
#: Extra instances Azure ML reserves for upgrades on sizes not exempt from it ("manage quotas" page:
#: "if you request 10 instances in a deployment, you must have a quota for 12").
UPGRADE_RESERVE = Fraction(1, 5)

#: Planner conflicts another size may resolve (the same set the cost estimator reports as "does not fit").
_SKU_DEPENDENT = frozenset({"memory", "max_batch_size", "zero_offload", "replicas"})
_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


class SkuCandidate(BaseModel):
    """One size a name stands for, and how the model plans on it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str
    usd_per_hour: Optional[float]
    gpus: int
    gpu_model: str
    gpu_memory_gb: float
    #: False when the size was left out before planning (not on the endpoint list, CUDA); see ``why_not``.
    eligible: bool = True
    #: The plan works on this size at all.
    fits: bool = False
    #: It works without int8 weights or offload the caller did not ask for.
    plain: bool = False
    dtype: Optional[str] = None
    quantization: Optional[str] = None
    zero_offload: Optional[str] = None
    tensor_parallel: Optional[int] = None
    replicas: Optional[int] = None
    #: Why the size does not fit (the planner's message), or fits only with int8 / offload.
    why_not: Optional[str] = None
    conflict: Optional[str] = None

    @property
    def label(self) -> str:
        """``"Standard_ND96asr_v4 ($27.20/h)"``."""
        return f"{self.instance_type} ({price_text(self.usd_per_hour)})"

    def describe(self) -> str:
        """``"Standard_ND96asr_v4 ($27.20/h): fits only with int8 weights"`` and the like."""
        if not self.eligible:
            return f"{self.label}: left out, {self.why_not}"
        if self.plain:
            copies = f" x {self.replicas} copies" if self.replicas and self.replicas > 1 else ""
            return f"{self.label}: fits at {_DTYPE.get(self.dtype or '', self.dtype)}, tensor_parallel={self.tensor_parallel}{copies}"
        if self.fits:
            return f"{self.label}: fits only {_how_it_fits(self.quantization, self.zero_offload)}"
        return f"{self.label}: does not plan ({self.conflict or 'error'})"


class SkuChoice(BaseModel):
    """The size chosen for a name, the plan on it, why this one, and every candidate considered."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requested: str
    sku: Sku
    plan: OptimizationPlan
    #: One sentence: why this size.
    reason: str
    candidates: tuple[SkuCandidate, ...]


def choose_sku(
    facts: Union[str, ModelFacts],
    name: str,
    *,
    task: Optional[str] = None,
    overrides: PlanOverrides = PlanOverrides(),
    strict: bool = False,
    allow_unlisted: bool = False,
    cuda_major: Optional[int] = SERVING_CUDA_MAJOR,
) -> SkuChoice:
    """The size ``name`` stands for, planned for ``facts`` (a model reference or resolved facts).

    ``allow_unlisted`` keeps sizes that are not on the managed online endpoint list (for plans and
    cost comparisons; a deployment cannot use them). ``cuda_major`` is the CUDA major version the
    serving image builds with (None: no check). A group alias's choice is also recorded in the plan's
    ``reasons["sku"]``. Raises :class:`~mii_azure.errors.SkuNotAvailableError` or
    :class:`~mii_azure.errors.SkuDoesNotFitError` (both ConfigErrors), or the planner's ConfigError
    for a choice that no size can change (say ``cuda_graph=True`` for text generation).
    """
    model = facts if isinstance(facts, ModelFacts) else resolve_model(facts)
    assess = _Assessor(model, resolve_task(model, task), overrides, cuda_major)
    match = resolve_sku_name(name, keep=assess.workable)
    usable = [sku for sku in match.skus if _refusal(sku, allow_unlisted, cuda_major) is None]
    left_out = [sku for sku in match.skus if sku not in usable]
    if not usable:
        raise _refused_error(match, left_out[0], allow_unlisted, cuda_major, assess)
    candidates = tuple(assess(sku) for sku in usable) + tuple(
        _left_out_candidate(sku, _refusal(sku, allow_unlisted, cuda_major) or "") for sku in left_out
    )
    if len(usable) == 1:
        return _single(match, usable[0], candidates, assess, left_out)
    if strict:
        raise SkuNotAvailableError(
            f"SKU {name!r} matches {len(usable)} sizes and strict=True asks for one: "
            f"{'; '.join(candidate.describe() for candidate in candidates)}. Name one of them.",
            sku=name,
            reason="ambiguous",
            candidates=[sku.instance_type for sku in usable],
            assessments=candidates,
            alternatives=_priced(usable),
        )
    return _pick(match, usable, candidates, assess, left_out)


def required_vcpus(sku: Sku, instance_count: int) -> int:
    """The vCPU quota of ``sku``'s VM family a managed online deployment of ``instance_count``
    instances needs: ``ceil(1.2 x instance_count) x vCPUs``, or ``instance_count x vCPUs`` on the
    sizes Azure ML exempts from its 20% upgrade reservation (``sku.quota_exempt_from_reserve``)."""
    if instance_count < 1:
        raise ConfigError(
            f"instance_count={instance_count} deploys nothing; use instance_count=1 or more.",
            conflict="instance_count",
            nearest=1,
        )
    instances = instance_count if sku.quota_exempt_from_reserve else math.ceil((1 + UPGRADE_RESERVE) * instance_count)
    return instances * sku.vcpus


def check_request_timeout(request_timeout_s: float, *, explicit: bool) -> tuple[int, Optional[str]]:
    """The deployment's ``request_timeout_ms`` for ``request_timeout_s``, and a note when it was capped.

    Managed online endpoints allow at most 180 s. A timeout the caller set (``explicit``) above
    that raises ConfigError naming the cap; a default above it is capped, and the note says so.
    """
    if request_timeout_s <= 0:
        raise ConfigError(
            f"request_timeout_s={request_timeout_s:g} must be positive; use at most {AZURE_MAX_REQUEST_TIMEOUT_S}.",
            conflict="request_timeout_s",
            nearest=AZURE_MAX_REQUEST_TIMEOUT_S,
        )
    if request_timeout_s <= AZURE_MAX_REQUEST_TIMEOUT_S:
        return int(round(request_timeout_s * 1000)), None
    if explicit:
        raise ConfigError(
            f"request_timeout_s={request_timeout_s:g} is over the {AZURE_MAX_REQUEST_TIMEOUT_S} s an Azure ML managed "
            f"online endpoint allows a request; use request_timeout_s={AZURE_MAX_REQUEST_TIMEOUT_S} or less (or stream "
            "long generations).",
            conflict="request_timeout_s",
            nearest=AZURE_MAX_REQUEST_TIMEOUT_S,
            limit_s=AZURE_MAX_REQUEST_TIMEOUT_S,
        )
    return AZURE_MAX_REQUEST_TIMEOUT_S * 1000, (
        f"the default request timeout of {request_timeout_s:g} s is capped at the {AZURE_MAX_REQUEST_TIMEOUT_S} s "
        "Azure ML managed online endpoints allow"
    )


# --- planning on candidates -----------------------------------------------------------------
class _Assessor:
    """Plans the model on sizes, once each, and remembers the plan or the planner's error."""

    def __init__(self, facts: ModelFacts, task: str, overrides: PlanOverrides, cuda_major: Optional[int]) -> None:
        self.facts = facts
        self.task = task
        self.overrides = overrides
        self.cuda_major = cuda_major
        self._seen: dict[str, tuple[SkuCandidate, Optional[OptimizationPlan], Optional[ConfigError]]] = {}

    def __call__(self, sku: Sku) -> SkuCandidate:
        return self.result(sku)[0]

    def plan(self, sku: Sku) -> Optional[OptimizationPlan]:
        return self.result(sku)[1]

    def fitting(self, skus: list[Sku]) -> list[tuple[Sku, OptimizationPlan]]:
        """The sizes of ``skus`` the model plans on, in the order given, each with its plan."""
        pairs = []
        for sku in skus:
            plan = self.plan(sku)
            if plan is not None:
                pairs.append((sku, plan))
        return pairs

    def error(self, sku: Sku) -> ConfigError:
        """The planner's error on ``sku`` (call only for a size without a plan)."""
        error = self.result(sku)[2]
        if error is None:
            raise ValueError(f"{sku.instance_type} has a plan, not an error")
        return error

    def workable(self, sku: Sku) -> bool:
        """Whether a refusal may offer ``sku``: the serving image builds for it and the model plans on it."""
        if self.cuda_major is not None and not cuda_builds_for(sku.compute_capability, self.cuda_major):
            return False
        return self(sku).fits

    def result(self, sku: Sku) -> tuple[SkuCandidate, Optional[OptimizationPlan], Optional[ConfigError]]:
        if sku.instance_type not in self._seen:
            self._seen[sku.instance_type] = self._assess(sku)
        return self._seen[sku.instance_type]

    def _assess(self, sku: Sku) -> tuple[SkuCandidate, Optional[OptimizationPlan], Optional[ConfigError]]:
        base = dict(
            instance_type=sku.instance_type,
            usd_per_hour=sku.usd_per_hour,
            gpus=sku.gpus,
            gpu_model=sku.gpu_model,
            gpu_memory_gb=sku.gpu_memory_gb,
        )
        try:
            plan = make_plan(self.facts, sku.hardware, task=self.task, overrides=self.overrides)
        except ConfigError as exc:
            candidate = SkuCandidate(**base, why_not=exc.message, conflict=exc.facts.get("conflict"))
            return candidate, None, exc
        unasked = _unasked_help(plan, self.overrides)
        candidate = SkuCandidate(
            **base,
            fits=True,
            plain=unasked is None,
            dtype=plan.dtype,
            quantization=plan.quantization,
            zero_offload=plan.zero_offload,
            tensor_parallel=plan.tensor_parallel,
            replicas=plan.replicas,
            why_not=f"the plan fits only {unasked}" if unasked else None,
        )
        return candidate, plan, None


def _unasked_help(plan: OptimizationPlan, overrides: PlanOverrides) -> Optional[str]:
    """How the plan fits only with int8 or offload the caller did not ask for, or None."""
    if plan.zero_offload is not None and overrides.zero_offload not in ("cpu", "nvme"):
        return _how_it_fits(None, plan.zero_offload)
    if plan.quantization == "int8" and overrides.quantization != "int8":
        return _how_it_fits("int8", None)
    return None


def _how_it_fits(quantization: Optional[str], zero_offload: Optional[str]) -> str:
    if zero_offload:
        return f"with ZeRO-Inference offload to {'host memory' if zero_offload == 'cpu' else 'NVMe'}"
    if quantization == "int8":
        return "with int8 weights"
    return "as planned"


def _plain_terms(dtype: str, overrides: PlanOverrides) -> str:
    """What "fits plainly" meant for this caller: ``"at fp16 without int8 or offload"``."""
    short = _DTYPE.get(dtype, dtype)
    if overrides.zero_offload in ("cpu", "nvme"):
        return f"at {short} with ZeRO-Inference offload as asked"
    if overrides.quantization == "int8":
        return f"at {short} with int8 weights as asked, without offload"
    return f"at {short} without int8 or offload"


# --- the outcomes ---------------------------------------------------------------------------
def _single(
    match: SkuMatch, sku: Sku, candidates: tuple[SkuCandidate, ...], assess: _Assessor, left_out: list[Sku]
) -> SkuChoice:
    plan = assess.plan(sku)
    if plan is None:
        raise _single_misfit(sku, assess)
    candidate = assess(sku)
    if match.kind == "group":
        reason = f"{match.requested!r} matches only {sku.label}" + _left_out_clause(left_out, candidates)
    else:
        reason = match.describe()
    if not candidate.plain and candidate.why_not:
        reason += f"; {candidate.why_not}"
    return _choice(match, sku, plan, reason + ".", candidates)


def _pick(
    match: SkuMatch, usable: list[Sku], candidates: tuple[SkuCandidate, ...], assess: _Assessor, left_out: list[Sku]
) -> SkuChoice:
    fitting = assess.fitting(sorted(usable, key=by_price))
    plain = [(sku, plan) for sku, plan in fitting if assess(sku).plain]
    count = f"{match.requested!r} matches {len(match.skus)} sizes"
    clause = _left_out_clause(left_out, candidates)
    if plain:
        sku, plan = plain[0]
        reason = f"{count}{clause}; {sku.label} is the cheapest on which the plan fits {_plain_terms(plan.dtype, assess.overrides)}."
        return _choice(match, sku, plan, reason, candidates)
    if fitting:
        sku, plan = fitting[0]
        reason = (
            f"{count}{clause} and the plan fits none of them {_plain_terms(plan.dtype, assess.overrides)}; {sku.label} is "
            f"the cheapest on which it fits at all, {_how_it_fits(plan.quantization, plan.zero_offload)}."
        )
        return _choice(match, sku, plan, reason, candidates)
    raise _group_misfit(match, usable, candidates, assess)


def _choice(match: SkuMatch, sku: Sku, plan: OptimizationPlan, reason: str, candidates: tuple[SkuCandidate, ...]) -> SkuChoice:
    if match.kind == "group":
        plan = plan.model_copy(update={"reasons": {"sku": reason, **plan.reasons}})
    return SkuChoice(requested=match.requested, sku=sku, plan=plan, reason=reason, candidates=candidates)


def _single_misfit(sku: Sku, assess: _Assessor) -> ConfigError:
    """The planner's error on the one size asked for, naming sizes that work when another size would."""
    error = assess.error(sku)
    conflict = error.facts.get("conflict")
    asked_tp = assess.overrides.tensor_parallel
    if conflict == "tensor_parallel" and asked_tp and asked_tp > sku.gpus:
        roomy = _roomy(assess, asked_tp)
        return SkuDoesNotFitError(
            f"{error.message.rstrip('.')}; {_roomy_text(roomy, asked_tp)}.",
            **{**error.facts, "sku": sku.instance_type, "alternatives": _priced(roomy)},
        )
    if conflict not in _SKU_DEPENDENT:
        return error
    alike = nearest_skus(sku.gpu_family, sku.total_gpu_memory_gb, exclude=[sku.instance_type], keep=assess.workable)
    tail = f" Sizes on which {assess.facts.name} plans with these settings: {labels(alike)}." if alike else ""
    return SkuDoesNotFitError(error.message + tail, **{**error.facts, "sku": sku.instance_type, "alternatives": _priced(alike)})


def _group_misfit(match: SkuMatch, usable: list[Sku], candidates: tuple[SkuCandidate, ...], assess: _Assessor) -> ConfigError:
    """No size of a group plans: the largest one's reason, and sizes elsewhere that work."""
    largest = max(usable, key=lambda sku: (sku.total_gpu_memory_gb, -by_price(sku)[1]))
    error = assess.error(largest)
    conflicts = {candidate.conflict for candidate in candidates if candidate.eligible}
    sku_dependent = conflicts <= _SKU_DEPENDENT | {"tensor_parallel"} and None not in conflicts
    if not sku_dependent and len(conflicts) == 1:
        return error  # the same choice fails everywhere (cuda_graph=True for generation, ...): the planner's own words
    facts = assess.facts
    size = ""
    if "memory" in conflicts and facts.parameter_count:
        dtype = assess.overrides.dtype or ("bfloat16" if facts.dtype == "bfloat16" else "float16")
        weights = facts.parameter_count * (4 if dtype == "float32" else 2) / GB
        size = (
            f" Its {_DTYPE.get(dtype, dtype)} weights alone are {weights:,.0f} GB ({facts.parameter_count * 1.02 / GB:,.0f} GB "
            f"in int8); the largest, {largest.instance_type}, has {largest.gpus}x {largest.gpu_memory_gb:g} = "
            f"{largest.total_gpu_memory_gb:g} GB of GPU memory."
        )
    asked_tp = assess.overrides.tensor_parallel
    if conflicts == {"tensor_parallel"} and asked_tp and asked_tp > max(sku.gpus for sku in usable):
        elsewhere = _roomy(assess, asked_tp)
        text = _roomy_text(elsewhere, asked_tp)
        tail = f" {text[0].upper()}{text[1:]}."
    else:
        elsewhere = nearest_skus(
            largest.gpu_family, largest.total_gpu_memory_gb, exclude=[sku.instance_type for sku in usable], keep=assess.workable
        )
        tail = f" Sizes on which it plans with these settings: {labels(elsewhere)}." if elsewhere else ""
    return SkuDoesNotFitError(
        f"{facts.name} plans on none of the {len(usable)} sizes {match.requested!r} matches "
        f"({', '.join(sku.label for sku in sorted(usable, key=by_price))}).{size} On {largest.instance_type}: "
        f"{error.message}{tail}",
        **{
            **error.facts,
            "sku": match.requested,
            "candidates": [sku.instance_type for sku in usable],
            "assessments": candidates,
            "alternatives": _priced(elsewhere),
        },
    )


def _roomy(assess: _Assessor, asked_tp: int) -> list[Sku]:
    """Listed sizes with ``asked_tp`` GPUs or more on which the model plans, cheapest first."""
    return sorted((sku for sku in _listed() if sku.gpus >= asked_tp and assess.workable(sku)), key=by_price)[:3]


def _roomy_text(roomy: list[Sku], asked_tp: int) -> str:
    if roomy:
        return f"sizes with {asked_tp} or more GPUs on which it plans: {labels(roomy)}"
    return f"no size in the catalog with {asked_tp} or more GPUs serves it"


# --- sizes a deployment cannot use ----------------------------------------------------------
def _refusal(sku: Sku, allow_unlisted: bool, cuda_major: Optional[int]) -> Optional[str]:
    """Why ``sku`` is left out before planning, or None."""
    if not sku.on_managed_endpoint_list and not allow_unlisted:
        return "not on the managed online endpoint list"
    if cuda_major is not None and not cuda_builds_for(sku.compute_capability, cuda_major):
        return f"CUDA {cuda_major} cannot build for its {sku.gpu_family} GPUs (sm_{sku.compute_capability.replace('.', '')})"
    return None


def _left_out_candidate(sku: Sku, why: str) -> SkuCandidate:
    return SkuCandidate(
        instance_type=sku.instance_type,
        usd_per_hour=sku.usd_per_hour,
        gpus=sku.gpus,
        gpu_model=sku.gpu_model,
        gpu_memory_gb=sku.gpu_memory_gb,
        eligible=False,
        why_not=why,
    )


def _left_out_clause(left_out: list[Sku], candidates: tuple[SkuCandidate, ...]) -> str:
    if not left_out:
        return ""
    why = {candidate.instance_type: candidate.why_not for candidate in candidates}
    return " (" + "; ".join(f"{sku.instance_type} left out: {why[sku.instance_type]}" for sku in left_out) + ")"


def _refused_error(
    match: SkuMatch, sku: Sku, allow_unlisted: bool, cuda_major: Optional[int], assess: _Assessor
) -> SkuNotAvailableError:
    alike = nearest_skus(sku.gpu_family, sku.total_gpu_memory_gb, exclude=[sku.instance_type], keep=assess.workable)
    offer = f"; sizes like it on which {assess.facts.name} plans: {labels(alike)}" if alike else ""
    named = f"{match.requested!r} matches only {sku.instance_type}, which" if match.kind == "group" else sku.instance_type
    if not sku.on_managed_endpoint_list and not allow_unlisted:
        return SkuNotAvailableError(
            f"{named} is not on Azure ML's managed online endpoint SKU list (as of {CATALOG_AS_OF}), so "
            f"a deployment on it is refused{offer}.",
            sku=match.requested,
            reason="not_listed",
            alternatives=_priced(alike),
        )
    capability = sku.compute_capability
    return SkuNotAvailableError(
        f"{named} has {sku.gpu_model} GPUs (compute capability {capability}, sm_{capability.replace('.', '')}); CUDA "
        f"{cuda_major} no longer compiles for them and the serving image's torch is a CUDA {cuda_major} build, so it is "
        f"refused: serve it with a CUDA 12 torch (PyTorch's CUDA 12.6 wheels still include sm_70){offer}.",
        sku=match.requested,
        reason="cuda",
        compute_capability=capability,
        cuda_major=cuda_major,
        alternatives=_priced(alike),
    )


def _listed() -> list[Sku]:
    return [sku for sku in catalog() if sku.on_managed_endpoint_list]


def _priced(skus: Union[list[Sku], tuple[Sku, ...]]) -> list[dict[str, object]]:
    return [{"instance_type": sku.instance_type, "usd_per_hour": sku.usd_per_hour} for sku in skus]
