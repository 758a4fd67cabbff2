"""Autoscale for Azure ML deployments: what the user asks for (:class:`Autoscale`) and the resolved
setting (:class:`AutoscalePlan`) that the Azure target writes as an Azure Monitor autoscale setting.

Pure: no azure import. The metric names are Azure Monitor's "Name in REST API" for the resource types
``Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments`` (CPU and GPU utilization, in
percent, per instance, sampled every minute) and ``.../onlineEndpoints`` (``RequestLatency``, in ms),
as listed on Azure Monitor's "supported metrics" pages and used by Azure ML's "autoscale online
endpoints" how-to.

Defaults come from the deployment being made: the instance count (chosen by ``sku="auto"`` from the cost
estimate, or given) is the default and minimum capacity, twice it the maximum; GPU sizes scale on GPU
utilization; the cooldown is at least the expected load time of one instance (so a second scale-out does
not fire before the first new instance serves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, model_validator

from .errors import ConfigError

__all__ = ["Autoscale", "AutoscalePlan", "METRICS", "MetricInfo", "autoscale_setting_name"]

#: Azure Monitor limits (azure-mgmt-monitor's MetricTrigger / ScaleAction): the time window is 5 minutes
#: to 12 hours, the cooldown 1 minute to 1 week.
MIN_WINDOW_MINUTES, MAX_WINDOW_MINUTES = 5, 12 * 60
MIN_COOLDOWN_MINUTES, MAX_COOLDOWN_MINUTES = 1, 7 * 24 * 60
DEFAULT_COOLDOWN_MINUTES = 5


@dataclass(frozen=True)
class MetricInfo:
    """One metric autoscale can watch: its REST name, which resource emits it, its unit and default thresholds."""

    name: str
    on: str  # "deployment" or "endpoint"
    unit: str
    scale_out_above: Optional[float]
    scale_in_below: Optional[float]


#: Short names (and the REST names themselves, any case) accepted by ``Autoscale(metric=...)``.
METRICS: dict[str, MetricInfo] = {
    "cpu": MetricInfo("CpuUtilizationPercentage", "deployment", "%", 70.0, 30.0),
    "gpu": MetricInfo("GpuUtilizationPercentage", "deployment", "%", 70.0, 30.0),
    "gpu_memory": MetricInfo("GpuMemoryUtilizationPercentage", "deployment", "%", 80.0, 40.0),
    "memory": MetricInfo("CpuMemoryUtilizationPercentage", "deployment", "%", 80.0, 40.0),
    # The endpoint's latency: all of its deployments together; no default threshold (it depends on the model).
    "latency": MetricInfo("RequestLatency", "endpoint", "ms", None, None),
}


def _metric(name: str) -> Optional[MetricInfo]:
    key = name.strip().lower()
    if key in METRICS:
        return METRICS[key]
    return next((info for info in METRICS.values() if info.name.lower() == key), None)


def autoscale_setting_name(endpoint: str, deployment: str) -> str:
    """The name mii_azure gives the autoscale setting of ``endpoint``/``deployment``."""
    return f"mii-autoscale-{endpoint}-{deployment}"


class Autoscale(BaseModel):
    """An Azure Monitor autoscale setting for an Azure ML deployment.

    ``Autoscale(min=1, max=4)`` scales between 1 and 4 instances: out by ``step`` when the metric's average
    over ``minutes`` is above ``scale_out_above``, in by ``step`` when below ``scale_in_below``, at most once
    per ``cooldown_minutes``. ``metric``: ``"auto"`` (GPU utilization on GPU sizes, else CPU), ``"cpu"``,
    ``"gpu"``, ``"gpu_memory"``, ``"memory"``, ``"latency"`` (the endpoint's request latency in ms; needs
    ``scale_out_above``), or an Azure Monitor metric name of those. Unset values come from the deployment
    (see the module docstring).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: Optional[int] = None
    max: Optional[int] = None
    metric: str = "auto"
    scale_out_above: Optional[float] = None
    scale_in_below: Optional[float] = None
    minutes: int = 5
    cooldown_minutes: Optional[int] = None
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> "Autoscale":
        # ConfigError (not ValueError) so that pydantic lets it through as the SDK's own error.
        for field in ("min", "max"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ConfigError(
                    f"Autoscale({field}={value}): a managed online deployment keeps at least 1 instance; use {field}=1 or more.",
                    conflict=f"autoscale.{field}",
                    nearest=1,
                )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(
                f"Autoscale(min={self.min}, max={self.max}): min is above max. Swap them (min={self.max}, max={self.min}).",
                conflict="autoscale.min",
            )
        info = _metric(self.metric) if self.metric.lower() != "auto" else METRICS["cpu"]
        if info is None:
            known = ", ".join([*METRICS, *(m.name for m in METRICS.values())])
            raise ConfigError(f"Autoscale(metric={self.metric!r}) is not a metric mii_azure scales on; use 'auto' or one of: {known}.", conflict="autoscale.metric")
        for field in ("scale_out_above", "scale_in_below"):
            value = getattr(self, field)
            if value is not None and (value < 0 or (info.unit == "%" and value > 100)):
                bound = "0 to 100 (percent)" if info.unit == "%" else "0 or more (ms)"
                raise ConfigError(f"Autoscale({field}={value:g}): {info.name} thresholds are {bound}.", conflict=f"autoscale.{field}")
        if self.scale_out_above is not None and self.scale_in_below is not None and self.scale_in_below >= self.scale_out_above:
            raise ConfigError(
                f"Autoscale(scale_in_below={self.scale_in_below:g}, scale_out_above={self.scale_out_above:g}): the scale-in "
                "threshold must be below the scale-out one, or the two rules fight (keep a gap, e.g. 30 and 70).",
                conflict="autoscale.scale_in_below",
            )
        if not MIN_WINDOW_MINUTES <= self.minutes <= MAX_WINDOW_MINUTES:
            raise ConfigError(
                f"Autoscale(minutes={self.minutes}): Azure Monitor averages a metric over {MIN_WINDOW_MINUTES} minutes to 12 hours.",
                conflict="autoscale.minutes",
                nearest=max(MIN_WINDOW_MINUTES, min(MAX_WINDOW_MINUTES, self.minutes)),
            )
        if self.cooldown_minutes is not None and not MIN_COOLDOWN_MINUTES <= self.cooldown_minutes <= MAX_COOLDOWN_MINUTES:
            raise ConfigError(
                f"Autoscale(cooldown_minutes={self.cooldown_minutes}): Azure Monitor's cooldown is 1 minute to 1 week.",
                conflict="autoscale.cooldown_minutes",
            )
        if self.step < 1:
            raise ConfigError(f"Autoscale(step={self.step}): each scale action adds or removes at least 1 instance.", conflict="autoscale.step", nearest=1)
        return self

    @classmethod
    def parse(cls, text: str) -> "Autoscale":
        """``"MIN:MAX"`` (the CLI's ``--autoscale``), e.g. ``"1:4"``."""
        parts = str(text).strip().split(":")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise ConfigError(
                f"{text!r} is not an instance range: give MIN:MAX, two whole numbers such as 1:4 (from 1 to 4 instances).",
                conflict="autoscale",
            )
        return cls(min=int(parts[0]), max=int(parts[1]))

    def resolve(self, *, instance_count: int, gpu: bool, expected_load_s: float = 0.0) -> "AutoscalePlan":
        """The setting for a deployment that starts with ``instance_count`` instances.

        ConfigError when ``instance_count`` is outside [min, max], or a latency rule has no threshold.
        """
        chosen = (_metric(self.metric) if self.metric.lower() != "auto" else None) or METRICS["gpu" if gpu else "cpu"]
        reasons = []
        minimum = self.min if self.min is not None else (min(instance_count, self.max) if self.max is not None else instance_count)
        maximum = self.max if self.max is not None else max(minimum, 2 * instance_count)
        if self.min is None or self.max is None:
            reasons.append(f"{minimum} to {maximum} instances: from the deployment's {instance_count} (minimum {instance_count}, maximum twice it)")
        if not minimum <= instance_count <= maximum:
            nearest = max(minimum, min(maximum, instance_count))
            raise ConfigError(
                f"instance_count={instance_count} is outside autoscale's {minimum} to {maximum} instances: the deployment "
                f"starts with instance_count instances and autoscale keeps it within min and max. Pass "
                f"instance_count={nearest} (--instance-count {nearest}), or widen Autoscale(min=..., max=...).",
                conflict="instance_count",
                nearest=nearest,
            )
        above = self.scale_out_above if self.scale_out_above is not None else chosen.scale_out_above
        if above is None:
            raise ConfigError(
                f"Autoscale(metric={self.metric!r}) scales on the endpoint's {chosen.name} ({chosen.unit}), which has "
                "no default threshold: pass scale_out_above= (for example the latency your clients accept per request, in ms).",
                conflict="autoscale.scale_out_above",
            )
        if self.scale_in_below is not None:
            below = self.scale_in_below
            if below >= above:
                raise ConfigError(
                    f"Autoscale(scale_in_below={below:g}) is not below the scale-out threshold {above:g} of {chosen.name}: "
                    "the two rules would fight. Pass a lower scale_in_below or a higher scale_out_above.",
                    conflict="autoscale.scale_in_below",
                )
        elif self.scale_out_above is None and chosen.scale_in_below is not None:
            below = chosen.scale_in_below
        else:  # the same proportion as the defaults (30 against 70), or half a latency threshold
            below = round(above * 3 / 7, 3) if chosen.unit == "%" else round(above / 2, 3)
        if self.cooldown_minutes is not None:
            cooldown = self.cooldown_minutes
        else:
            load_minutes = int(math.ceil(max(0.0, expected_load_s) / 60.0))
            cooldown = max(DEFAULT_COOLDOWN_MINUTES, min(MAX_COOLDOWN_MINUTES, load_minutes))
            if load_minutes > DEFAULT_COOLDOWN_MINUTES:
                reasons.append(f"cooldown {cooldown} min: a new instance is expected to load in about {load_minutes} min")
        if self.metric.lower() == "auto":
            reasons.append(f"{chosen.name}: the {'GPU' if gpu else 'CPU'} size's utilization")
        return AutoscalePlan(
            minimum=minimum,
            maximum=maximum,
            default=instance_count,
            metric=chosen.name,
            metric_on=chosen.on,
            unit=chosen.unit,
            scale_out_above=float(above),
            scale_in_below=float(below),
            minutes=self.minutes,
            cooldown_minutes=cooldown,
            step=self.step,
            reasons=tuple(reasons),
        )


@dataclass(frozen=True)
class AutoscalePlan:
    """A resolved autoscale setting: capacity, the scale-out and scale-in rules on one metric."""

    minimum: int
    maximum: int
    default: int
    metric: str
    metric_on: str  # "deployment" or "endpoint": the resource whose metric the rules read
    unit: str
    scale_out_above: float
    scale_in_below: float
    minutes: int
    cooldown_minutes: int
    step: int
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: the range and the two rules."""
        unit = "%" if self.unit == "%" else f" {self.unit}"
        where = "the endpoint's " if self.metric_on == "endpoint" else ""
        return (
            f"autoscale {self.minimum} to {self.maximum} instances (start {self.default}): +{self.step} when {where}{self.metric} "
            f"averages above {self.scale_out_above:g}{unit} over {self.minutes} min, -{self.step} below {self.scale_in_below:g}{unit}; "
            f"cooldown {self.cooldown_minutes} min"
            + (f" ({'; '.join(self.reasons)})" if self.reasons else "")
        )

    def az_commands(self, name: str, deployment_id: str, endpoint_id: str) -> list[str]:
        """The ``az monitor autoscale`` commands that create the same setting (for a dry run)."""
        source = f" --resource {endpoint_id}" if self.metric_on == "endpoint" else ""
        condition = f"{self.metric} {{op}} {self.scale_out_above:g} avg {self.minutes}m"
        return [
            f"az monitor autoscale create --name {name} --resource {deployment_id} --min-count {self.minimum} "
            f"--max-count {self.maximum} --count {self.default}",
            f'az monitor autoscale rule create --autoscale-name {name} --condition "{condition.format(op=">")}"'
            f"{source} --scale out {self.step} --cooldown {self.cooldown_minutes}",
            f'az monitor autoscale rule create --autoscale-name {name} --condition '
            f'"{self.metric} < {self.scale_in_below:g} avg {self.minutes}m"{source} --scale in {self.step} --cooldown {self.cooldown_minutes}',
        ]

    def details(self) -> dict[str, Any]:
        """What ``Deployment.details["autoscale"]`` shows."""
        return {
            "min": self.minimum,
            "max": self.maximum,
            "metric": self.metric,
            "scale_out_above": self.scale_out_above,
            "scale_in_below": self.scale_in_below,
        }
