"""Plans, cost reports and benchmark results as MLflow runs.

Each function logs one run (nested under the active run, if there is one) and returns it as MLflow's
``Run``, read back from the store:

* :func:`log_plan`: params model, task, SKU and every plan choice; metrics the memory the plan
  relies on; tags the reason of each choice; the plan as ``plan.json``.
* :func:`log_cost_report`: a run for the report (params model, task, workload, prices and the best
  SKU with its plan choices; metrics the best SKU's latency, throughput, $/hour and USD per million
  tokens) with one child run per SKU (its own params and metrics); the report as ``cost_report.json``.
  Every figure is estimated, and the runs say from what (tags ``mii_azure.figures``, ``price_source``).
* :func:`log_benchmark`: a result file of ``benchmarks/`` (or its dict): numbers as metrics (a list of
  numbers as one metric over steps), text as params, the file itself as an artifact; measured figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from ..cost_report import CostReport, SkuEstimate
from ..errors import ConfigError
from ..planner import OptimizationPlan
from ._tracking import start_run, use_tracking_uri, version_tags

__all__ = [
    "log_plan",
    "log_cost_report",
    "log_benchmark",
    "plan_params",
    "plan_metrics",
    "plan_tags",
    "as_params",
    "as_metrics",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
#: MLflow's limits (mlflow.utils.validation): a param value, a tag value, a key.
_PARAM_LIMIT = 6000
_TAG_LIMIT = 8000
_KEY_LIMIT = 250
#: Characters MLflow allows in param and metric names.
_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-. :/]")
#: Record fields of a cost estimate that are choices (params), though they are numbers.
_ESTIMATE_CHOICES = ("gpus", "batch", "max_batch_size", "tensor_parallel", "replicas", "calibrated")
#: The figures of a cost estimate logged on the report's run too, for its best SKU.
_HEADLINE = (
    "latency_ms",
    "ttft_ms",
    "request_ms",
    "tokens_per_s_per_instance",
    "requests_per_s_per_instance",
    "instances",
    "usd_per_hour",
    "usd_per_million_tokens",
    "usd_per_thousand_requests",
    "usd_per_million_tokens_at_capacity",
)


def log_plan(
    plan_or_model: Union[OptimizationPlan, PathLike, Any],
    *,
    task: Optional[str] = None,
    sku: Optional[str] = None,
    run_name: Optional[str] = None,
    experiment: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    ml_client: Any = None,
    **overrides: Any,
) -> Any:
    """Log an :class:`~mii_azure.OptimizationPlan` (or plan ``plan_or_model`` first, as :func:`mii_azure.plan`
    does with ``task``, ``sku`` and ``overrides``) as an MLflow run; returns the run."""
    if isinstance(plan_or_model, OptimizationPlan):
        if task is not None or sku is not None or overrides:
            raise ConfigError("A plan is already made, so task=, sku= and plan overrides do not apply; pass the model instead.")
        chosen = plan_or_model
    else:
        from ..planner import plan

        chosen = plan(plan_or_model, task=task, sku=sku, **overrides)
    with use_tracking_uri(tracking_uri, ml_client=ml_client) as mlflow:
        tags = {**version_tags("plan"), **plan_tags(chosen), "mlflow.note.content": chosen.describe()}
        name = run_name or f"plan {chosen.model} on {chosen.hardware.name}"
        with start_run(mlflow, run_name=name, experiment=experiment, tags=tags) as run:
            client = mlflow.MlflowClient()
            client.log_batch(run.info.run_id, params=as_params(plan_params(chosen)), metrics=as_metrics(plan_metrics(chosen)))
            client.log_dict(run.info.run_id, chosen.to_dict(), "plan.json")
        return mlflow.get_run(run.info.run_id)


def log_cost_report(
    report: CostReport,
    *,
    run_name: Optional[str] = None,
    experiment: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    ml_client: Any = None,
    per_sku: bool = True,
) -> Any:
    """Log a cost report (:func:`mii_azure.estimate_cost`) as an MLflow run, with one child run per SKU
    unless ``per_sku`` is false; returns the report's run."""
    if not isinstance(report, CostReport):
        raise ConfigError(
            f"log_cost_report takes the CostReport mii_azure.estimate_cost(...) returns, not {type(report).__name__}."
        )
    best = report.best
    with use_tracking_uri(tracking_uri, ml_client=ml_client) as mlflow:
        tags = {
            **version_tags("cost_report"),
            "mii_azure.figures": "estimated",
            "mii_azure.prices": _clip(report.prices, _TAG_LIMIT),
            "mlflow.note.content": _clip(_report_note(report), _TAG_LIMIT),
        }
        params: dict[str, Any] = {
            "model": report.model,
            "task": report.task,
            "unit": report.unit,
            "parameter_count": report.parameter_count,
            "prices": report.prices,
            "skus": len(report.estimates),
            **{f"workload.{key}": value for key, value in report.workload.model_dump(mode="json").items()},
            "sku": best.instance_type if best else None,
        }
        metrics: dict[str, Any] = {"skus_meeting_target": len(report.meeting)}
        if best is not None:
            record = best.to_record()
            params.update({f"best.{key}": value for key, value in _estimate_params(record).items() if key != "reason"})
            metrics.update({key: record.get(key) for key in _HEADLINE})
        name = run_name or f"cost {report.model}"
        with start_run(mlflow, run_name=name, experiment=experiment, tags=tags) as run:
            client = mlflow.MlflowClient()
            run_id = run.info.run_id
            client.log_batch(run_id, params=as_params(params), metrics=as_metrics(metrics))
            client.log_dict(run_id, report.to_dict(), "cost_report.json")
            if per_sku:
                for rank, estimate in enumerate(report.estimates, start=1):
                    _log_estimate(mlflow, client, run, report, estimate, rank)
        return mlflow.get_run(run_id)


