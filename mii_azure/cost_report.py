"""The result of a cost estimate: one row per SKU, as a table, records, CSV, JSON, a DataFrame or a chart.

Rows are ranked: SKUs that meet the latency target, cheapest first; then priced SKUs that miss it,
then those the model does not fit, then the rest, each with its reason. pandas and matplotlib are
optional (``pip install 'mii-azure[cost]'``) and imported only by ``to_dataframe`` and ``plot``.
"""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import MissingDependencyError
from .performance import Timing
from .planner import OptimizationPlan
from .pricing import PriceQuote
from .workload import Workload

__all__ = ["CostReport", "SkuEstimate", "StepBreakdown", "INSTALL_COST_EXTRA"]

INSTALL_COST_EXTRA = "pip install 'mii-azure[cost]'"
Status = Literal["ok", "unpriced", "misses_slo", "does_not_fit", "unsupported"]
_STATUS_ORDER = {"ok": 0, "unpriced": 1, "misses_slo": 2, "does_not_fit": 3, "unsupported": 4}
_STATUS_TEXT = {
    "ok": "meets target",
    "unpriced": "no price",
    "misses_slo": "misses target",
    "does_not_fit": "does not fit",
    "unsupported": "not supported",
}
_UNIT_COLUMNS = {
    "token": ("ms/token", "tok/s/inst", "$/M tok", "$/1k req"),
    "request": ("ms/request", "req/s/inst", None, "$/1k req"),
    "image": ("s/image", "img/s/inst", None, "$/1k img"),
}


class StepBreakdown(BaseModel):
    """Where the time of the latency-defining step goes, in ms (estimated)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_ms: float
    compute_ms: float
    communication_ms: float
    offload_ms: float

    @classmethod
    def of(cls, timing: Timing) -> "StepBreakdown":
        """The breakdown of ``timing``."""
        return cls(
            memory_ms=timing.memory_s * 1e3,
            compute_ms=timing.compute_s * 1e3,
            communication_ms=timing.communication_s * 1e3,
            offload_ms=timing.offload_s * 1e3,
        )


class SkuEstimate(BaseModel):
    """The estimate for one SKU: its plan, speed, instances and cost. Every figure is estimated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str
    hardware: str
    gpus: int
    unit: Literal["token", "request", "image"]
    status: Status
    reason: str
    price: Optional[PriceQuote] = None
    price_source: str = ""
    plan: Optional[OptimizationPlan] = None
    batch: Optional[int] = Field(None, description="Largest batch meeting the latency target (1 if none does).")
    max_batch_size: Optional[int] = Field(None, description="Largest batch the plan fits in memory.")
    latency_ms: Optional[float] = Field(None, description="Per generated token, per request or per image, at `batch`.")
    ttft_ms: Optional[float] = Field(None, description="Time to first token (the batch's prompt pass).")
    request_ms: Optional[float] = Field(None, description="Time of a whole request at `batch`.")
    breakdown: Optional[StepBreakdown] = None
    requests_per_s_per_instance: Optional[float] = None
    tokens_per_s_per_instance: Optional[float] = None
    instances: Optional[int] = None
    usd_per_hour: Optional[float] = Field(None, description="All instances the workload needs.")
    usd_per_million_tokens: Optional[float] = None
    usd_per_thousand_requests: Optional[float] = Field(None, description="Per thousand images for text-to-image.")
    usd_per_million_tokens_at_capacity: Optional[float] = Field(None, description="With one instance fully loaded.")
    calibrated: bool = False
    efficiency_basis: str = ""
    efficiency_bandwidth: Optional[float] = None
    efficiency_flops: Optional[float] = None
    notes: tuple[str, ...] = ()
    figures: Literal["estimated"] = "estimated"

    @property
    def usd_per_hour_instance(self) -> Optional[float]:
        """The hourly price of one instance used."""
        return self.price.usd_per_hour if self.price else None

    @property
    def plan_summary(self) -> str:
        """The plan's choices in a few characters: ``fp16 tp8``, ``int8 tp8``, ``fp16 tp4 x2`` (two copies
        per instance), ``fp16 offload:cpu``."""
        if self.plan is None:
            return "-"
        plan = self.plan
        dtype = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[plan.dtype]
        parts = ["int8" if plan.quantization == "int8" else dtype]
        if plan.tensor_parallel > 1:
            parts.append(f"tp{plan.tensor_parallel}")
        if plan.replicas > 1:
            parts.append(f"x{plan.replicas}")
        if plan.zero_offload:
            parts.append(f"offload:{plan.zero_offload}")
        return " ".join(parts)

    def to_record(self) -> dict[str, Any]:
        """A flat dict (one CSV row / DataFrame row)."""
        plan = self.plan
        breakdown = self.breakdown.model_dump() if self.breakdown else {}
        return {
            "instance_type": self.instance_type,
            "status": self.status,
            "reason": self.reason,
            "gpus": self.gpus,
            "hardware": self.hardware,
            "plan": self.plan_summary,
            "dtype": plan.dtype if plan else None,
            "quantization": plan.quantization if plan else None,
            "tensor_parallel": plan.tensor_parallel if plan else None,
            "replicas": plan.replicas if plan else None,
            "zero_offload": plan.zero_offload if plan else None,
            "batch": self.batch,
            "max_batch_size": self.max_batch_size,
            "unit": self.unit,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "request_ms": self.request_ms,
            "tokens_per_s_per_instance": self.tokens_per_s_per_instance,
            "requests_per_s_per_instance": self.requests_per_s_per_instance,
            "instances": self.instances,
            "usd_per_hour_instance": self.usd_per_hour_instance,
            "list_usd_per_hour_instance": self.price.list_usd_per_hour if self.price else None,
            "usd_per_hour": self.usd_per_hour,
            "usd_per_million_tokens": self.usd_per_million_tokens,
            "usd_per_thousand_requests": self.usd_per_thousand_requests,
            "usd_per_million_tokens_at_capacity": self.usd_per_million_tokens_at_capacity,
            "price_source": self.price_source,
            **breakdown,
            "figures": self.figures,
            "calibrated": self.calibrated,
            "efficiency_bandwidth": self.efficiency_bandwidth,
            "efficiency_flops": self.efficiency_flops,
            "efficiency_basis": self.efficiency_basis,
            "notes": "; ".join(self.notes),
        }


