"""``sku="auto"``: the cheapest VM size (and instance count) that meets a workload, from
``estimate_cost``, among the sizes the workspace's region offers, chosen before anything is created."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ...errors import ConfigError
from ...skus import catalog
from .boundary import azure_errors

__all__ = ["AutoChoice", "choose_for_workload"]


@dataclass(frozen=True)
class AutoChoice:
    """The size and instance count chosen for a workload, and the lines that explain the choice."""

    instance_type: str
    instances: int
    usd_per_hour: Optional[float]
    lines: tuple[str, ...]


def choose_for_workload(
    facts: Any,
    workload: Any,
    *,
    ml_client: Any = None,
    location: Optional[str] = None,
    task: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    prices: Any = None,
) -> AutoChoice:
    """The cheapest size meeting ``workload`` that the region offers (all listed sizes without a workspace).

    Prices: ``prices`` (a price sheet, or ``{instance_type: $/h}``) for the workspace's region when it
    covers it, else the catalog's (eastus, as of its date), which the explanation says.
    """
    from ...cost import estimate_cost
    from ...pricing import Pricing

    if workload is None:
        raise ConfigError(
            'sku="auto" needs workload=mii_azure.Workload(prompt_tokens=..., new_tokens=..., requests_per_second=..., '
            "latency_slo_ms=...) to size the deployment; or name a size (sku='NC24ads').",
            conflict="workload",
        )
    listed = [sku.instance_type for sku in catalog() if sku.on_managed_endpoint_list]
    if ml_client is not None and location:
        with azure_errors("list the VM sizes of the region", location=location):
            offered = {size.name.lower() for size in ml_client.compute.list_sizes(location=location)}
        names = [name for name in listed if name.lower() in offered]
        where = f"offered in {location}"
    else:
        names, where = listed, "on the managed online endpoint list (no workspace: region not checked)"
    if not names:
        raise ConfigError(f"No GPU size of the catalog is {where}; use a workspace in another region.", conflict="sku")
    region = None
    if location and prices is not None:
        try:
            Pricing.make(region=location, prices=prices)
            region = location
        except ConfigError:
            region = None
    report = estimate_cost(facts, workload, skus=names, task=task, region=region, prices=prices, overrides=overrides or {})
    best = report.best
    if best is None or best.instances is None:
        closest = sorted((e for e in report.estimates if e.latency_ms is not None), key=lambda e: e.latency_ms or 0)[:3]
        raise ConfigError(
            f"No size {where} meets {report.workload_text}. Closest: "
            + ("; ".join(f"{e.instance_type} ({e.latency_ms:.1f} ms, {e.reason})" for e in closest) or "none fits the model")
            + ". Relax the latency target, or name a size.",
            conflict="workload",
        )
    runners = [estimate for estimate in report.meeting if estimate.instance_type != best.instance_type][:2]
    lines = [
        f'sku="auto": {best.instances} x {best.instance_type} (${_price(best)}/h, {best.latency_ms:.1f} ms per {report.unit}) '
        f"is the cheapest of the sizes {where} that meets {report.workload_text}; prices: {report.prices}.",
        *(
            f"  runner-up: {e.instances} x {e.instance_type} (${_price(e)}/h, {e.latency_ms:.1f} ms per {report.unit})"
            for e in runners
        ),
    ]
    return AutoChoice(best.instance_type, int(best.instances), best.usd_per_hour, tuple(lines))


def _price(estimate: Any) -> str:
    return "?" if estimate.usd_per_hour is None else f"{estimate.usd_per_hour:,.2f}"
