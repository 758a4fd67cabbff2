"""What a deployment bills while it runs: the $/h shown before anything is created, the
``max_usd_per_hour`` guard, and the size, count, traffic, $/h and age of running deployments.

Prices are the catalog's (Linux pay-as-you-go, eastus, indicative; ``mii_azure.skus.CATALOG_AS_OF``);
an instance type the catalog does not price (CPU sizes, unlisted GPUs) has no figure, and says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Optional

from ...errors import ConfigError
from ...skus import CATALOG_AS_OF, Sku, get_sku

__all__ = ["HourlyCost", "hourly_cost", "check_spend", "describe_billing", "deployment_details"]


@dataclass(frozen=True)
class HourlyCost:
    """``instances`` x ``price_per_instance`` dollars an hour, or None where no price is known."""

    instance_type: str
    instances: int
    price_per_instance: Optional[float]

    @property
    def usd_per_hour(self) -> Optional[float]:
        """Dollars an hour for every instance, or None."""
        return None if self.price_per_instance is None else self.instances * self.price_per_instance


def hourly_cost(sku: Optional[Sku], instances: int, instance_type: str) -> HourlyCost:
    """What ``instances`` of ``instance_type`` bill an hour (the catalog's price)."""
    if sku is None:
        try:
            sku = get_sku(instance_type)
        except ConfigError:
            sku = None
    return HourlyCost(instance_type, instances, sku.usd_per_hour if sku is not None else None)


def describe_billing(cost: HourlyCost) -> str:
    """The line shown before a deployment starts billing."""
    if cost.usd_per_hour is None:
        return f"Starts billing {cost.instances} x {cost.instance_type} (no catalog price for this size)."
    return (
        f"Starts billing about ${cost.usd_per_hour:,.2f}/h: {cost.instances} x {cost.instance_type} at "
        f"${cost.price_per_instance:,.2f}/h (catalog price, eastus, as of {CATALOG_AS_OF}) until deleted."
    )


def check_spend(cost: HourlyCost, max_usd_per_hour: Optional[float]) -> None:
    """ConfigError, before anything is created, when ``cost`` exceeds ``max_usd_per_hour`` or is unknown."""
    if max_usd_per_hour is None:
        return
    if cost.usd_per_hour is None:
        raise ConfigError(
            f"max_usd_per_hour={max_usd_per_hour:g} cannot be checked: the catalog has no price for "
            f"{cost.instance_type}. Pick a priced size or drop max_usd_per_hour.",
            conflict="max_usd_per_hour",
        )
    if cost.usd_per_hour > max_usd_per_hour:
        most = int(max_usd_per_hour // cost.price_per_instance) if cost.price_per_instance else 0
        raise ConfigError(
            f"{cost.instances} x {cost.instance_type} would bill ${cost.usd_per_hour:,.2f}/h, over "
            f"max_usd_per_hour={max_usd_per_hour:g}. "
            + (f"At most {most} instance(s) of this size fit that budget; " if most else "Not one instance of this size fits; ")
            + "or pick a cheaper size.",
            conflict="max_usd_per_hour",
            usd_per_hour=cost.usd_per_hour,
            nearest=most,
        )


def deployment_details(endpoint: Any, deployment: Any) -> dict[str, Any]:
    """Size, count, traffic, mirrored share, $/h and age of a running deployment (azure-ai-ml entities)."""
    scale = getattr(deployment, "instance_count", None) or 1
    cost = hourly_cost(None, int(scale), str(getattr(deployment, "instance_type", "") or "?"))
    created = _created_at(deployment)
    return {
        "instance_type": cost.instance_type,
        "instance_count": cost.instances,
        "traffic": int((getattr(endpoint, "traffic", None) or {}).get(deployment.name, 0) or 0),
        "mirror_traffic": int((getattr(endpoint, "mirror_traffic", None) or {}).get(deployment.name, 0) or 0),
        "usd_per_hour": cost.usd_per_hour,
        "created_at": created.isoformat() if created else None,
        "age_s": (dt.datetime.now(dt.timezone.utc) - created).total_seconds() if created else None,
        "provisioning_state": getattr(deployment, "provisioning_state", None),
    }


def _created_at(entity: Any) -> Optional[dt.datetime]:
    context = getattr(entity, "creation_context", None)
    value = getattr(context, "created_at", None) if context is not None else None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return None