def log_benchmark(
    results: Union[PathLike, Mapping[str, Any]],
    *,
    run_name: Optional[str] = None,
    experiment: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    ml_client: Any = None,
) -> Any:
    """Log a benchmark result (a JSON file of ``benchmarks/results/`` or its dict) as an MLflow run.

    Numbers become metrics named by their path (``runs.continuous.0.throughput_tokens_s``), a list of
    numbers one metric over steps; text, booleans and nulls become params (the model, the hardware, the
    settings); the result itself is logged as ``benchmark.json``. Returns the run.
    """
    source: Optional[Path] = None
    if isinstance(results, Mapping):
        data = dict(results)
    else:
        source = Path(results)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read benchmark results from {str(source)!r}: {exc}", path=str(source)) from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{str(source)!r} holds a JSON {type(data).__name__}, not the object of a benchmark result.", path=str(source)
            )
    params: dict[str, Any] = {}
    metrics: list[tuple[str, float, int]] = []
    _flatten(data, "", params, metrics)
    with use_tracking_uri(tracking_uri, ml_client=ml_client) as mlflow:
        tags = {**version_tags("benchmark"), "mii_azure.figures": "measured"}
        if source is not None:
            tags["mii_azure.source"] = _clip(str(source), _TAG_LIMIT)
        name = run_name or str(data.get("benchmark") or (source.stem if source else "benchmark"))
        with start_run(mlflow, run_name=name, experiment=experiment, tags=tags) as run:
            client = mlflow.MlflowClient()
            stamp = int(time.time() * 1000)
            from mlflow.entities import Metric

            logged = [Metric(_key(key), value, stamp, step) for key, value, step in metrics]
            client.log_batch(run.info.run_id, params=as_params(params), metrics=logged)
            client.log_dict(run.info.run_id, data, "benchmark.json")
        return mlflow.get_run(run.info.run_id)


# --- what a plan logs -------------------------------------------------------------------------------
def plan_params(plan: OptimizationPlan) -> dict[str, Any]:
    """The model, the SKU and every choice of ``plan``."""
    return {
        "model": plan.model,
        "task": plan.task,
        "sku": plan.hardware.name,
        "hardware": plan.hardware.describe(),
        "parameter_count": plan.parameter_count,
        "facts_source": plan.facts_source,
        "dtype": plan.dtype,
        "tensor_parallel": plan.tensor_parallel,
        "replicas": plan.replicas,
        "kernel_inject": plan.kernel_inject,
        "quantization": plan.quantization,
        "zero_offload": plan.zero_offload,
        "cuda_graph": plan.cuda_graph,
        "max_batch_size": plan.max_batch_size,
        "max_input_tokens": plan.max_input_tokens,
        "max_new_tokens": plan.max_new_tokens,
        "overrides": ",".join(plan.overrides),
    }


