"""Checks against the workspace before anything is created: the region offers the VM size, and the
VM family's vCPU quota covers the deployment (Azure ML reserves 20% extra for upgrades)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from ...errors import QuotaExceededError
from ...sku_choice import required_vcpus
from ...skus import Sku, by_price, catalog, labels, quota_family_key
from .boundary import azure_errors

__all__ = ["Capacity", "check_capacity", "check_hub_access"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capacity:
    """What the preflight found: the region, the family's quota and what the deployment needs of it."""

    location: str
    instance_type: str
    family: Optional[str]
    needed_vcpus: int
    used_vcpus: Optional[int]
    limit_vcpus: Optional[int]

    def describe(self) -> str:
        """One line for the progress display."""
        if self.limit_vcpus is None:
            return f"{self.instance_type} is offered in {self.location} (no quota figure for its family)"
        return (
            f"{self.instance_type} in {self.location}: needs {self.needed_vcpus} vCPUs of {self.family}, "
            f"{self.limit_vcpus - (self.used_vcpus or 0)} of {self.limit_vcpus} free"
        )


def check_capacity(ml_client: Any, location: str, instance_type: str, instance_count: int, *, sku: Optional[Sku] = None) -> Capacity:
    """QuotaExceededError unless ``location`` offers ``instance_type`` and its family's quota has room for
    ``instance_count`` instances (``ceil(1.2 x count) x vCPUs`` unless the size is exempt)."""
    with azure_errors("list the VM sizes of the region", location=location):
        sizes = {size.name.lower(): size for size in ml_client.compute.list_sizes(location=location)}
    size = sizes.get(instance_type.lower())
    if size is None:
        offered = _offered_alternatives(sizes)
        raise QuotaExceededError(
            f"The workspace's region {location} does not offer {instance_type}. "
            + (f"GPU sizes it offers: {offered}. " if offered else "")
            + "Pick one of those (sku=...), or use a workspace in another region.",
            reason="region",
            location=location,
            instance_type=instance_type,
            offered=sorted(sizes),
        )
    vcpus = int(_field(size, "v_cp_us", "vCPUs") or (sku.vcpus if sku else 0))
    needed = required_vcpus(sku, instance_count) if sku is not None else vcpus * instance_count
    family = (sku.quota_family if sku is not None else None) or getattr(size, "family", None)
    with azure_errors("read the workspace's quota", location=location):
        usages = list(ml_client.compute.list_usage(location=location))
    usage = _usage_for(usages, family)
    if usage is None:
        logger.info("No quota entry for %s in %s; Azure checks it when the deployment is created.", family, location)
        return Capacity(location, instance_type, family, needed, None, None)
    used, limit = int(_field(usage, "current_value", "currentValue") or 0), int(_field(usage, "limit", "limit") or 0)
    if used + needed > limit:
        raise QuotaExceededError(
            f"{instance_count} x {instance_type} needs {needed} vCPUs of the {family} quota in {location} "
            f"(Azure ML reserves 20% extra for upgrades), but only {max(0, limit - used)} of {limit} are free "
            f"({used} in use). Request more quota for {family} in the Azure portal (Quotas), lower "
            "instance_count, or pick another size.",
            reason="quota",
            family=family,
            needed=needed,
            used=used,
            limit=limit,
            location=location,
        )
    return Capacity(location, instance_type, family, needed, used, limit)


def _usage_for(usages: list[Any], family: Optional[str]) -> Any:
    if not family:
        return None
    wanted = quota_family_key(family)
    for usage in usages:
        name = _usage_name(getattr(usage, "name", None))
        if quota_family_key(name) == wanted:
            return usage
    return None


def _field(entity: Any, name: str, wire_name: str) -> Any:
    """An attribute of a compute entity: azure-ai-ml 1.35's ``VmSize`` and ``Usage`` keep the REST JSON's
    wire names (``vCPUs``, ``currentValue``) and leave the Python-named attribute None."""
    value = getattr(entity, name, None)
    return value if value is not None else vars(entity).get(wire_name)


def _usage_name(name: Any) -> str:
    """A usage's family name: azure-ai-ml 1.35 leaves ``name`` a plain dict (``Usage._from_rest_object``
    copies the REST object's ``as_dict()``), other versions a ``UsageName``."""
    if isinstance(name, dict):
        return str(name.get("value") or "")
    return str(getattr(name, "value", None) or "")


def _offered_alternatives(sizes: dict[str, Any]) -> str:
    known = sorted((sku for sku in catalog() if sku.instance_type.lower() in sizes and sku.on_managed_endpoint_list), key=by_price)
    return labels(known[:6])


def check_hub_access(allowed: Optional[list[str]], repo_id: str) -> None:
    """ConfigError when the workspace's deployments cannot reach the Hugging Face hub to fetch ``repo_id``
    (``allowed``: None for internet access, else the approved outbound destinations)."""
    if allowed is None or any("huggingface.co" in destination for destination in allowed):
        return
    from ...errors import ConfigError

    raise ConfigError(
        f"The workspace allows only approved outbound traffic and no rule approves huggingface.co, so the "
        f"deployment could not fetch {repo_id!r} at start-up. Register the model in the workspace (download it, then "
        "ml_client.models.create_or_update(Model(path=..., name=...))) and deploy 'azureml:<name>:<version>', "
        "or deploy the local folder, which mii_azure uploads.",
        conflict="model",
        model=repo_id,
    )
