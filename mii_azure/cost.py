"""Cost estimates: which Azure GPU SKU serves a model for a workload most cheaply within a latency target.

``estimate_cost(model, Workload(...))`` plans the model on each SKU (the planner decides dtype,
tensor parallelism, int8 and offload and says whether it fits), estimates its speed with the model
of :mod:`mii_azure.performance` and the efficiency factors of :mod:`mii_azure.calibration`, finds
the largest batch that meets the latency target, the instances the request rate needs, and prices
them with :mod:`mii_azure.pricing`. Pure: no torch, no network; models are read from their
configuration only (a folder, a well-known hub id, a config dict, or a :class:`ModelShape`).

Every speed and cost is an estimate; the report says how each SKU's efficiency was calibrated.
Serving is modelled as mii_azure deploys it: ``plan.replicas`` model copies per instance (VM), each on
its own ``tensor_parallel`` GPUs, so an instance serves ``replicas`` times one copy's throughput
(on CPU the copies split the cores and the memory bandwidth); static batches (a batch's prompts are
processed together, then its tokens are generated step by step).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from pydantic import ValidationError

from .calibration import efficiency_for
from .cost_report import CostReport, SkuEstimate, StepBreakdown
from .errors import ConfigError
from .hardware import Hardware
from .models import ModelFacts, ModelRef, ModelSource, config_facts, resolve_model, resolve_task
from .performance import (
    BYTES_PER_PARAMETER,
    NVME_READ_GB_S,
    Efficiency,
    Machine,
    ServedModel,
    Timing,
    decode_step,
    prefill,
    unet_step,
)
from .planner import GENERATION_TASKS, OptimizationPlan, PlanOverrides, make_plan
from .pricing import PriceQuote, Pricing, PriceSheet
from .sku_choice import choose_sku
from .skus import Sku, by_price, catalog, resolve_sku_name
from .workload import ModelShape, Workload

__all__ = ["Workload", "ModelShape", "estimate_cost"]  # Workload and ModelShape live in .workload

#: Planner conflicts that depend on the SKU (another SKU may work); any other ConfigError is the model's or the workload's.
_MISFIT_CONFLICTS = frozenset({"memory", "max_batch_size", "zero_offload", "replicas"})
_UNSUPPORTED_CONFLICTS = frozenset({"tensor_parallel", "dtype", "cuda_graph", "kernel_inject", "quantization", "hardware"})
_TOKEN_OVERRIDES = ("max_input_tokens", "max_new_tokens")
#: Published per-component size of the Stable Diffusion v1.5 UNet, for pipelines known by name only.
_SD15_UNET_PARAMETERS = 859_520_964
_LATENT_FACTOR = 8  # the VAE of latent diffusion pipelines downsamples by 8 per side


ModelInput = Union[str, "os.PathLike[str]", ModelFacts, ModelShape, dict]


def estimate_cost(
    model: ModelInput,
    workload: Optional[Workload] = None,
    *,
    skus: Union[None, str, Sequence[str]] = None,
    hardware: Sequence[Hardware] = (),
    task: Optional[str] = None,
    region: Optional[str] = None,
    prices: Union[None, str, "os.PathLike[str]", PriceSheet, dict[str, float], list[dict[str, Any]]] = None,
    discount: float = 0.0,
    discount_label: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    config: Union[None, str, "os.PathLike[str]"] = None,
    calibration: Optional[dict[str, Any]] = None,
) -> CostReport:
    """Compare Azure GPU SKUs (and any ``hardware`` given) for serving ``model`` under ``workload``.

    ``model``: a model reference (local folder, cached or well-known hub id such as
    ``"bigscience/bloom"``), resolved facts, a :class:`ModelShape`, or a dict (a ``config.json``'s
    content, or ModelShape's fields). ``skus``: names, aliases or unique prefixes from the catalog,
    resolved as ``plan`` resolves them (an alias of several sizes stands for the cheapest on which
    the model fits, which the estimate's first note names); default: every SKU on the managed online
    endpoint list (unless only ``hardware`` is given).
    ``region``/``prices``/``discount``: see :class:`mii_azure.pricing.Pricing`. ``overrides``: plan
    choices (:class:`~mii_azure.planner.PlanOverrides` fields) applied on every SKU; the token
    limits come from the workload. ``calibration``: a calibration record to use instead of the
    shipped one.
    """
    workload = workload or Workload()
    facts = _facts(model, config)
    task_name = resolve_task(facts, task)
    pricing = Pricing.make(region=region, prices=prices, discount=discount, discount_label=discount_label)
    plan_overrides = _overrides(facts, task_name, workload, overrides or {})
    unit = "image" if facts.is_diffusion else "token" if task_name in GENERATION_TASKS else "request"
    estimates = []
    for target, price, chosen in _targets(skus, hardware, pricing, facts, task_name, plan_overrides):
        estimate = _estimate(facts, task_name, unit, workload, target, price, plan_overrides, calibration)
        estimates.append(estimate.model_copy(update={"notes": (chosen, *estimate.notes)}) if chosen else estimate)
    return CostReport(
        model=facts.ref.reference,
        task=task_name,
        unit=unit,
        workload=workload,
        workload_text=workload.describe(unit),
        prices=pricing.describe(),
        estimates=tuple(estimates),
        parameter_count=facts.parameter_count,
    )


# --- inputs ---------------------------------------------------------------------------------
def _facts(model: ModelInput, config: Union[None, str, "os.PathLike[str]"]) -> ModelFacts:
    if isinstance(model, ModelFacts):
        return model
    if isinstance(model, ModelShape):
        return model.facts()
    if isinstance(model, dict):
        if "parameters" in model:
            try:
                return ModelShape(**model).facts()
            except ValidationError as exc:
                raise ConfigError(
                    f"The model shape {model!r} is incomplete or invalid ({exc.error_count()} problems: "
                    f"{'; '.join(str(error['loc'][0]) + ': ' + error['msg'] for error in exc.errors())}). Give parameters, "
                    "layers, hidden_size, heads and vocab_size (see mii_azure.ModelShape).",
                    model=model,
                ) from None
        if not (model.get("architectures") or model.get("model_type")):
            raise ConfigError(
                "A model dict must be a config.json's content (with 'architectures' or 'model_type') or a model "
                "shape (parameters, layers, hidden_size, heads, vocab_size).",
                model=model,
            )
        name = str(model.get("_name_or_path") or model.get("model_type") or "custom-model")
        ref = ModelRef(reference=name, source=ModelSource.HUB, name=name)
        return config_facts(ref, model, config_source="configuration dict given to estimate_cost")
    return resolve_model(model, config=config)


def _overrides(facts: ModelFacts, task: str, workload: Workload, given: dict[str, Any]) -> PlanOverrides:
    clashing = [name for name in _TOKEN_OVERRIDES if name in given]
    if clashing:
        raise ConfigError(
            f"{', '.join(clashing)} come from the workload in a cost estimate; set Workload(prompt_tokens=..., "
            "new_tokens=...) instead.",
            conflict=clashing[0],
        )
    tokens: dict[str, int] = {}
    if not facts.is_diffusion:
        tokens["max_input_tokens"] = workload.prompt_tokens
        if task in GENERATION_TASKS:
            tokens["max_new_tokens"] = workload.new_tokens
    try:
        return PlanOverrides(**given, **tokens)
    except ValidationError as exc:
        raise ConfigError(f"Invalid plan override: {exc}", overrides=given) from None


def _targets(
    skus: Union[None, str, Sequence[str]],
    hardware: Sequence[Hardware],
    pricing: Pricing,
    facts: ModelFacts,
    task: str,
    overrides: PlanOverrides,
) -> list[tuple[Hardware, Union[PriceQuote, str], Optional[str]]]:
    """What to compare: each named SKU (an alias resolved for this model, with a note saying which
    size it stands for) and each given machine, with its price."""
    names: list[str]
    if isinstance(skus, str):
        names = [name for name in skus.replace(",", " ").split() if name]
    elif skus is None:
        names = [] if hardware else [sku.instance_type for sku in catalog() if sku.on_managed_endpoint_list]
    else:
        names = list(skus)
    targets: list[tuple[Hardware, Union[PriceQuote, str], Optional[str]]] = []
    seen: set[str] = set()
    for name in names:
        sku, chosen = _sku_for(facts, name, task, overrides)
        if sku.instance_type in seen:
            continue
        seen.add(sku.instance_type)
        targets.append((sku.hardware, pricing.quote(sku.instance_type, sku.usd_per_hour), chosen))
    for item in hardware:
        given = f"price given with the {item.name} hardware" if item.usd_per_hour is not None else ""
        targets.append((item, pricing.quote(item.name, item.usd_per_hour, given_source=given), None))
    if not targets:
        raise ConfigError("No SKU to compare: pass skus=[...] (catalog names or aliases) or hardware=[...].")
    return targets


def _sku_for(facts: ModelFacts, name: str, task: str, overrides: PlanOverrides) -> tuple[Sku, Optional[str]]:
    """The size ``name`` stands for in a comparison, and (for an alias of several) a note why this one.

    Unknown or retired names raise, as in ``plan``. Sizes a deployment cannot use are still costed (the
    estimate is a what-if); when the model plans on none of an alias's sizes, the cheapest stands in and
    its estimate says why it does not fit.
    """
    match = resolve_sku_name(name)  # SkuNotAvailableError naming the catalog's SKUs for an unknown name
    if len(match.skus) == 1:
        return match.skus[0], None
    try:
        choice = choose_sku(facts, name, task=task, overrides=overrides, allow_unlisted=True, cuda_major=None)
    except ConfigError:  # no size of the alias plans: its cheapest's estimate says why
        cheapest = min(match.skus, key=by_price)
        return cheapest, f"{name!r} matches {len(match.skus)} sizes and the model plans on none; the cheapest stands in"
    return choice.sku, choice.reason.rstrip(".")


# --- one SKU --------------------------------------------------------------------------------
def _estimate(
    facts: ModelFacts,
    task: str,
    unit: str,
    workload: Workload,
    hardware: Hardware,
    price: Union[PriceQuote, str],
    overrides: PlanOverrides,
    calibration: Optional[dict[str, Any]],
) -> SkuEstimate:
    base = dict(
        instance_type=hardware.name,
        hardware=hardware.describe(),
        gpus=hardware.gpus,
        unit=unit,
        price=price if isinstance(price, PriceQuote) else None,
        price_source=price.source if isinstance(price, PriceQuote) else price,
    )
    try:
        plan = make_plan(facts, hardware, task=task, overrides=overrides)
    except ConfigError as exc:
        conflict = exc.facts.get("conflict")
        if conflict in _MISFIT_CONFLICTS:
            return SkuEstimate(**base, status="does_not_fit", reason=exc.message)
        if conflict in _UNSUPPORTED_CONFLICTS:
            return SkuEstimate(**base, status="unsupported", reason=exc.message)
        raise
    weight_format = "int8" if plan.quantization == "int8" else plan.dtype
    efficiency = efficiency_for(hardware, weight_format, calibration)
    try:
        machine = Machine.of(hardware, plan.dtype)
    except ConfigError as exc:
        return SkuEstimate(**base, plan=plan, status="unsupported", reason=exc.message)
    notes = list(machine.notes)
    if hardware.kind == "cpu" and plan.replicas > 1:
        # The copies run side by side on the same cores and memory: each gets its share of both.
        machine = machine.model_copy(
            update={"bandwidth": machine.bandwidth / plan.replicas, "peak_flops": machine.peak_flops / plan.replicas}
        )
        notes.append(f"{plan.replicas} copies share the CPU: each is costed at 1/{plan.replicas} of its bandwidth and FLOPs")
    if facts.is_diffusion:
        efficiency = efficiency.model_copy(update={"calibrated": False})
        speed = _diffusion_speed(facts, plan, workload, machine, efficiency, notes)
    else:
        speed = _text_speed(facts, plan, unit, workload, machine, efficiency)
    if plan.zero_offload == "nvme":
        notes.append(f"weights stream from local NVMe at an assumed {NVME_READ_GB_S:g} GB/s")
    if plan.replicas > 1 or hardware.gpus > 1:
        notes.append(_copies_note(plan, hardware))
    return _priced(base, plan, unit, workload, speed, efficiency, notes)


def _copies_note(plan: OptimizationPlan, hardware: Hardware) -> str:
    """How many model copies an instance is assumed to serve, on what, and which GPUs stay idle (why)."""
    copies = plan.replicas
    if hardware.kind == "cpu":
        return f"{copies} model cop{'ies' if copies > 1 else 'y'} per instance on {hardware.cpu_cores} cores" + (
            f": throughput per instance = {copies} x one copy's" if copies > 1 else ""
        )
    each = f"{plan.tensor_parallel} GPU{'s' if plan.tensor_parallel > 1 else ''}"
    note = f"{copies} model cop{'ies' if copies > 1 else 'y'} per instance, {each} each"
    if copies > 1:
        note += f": throughput per instance = {copies} x one copy's"
    idle = hardware.gpus - copies * plan.tensor_parallel
    if idle:
        if plan.zero_offload:
            why = "ZeRO-Inference offload streams the weights from the host memory or NVMe the VM shares"
        elif "replicas" in plan.overrides:
            why = "replicas set by the caller"
        else:
            why = "host memory cannot stage the weights of more copies while they load"
        note += f"; {idle} of its {hardware.gpus} GPUs stay idle ({why})"
    return note


@dataclass(frozen=True)
class _Speed:
    """Latency (the figure the target applies to) and request time of each batch size."""

    latency: Callable[[int], Timing]
    request_s: Callable[[int], float]
    first_token: Optional[Callable[[int], Timing]] = None


def _text_speed(
    facts: ModelFacts, plan: OptimizationPlan, unit: str, workload: Workload, machine: Machine, efficiency: Efficiency
) -> _Speed:
    served = ServedModel.of(facts, plan)
    prompt, new = workload.prompt_tokens, workload.new_tokens

    def first(batch: int) -> Timing:
        return prefill(served, machine, efficiency, batch=batch, prompt_tokens=prompt)

    if unit == "request":
        return _Speed(latency=first, request_s=lambda batch: first(batch).total_s)
    context = prompt + new / 2  # the average context over the request's decode steps

    def step(batch: int) -> Timing:
        return decode_step(served, machine, efficiency, batch=batch, context=context)

    return _Speed(
        latency=step,
        request_s=lambda batch: first(batch).total_s + (new - 1) * step(batch).total_s,
        first_token=first,
    )


def _diffusion_speed(
    facts: ModelFacts, plan: OptimizationPlan, workload: Workload, machine: Machine, efficiency: Efficiency, notes: list[str]
) -> _Speed:
    unet = _unet_parameters(facts, notes)
    size = workload.image_size or (facts.max_positions or 64) * _LATENT_FACTOR
    latent_tokens = max(1, size // _LATENT_FACTOR) ** 2
    weight_bytes = unet * BYTES_PER_PARAMETER[plan.dtype]
    notes.append(
        f"per image: {workload.steps} steps x UNet over {latent_tokens} latent positions x 2 (classifier-free guidance); "
        "text encoder and VAE decode not counted; the efficiencies are those of transformer decoding (uncalibrated for a UNet)"
    )

    def image(batch: int) -> Timing:
        step = unet_step(unet, weight_bytes, machine, efficiency, batch=batch, latent_tokens=latent_tokens)
        return step.scaled(workload.steps)

    return _Speed(latency=image, request_s=lambda batch: image(batch).total_s)


def _unet_parameters(facts: ModelFacts, notes: list[str]) -> float:
    if facts.path and (Path(facts.path) / "unet").is_dir():
        from .models import _count_safetensors  # the same header reader that counted the pipeline

        count, _, _ = _count_safetensors(Path(facts.path) / "unet")
        if count:
            return float(count)
    if "unet" in facts.components and facts.config_source.startswith("catalog"):
        return float(_SD15_UNET_PARAMETERS)
    notes.append("the UNet's own size is unknown: the whole pipeline's parameters are costed (an over-estimate)")
    return float(facts.parameter_count or 0)


def _priced(
    base: dict[str, Any],
    plan: OptimizationPlan,
    unit: str,
    workload: Workload,
    speed: _Speed,
    efficiency: Efficiency,
    notes: list[str],
) -> SkuEstimate:
    slo_s = workload.latency_slo_ms / 1e3 if workload.latency_slo_ms else None
    largest = plan.max_batch_size
    meeting = [batch for batch in range(1, largest + 1) if slo_s is None or speed.latency(batch).total_s <= slo_s]
    batch = max(meeting) if meeting else 1
    step = speed.latency(batch)
    request_s = speed.request_s(batch)
    capacity = plan.replicas * batch / request_s  # requests (images) per second of one instance: every copy
    instances = max(1, math.ceil(workload.requests_per_second / capacity - 1e-9))
    if meeting:
        status = "ok"
        reason = (
            f"meets {workload.latency_slo_ms:g} ms per {unit} up to batch {batch}" if slo_s else f"no latency target: batch {batch}"
        )
    else:
        status = "misses_slo"
        reason = f"{step.total_s * 1e3:.1f} ms per {unit} even at batch 1, over the {workload.latency_slo_ms:g} ms target"
    price = base["price"]
    if price is None:
        status = "unpriced" if status == "ok" else status
        reason = f"{reason}; {base['price_source']}"
    tokens_capacity = capacity * workload.new_tokens if unit == "token" else None
    figures: dict[str, Any] = {}
    if price is not None:
        per_hour = instances * price.usd_per_hour
        requests_per_hour = workload.requests_per_second * 3600
        figures = dict(
            usd_per_hour=per_hour,
            usd_per_thousand_requests=per_hour / requests_per_hour * 1e3,
            usd_per_million_tokens=per_hour / (requests_per_hour * workload.new_tokens) * 1e6 if unit == "token" else None,
            usd_per_million_tokens_at_capacity=price.usd_per_hour / (tokens_capacity * 3600) * 1e6 if tokens_capacity else None,
        )
    first = speed.first_token(batch) if speed.first_token else None
    return SkuEstimate(
        **base,
        plan=plan,
        status=status,
        reason=reason,
        batch=batch,
        max_batch_size=largest,
        latency_ms=step.total_s * 1e3,
        ttft_ms=first.total_s * 1e3 if first else None,
        request_ms=request_s * 1e3,
        breakdown=StepBreakdown.of(step),
        requests_per_s_per_instance=capacity,
        tokens_per_s_per_instance=tokens_capacity,
        instances=instances,
        calibrated=efficiency.calibrated,
        efficiency_basis=efficiency.basis,
        efficiency_bandwidth=efficiency.bandwidth,
        efficiency_flops=efficiency.flops,
        notes=tuple(notes),
        **figures,
    )