class CostReport(BaseModel):
    """Estimates for one model and workload over several SKUs, ranked (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    task: str
    unit: Literal["token", "request", "image"]
    workload: Workload
    workload_text: str
    prices: str = Field(description="Which prices were used.")
    estimates: tuple[SkuEstimate, ...]
    parameter_count: Optional[int] = None

    @field_validator("estimates")
    @classmethod
    def _ranked(cls, estimates: tuple[SkuEstimate, ...]) -> tuple[SkuEstimate, ...]:
        return tuple(sorted(estimates, key=_rank_key))

    # --- selection ----------------------------------------------------------------------------
    @property
    def best(self) -> Optional[SkuEstimate]:
        """The cheapest priced SKU that meets the latency target (None if none does); ``.plan`` is its plan."""
        return next((estimate for estimate in self.estimates if estimate.status == "ok"), None)

    @property
    def meeting(self) -> tuple[SkuEstimate, ...]:
        """Priced SKUs that meet the target, cheapest first."""
        return tuple(estimate for estimate in self.estimates if estimate.status == "ok")

    @property
    def not_meeting(self) -> tuple[SkuEstimate, ...]:
        """Every other SKU, with its reason."""
        return tuple(estimate for estimate in self.estimates if estimate.status != "ok")

    def __getitem__(self, instance_type: str) -> SkuEstimate:
        """The estimate of one SKU, by its full name (case does not matter)."""
        for estimate in self.estimates:
            if estimate.instance_type.lower() == instance_type.lower():
                return estimate
        raise KeyError(f"{instance_type!r} is not in this report; it has {', '.join(e.instance_type for e in self.estimates)}")

    # --- data ---------------------------------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per SKU, ranked, with its rank (None for SKUs without a cost)."""
        records = []
        for index, estimate in enumerate(self.estimates, start=1):
            record = {"rank": index, **estimate.to_record()}
            records.append(record)
        return records

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the header, the ranked records and each SKU's full plan."""
        return {
            "model": self.model,
            "task": self.task,
            "unit": self.unit,
            "parameter_count": self.parameter_count,
            "workload": self.workload.model_dump(mode="json"),
            "prices": self.prices,
            "figures": "estimated",
            "best": self.best.instance_type if self.best else None,
            "estimates": self.to_records(),
            "plans": {e.instance_type: e.plan.to_dict() for e in self.estimates if e.plan is not None},
        }

    def to_json(self, *, indent: int = 2) -> str:
        """The report as JSON."""
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self, path: Union[str, "os.PathLike[str]"]) -> Path:
        """Write the ranked records as CSV (no pandas needed); returns the path."""
        target = Path(path)
        records = self.to_records()
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]) if records else ["rank"])
            writer.writeheader()
            writer.writerows(records)
        return target

    def to_dataframe(self) -> Any:
        """The ranked records as a pandas DataFrame (needs pandas)."""
        try:
            import pandas
        except ImportError:
            raise MissingDependencyError(
                f"CostReport.to_dataframe() needs pandas; install it with {INSTALL_COST_EXTRA} "
                "(or use to_records() / to_csv(), which need nothing).",
                install=INSTALL_COST_EXTRA,
                package="pandas",
            ) from None
        return pandas.DataFrame.from_records(self.to_records()).set_index("rank")

    # --- chart --------------------------------------------------------------------------------
    def plot(self, path: Union[str, "os.PathLike[str]"], *, dpi: int = 100) -> Path:
        """Write a PNG chart: cost against latency, one point per priced SKU, the target as a vertical line."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise MissingDependencyError(
                f"CostReport.plot() needs matplotlib; install it with {INSTALL_COST_EXTRA}.",
                install=INSTALL_COST_EXTRA,
                package="matplotlib",
            ) from None
        x_label, y_label, x_scale, y_key = self._axes()
        figure = Figure(figsize=(9, 5.5), dpi=dpi)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        points = [e for e in self.estimates if e.latency_ms is not None and getattr(e, y_key) is not None]
        for status, color, label in (("ok", "tab:green", "meets target"), ("misses_slo", "tab:orange", "misses target")):
            chosen = [e for e in points if e.status == status]
            if chosen:
                axes.scatter(
                    [e.latency_ms / x_scale for e in chosen],  # type: ignore[operator]
                    [getattr(e, y_key) for e in chosen],
                    color=color,
                    label=label,
                    zorder=3,
                )
            for estimate in chosen:
                axes.annotate(
                    _short(estimate.instance_type),
                    (estimate.latency_ms / x_scale, getattr(estimate, y_key)),  # type: ignore[operator]
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize=8,
                )
        target = self.workload.latency_slo_ms
        if target:
            axes.axvline(target / x_scale, color="tab:red", linestyle="--", label=f"target {target / x_scale:g}")
        if points:
            axes.set_xscale("log")
            axes.set_yscale("log")
            axes.legend(loc="best", fontsize=8)
        else:
            axes.text(0.5, 0.5, "no priced SKU to plot", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel(x_label + " (estimated)")
        axes.set_ylabel(y_label + " (estimated)")
        axes.set_title(f"{self.model}: {self.workload_text}", fontsize=9)
        axes.grid(True, which="both", alpha=0.3)
        figure.tight_layout()
        target_path = Path(path)
        figure.savefig(target_path, format="png")
        return target_path

    def _axes(self) -> tuple[str, str, float, str]:
        if self.unit == "image":
            return "seconds per image", "USD per thousand images", 1e3, "usd_per_thousand_requests"
        if self.unit == "request":
            return "ms per request", "USD per thousand requests", 1.0, "usd_per_thousand_requests"
        return "ms per generated token", "USD per million generated tokens", 1.0, "usd_per_million_tokens"

    # --- text ---------------------------------------------------------------------------------
    def _bases(self) -> list[str]:
        bases: list[str] = []
        for estimate in self.estimates:
            if estimate.efficiency_basis and estimate.efficiency_basis not in bases:
                bases.append(estimate.efficiency_basis)
        return bases

    def _header(self) -> list[str]:
        parameters = f", {self.parameter_count:,} parameters" if self.parameter_count else ""
        return [
            f"Cost estimate for {self.model} ({self.task}{parameters})",
            f"Workload: {self.workload_text}",
            f"Prices: {self.prices}",
            "All speeds and costs are estimates (est.), not measurements; [n] marks each SKU's efficiency basis.",
        ]

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        latency, throughput, per_million, per_thousand = _UNIT_COLUMNS[self.unit]
        scale = 1e3 if self.unit == "image" else 1.0
        columns = ["#", "SKU", "GPUs", "plan", "batch"]
        columns += ["TTFT ms"] if self.unit == "token" else []
        columns += [latency, throughput, "inst", "$/h/inst", "$/h"]
        columns += [per_million] if per_million else []
        columns += [per_thousand, "status"]
        bases = self._bases()
        rows = []
        for index, e in enumerate(self.estimates, start=1):
            mark = f" [{bases.index(e.efficiency_basis) + 1}]" if e.efficiency_basis in bases else ""
            throughput_value = e.tokens_per_s_per_instance if self.unit == "token" else e.requests_per_s_per_instance
            row = [str(index), _short(e.instance_type) + mark, str(e.gpus), e.plan_summary, _num(e.batch)]
            row += [_num(e.ttft_ms)] if self.unit == "token" else []
            row += [
                _num(e.latency_ms / scale if e.latency_ms is not None else None),
                _num(throughput_value),
                _num(e.instances),
                _money(e.usd_per_hour_instance),
                _money(e.usd_per_hour),
            ]
            row += [_money(e.usd_per_million_tokens)] if per_million else []
            row += [_money(e.usd_per_thousand_requests), _STATUS_TEXT[e.status]]
            rows.append(row)
        return columns, rows

    def _footer(self) -> list[str]:
        lines = []
        others = self.not_meeting
        if others:
            lines.append("Not meeting the target, or not costed:")
            lines += [f"  {_short(e.instance_type)}: {_STATUS_TEXT[e.status]}: {e.reason}" for e in others]
        noted = [e for e in self.estimates if e.status in ("ok", "unpriced", "misses_slo")]
        common = [note for note in (noted[0].notes if noted else ()) if all(note in e.notes for e in noted)]
        specific = [(e, [note for note in e.notes if note not in common]) for e in noted]
        if common or any(notes for _, notes in specific):
            lines.append("Notes:")
            lines += [f"  all: {note}" for note in common]
            lines += [f"  {_short(e.instance_type)}: {'; '.join(notes)}" for e, notes in specific if notes]
        lines.append("Efficiency bases:")
        lines += [f"  [{index}] {basis}" for index, basis in enumerate(self._bases(), start=1)]
        best = self.best
        lines.append(
            f"Best: {best.instance_type} ({best.plan_summary}, batch {best.batch}, {best.instances} instance"
            f"{'s' if best.instances != 1 else ''}, ${best.usd_per_hour:,.2f}/h)"
            if best and best.usd_per_hour is not None
            else "Best: none of these SKUs meets the target with a price."
        )
        return lines

    def __str__(self) -> str:
        columns, rows = self._rows()
        widths = [max(len(column), *(len(row[i]) for row in rows)) if rows else len(column) for i, column in enumerate(columns)]
        left = {1, 3, len(columns) - 1}

        def line(cells: list[str]) -> str:
            return "  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

        table = [line(columns), line(["-" * w for w in widths])] + [line(row) for row in rows]
        return "\n".join(self._header() + [""] + table + [""] + self._footer())

    def __repr__(self) -> str:
        return self.__str__()

    def _repr_html_(self) -> str:
        columns, rows = self._rows()
        escape = html.escape
        head = "".join(f"<th>{escape(column)}</th>" for column in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
        )
        header = "<br>".join(escape(line) for line in self._header())
        footer = "<br>".join(escape(line) for line in self._footer())
        return (
            f"<div><p>{header}</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p style='font-size:smaller'>{footer}</p></div>"
        )


def _rank_key(estimate: SkuEstimate) -> tuple[int, float, float]:
    cost = estimate.usd_per_hour if estimate.usd_per_hour is not None else float("inf")
    latency = estimate.latency_ms if estimate.latency_ms is not None else float("inf")
    return (_STATUS_ORDER[estimate.status], cost, latency)


def _short(instance_type: str) -> str:
    return instance_type[len("Standard_") :] if instance_type.startswith("Standard_") else instance_type


def _num(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


def _money(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if value >= 0.1 else f"{value:.3g}"