def plan_metrics(plan: OptimizationPlan) -> dict[str, float]:
    """The memory ``plan`` relies on (GB, per GPU or per copy's share of host RAM) and its KV-cache budget."""
    memory = plan.memory
    return {
        "kv_cache_gb": plan.kv_cache_gb,
        "kv_cache_tokens": plan.kv_cache_tokens,
        "memory.capacity_gb": memory.capacity_gb,
        "memory.weights_gb": memory.weights_gb,
        "memory.kv_cache_gb": memory.kv_cache_gb,
        "memory.workspace_gb": memory.workspace_gb,
        "memory.headroom_gb": memory.headroom_gb,
        "memory.offloaded_gb": memory.offloaded_gb,
        "memory.used_gb": memory.used_gb,
    }


def plan_tags(plan: OptimizationPlan) -> dict[str, str]:
    """The reason of each of ``plan``'s choices (``reason.<choice>``)."""
    return {_key(f"reason.{choice}"): _clip(reason, _TAG_LIMIT) for choice, reason in plan.reasons.items()}


def as_params(values: Mapping[str, Any]) -> list[Any]:
    """MLflow Params: names made valid, values as text (``None`` for an unset choice), clipped to MLflow's limit."""
    from mlflow.entities import Param

    params, seen = [], set()
    for key, value in values.items():
        name, copy = _key(key), 1
        while name in seen:  # two names that differ only in characters MLflow does not allow
            copy += 1
            name = f"{_key(key)[: _KEY_LIMIT - 8]}_{copy}"
        seen.add(name)
        params.append(Param(name, _clip(_text(value), _PARAM_LIMIT)))
    return params


def as_metrics(values: Mapping[str, Any]) -> list[Any]:
    """MLflow Metrics of the finite numbers among ``values`` (unknown figures are left out)."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [
        Metric(_key(key), float(value), stamp, 0)
        for key, value in values.items()
        if _is_number(value) and math.isfinite(float(value))
    ]


# --- helpers ----------------------------------------------------------------------------------------
def _log_estimate(mlflow: Any, client: Any, parent: Any, report: CostReport, estimate: SkuEstimate, rank: int) -> None:
    """One child run of the report's run: one SKU's estimate."""
    record = estimate.to_record()
    child = client.create_run(
        parent.info.experiment_id,
        run_name=estimate.instance_type,
        tags={
            "mlflow.parentRunId": parent.info.run_id,
            **version_tags("cost_estimate"),
            "mii_azure.figures": "estimated",
        },
    )
    params = {"model": report.model, "task": report.task, "sku": estimate.instance_type, **_estimate_params(record)}
    metrics = {"rank": rank, **{key: value for key, value in record.items() if key not in params and key != "rank"}}
    try:
        client.log_batch(child.info.run_id, params=as_params(params), metrics=as_metrics(metrics))
    finally:
        client.set_terminated(child.info.run_id)


def _estimate_params(record: Mapping[str, Any]) -> dict[str, Any]:
    """The choices and text of a cost estimate's record (its numbers are metrics)."""
    return {
        key: value
        for key, value in record.items()
        if key != "rank" and (key in _ESTIMATE_CHOICES or not _is_number(value))
    }


def _report_note(report: CostReport) -> str:
    best = report.best
    chosen = f"best: {best.instance_type} ({best.plan_summary})" if best else "no SKU meets the target"
    return (
        f"Cost estimate for {report.model} ({report.task}): {report.workload_text}. {chosen}. "
        f"Prices: {report.prices}. Every figure is estimated (roofline model, calibrated where the report says so)."
    )


def _flatten(value: Any, path: str, params: dict[str, Any], metrics: list[tuple[str, float, int]]) -> None:
    """Numbers to ``metrics`` (name, value, step), everything else to ``params``, named by their path."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), params, metrics)
    elif isinstance(value, list):
        if value and all(_is_number(item) for item in value):
            metrics.extend((path, float(item), step) for step, item in enumerate(value) if math.isfinite(float(item)))
        elif all(isinstance(item, (Mapping, list)) for item in value) and value:
            for index, item in enumerate(value):
                _flatten(item, f"{path}.{index}", params, metrics)
        else:
            params[path] = json.dumps(value)
    elif _is_number(value):
        if math.isfinite(float(value)):
            metrics.append((path, float(value), 0))
    else:
        params[path] = value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _key(name: str) -> str:
    """A valid MLflow param/metric/tag name: unsupported characters as '_', at most 250 characters."""
    return _KEY_CHARACTERS.sub("_", name)[:_KEY_LIMIT] or "_"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
