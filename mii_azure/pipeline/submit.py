"""Submitting a pipeline that holds mii_azure batch-scoring steps: check the clusters, register the weights.

azure-ai-ml's ``ml_client.jobs.create_or_update(job)`` has no hook for a component to check where it will
run, so :func:`submit` does it first (:func:`check_compute`): the scoring step's cluster must be the VM size
its plan is for (a GPU plan's tensor parallelism, dtype and batch are that size's; a CPU plan's image has
CPU torch) and, for the parallel step, allow its ``instance_count`` nodes. Then the weights of every step
built in this process are registered under their content-derived version when the workspace lacks them
(the same weights are uploaded once), and the job is submitted. Every refusal is a :class:`ConfigError`
that names the compute, its size and the plan's, and says what to change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError, DeploymentNotFoundError
from .component import INSTANCES_TAG, MODEL_TAG, PLAN_TAG, ROLE_TAG, SKU_TAG, BatchStep, _require_azure_ml, step_of

__all__ = ["submit", "check_compute", "register_model", "ComputeCheck"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComputeCheck:
    """One scoring step and the cluster it will run on, as checked."""

    step: str  # the node's path in the job, e.g. "nightly/mii_batch_score_tiny/score"
    compute: str
    vm_size: Optional[str]
    planned: str  # the plan's VM size, or "cpu"
    instance_count: int
    max_instances: Optional[int]


def submit(job: Any, *, ml_client: Any, experiment_name: Optional[str] = None, check: bool = True) -> Any:
    """Check the job's mii_azure scoring steps against their clusters (:func:`check_compute`), register the
    weights they read when the workspace lacks them, then ``ml_client.jobs.create_or_update(job)``; returns
    the submitted job (azure-ai-ml's ``Job``). ``check=False`` skips the cluster check."""
    _require_azure_ml()
    from ..targets.azureml.boundary import azure_errors

    steps = list(_scoring_steps(job))
    if not steps:
        logger.info("The job holds no mii_azure batch-scoring step; submitting it as it is.")
    if check:
        check_compute(job, ml_client=ml_client)
    for _, node, owner, _ in steps:
        built = step_of(owner) if owner is not None else None
        if built is not None:
            register_model(ml_client, built)
        else:
            _require_model(ml_client, _tags(node).get(MODEL_TAG))
    name = getattr(job, "display_name", None) or getattr(job, "name", None) or "pipeline"
    with azure_errors(f"submit the pipeline job {name}", job=name):
        return ml_client.jobs.create_or_update(job, experiment_name=experiment_name)


def check_compute(job: Any, *, ml_client: Any) -> list[ComputeCheck]:
    """Check that each mii_azure scoring step of ``job`` runs on a cluster of the VM size its plan is for,
    with room for its nodes; the checks made. Raises :class:`ConfigError` with the facts otherwise."""
    _require_azure_ml()
    checks = []
    for where, node, _, compute in _scoring_steps(job):
        tags = _tags(node)
        planned, kind = tags.get(SKU_TAG, ""), tags.get(PLAN_TAG, "gpu")
        instances = int(tags.get(INSTANCES_TAG, "1") or 1)
        if not compute:
            raise ConfigError(
                f"The scoring step {where} has no compute. Name a cluster of {planned if kind == 'gpu' else 'a CPU size'}: "
                "@dsl.pipeline(default_compute='<cluster>'), or batch_score_component(..., compute='<cluster>').",
                step=where,
                planned=planned,
            )
        found = _compute(ml_client, compute, planned, instances)
        size = getattr(found, "size", None)
        max_instances = getattr(found, "max_instances", None)
        if not size:
            logger.warning("Compute %s (%s) does not say its VM size; the scoring step %s is not checked against %s.",
                           compute, getattr(found, "type", "?"), where, planned)
        elif kind == "gpu" and size.lower() != planned.lower():
            raise ConfigError(
                f"The scoring step {where} is planned for {planned}, but compute {compute!r} is {size}. Run it on a "
                f"cluster of {planned} (compute= or default_compute=), or build the component for this size: "
                f"batch_score_component(model, sku={size!r}).",
                step=where,
                compute=compute,
                vm_size=size,
                planned=planned,
            )
        elif kind != "gpu" and _is_gpu_size(size):
            raise ConfigError(
                f"The scoring step {where} is planned for a CPU (its image has torch's CPU build), but compute "
                f"{compute!r} is the GPU size {size}. Build the component for it: batch_score_component(model, "
                f"sku={size!r}), or run it on a CPU cluster.",
                step=where,
                compute=compute,
                vm_size=size,
                planned="cpu",
            )
        if max_instances is not None and int(max_instances) < instances:
            raise ConfigError(
                f"The scoring step {where} runs on {instances} nodes, but compute {compute!r} scales to at most "
                f"{max_instances}. Raise its maximum (AmlCompute max_instances={instances}) or build the component "
                f"with instance_count={max_instances}.",
                step=where,
                compute=compute,
                instance_count=instances,
                max_instances=int(max_instances),
            )
        checks.append(ComputeCheck(where, compute, size, planned or "cpu", instances, max_instances))
        logger.info("Scoring step %s runs on %s (%s, up to %s nodes): matches its plan.", where, compute, size, max_instances)
    return checks


def register_model(ml_client: Any, step: BatchStep) -> str:
    """Register the step's local weights as ``model_name:model_version`` unless the workspace has them; the
    model id. A step whose model is registered already is left as it is."""
    if step.weights is None or step.model_name is None or step.model_version is None:
        return step.model_id
    from azure.ai.ml.entities import Model

    from ..targets.azureml.assets import CONTENT_TAG
    from ..targets.azureml.boundary import azure_errors

    name, version = step.model_name, step.model_version
    try:
        with azure_errors(f"find the model {name}:{version}", model=name):
            ml_client.models.get(name=name, version=version)
        logger.info("Model %s:%s (these weights) is registered already; reusing it.", name, version)
        return step.model_id
    except DeploymentNotFoundError:
        pass
    entity = Model(
        name=name,
        version=version,
        path=str(step.weights),
        type="custom_model",
        description=f"Weights of {step.package.manifest.model.reference}, registered by mii_azure for batch scoring.",
        tags={CONTENT_TAG: version, "mii_azure_task": step.package.manifest.task},
    )
    with azure_errors(f"register the model {name}:{version} (upload {step.weights})", model=name):
        ml_client.models.create_or_update(entity)
    return step.model_id


# --- internals -------------------------------------------------------------------------------------
def _scoring_steps(job: Any) -> Iterator[tuple[str, Any, Any, Optional[str]]]:
    """(path, node, the mii_azure pipeline component holding it, compute) of every scoring step in ``job``."""
    settings = getattr(job, "settings", None)
    default = _compute_name(getattr(settings, "default_compute", None) or getattr(job, "compute", None))
    root = getattr(job, "display_name", None) or getattr(job, "name", None) or "pipeline"
    yield from _walk(getattr(job, "jobs", None) or {}, root, None, default)


def _walk(nodes: dict[str, Any], where: str, owner: Any, inherited: Optional[str]) -> Iterator[tuple[str, Any, Any, Optional[str]]]:
    for name, node in nodes.items():
        path = f"{where}/{name}"
        compute = _compute_name(getattr(node, "compute", None)) or inherited
        component = getattr(node, "component", None)
        if isinstance(component, str):
            logger.debug("Step %s uses the registered component %s; its tags are not read.", path, component)
            continue
        inner = getattr(component, "jobs", None)
        if inner:
            mine = component if SKU_TAG in (getattr(component, "tags", None) or {}) else owner
            yield from _walk(inner, path, mine, compute)
        elif _tags(node).get(ROLE_TAG) == "score":
            yield path, node, owner, compute


def _tags(node: Any) -> dict[str, str]:
    component = getattr(node, "component", None)
    return dict(getattr(component, "tags", None) or {})


def _compute_name(value: Any) -> Optional[str]:
    """``gpu-cluster`` from ``gpu-cluster``, ``azureml:gpu-cluster`` or a compute's ARM id."""
    if not value:
        return None
    text = str(value)
    if text.startswith("azureml:"):
        text = text[len("azureml:"):]
    return text.rstrip("/").split("/")[-1] or None


def _compute(ml_client: Any, name: str, planned: str, instances: int) -> Any:
    from ..targets.azureml.boundary import azure_errors

    try:
        with azure_errors(f"read the compute {name}", compute=name):
            return ml_client.compute.get(name)
    except DeploymentNotFoundError:
        raise ConfigError(
            f"The workspace has no compute named {name!r}. Create a cluster of the plan's size: "
            f"ml_client.compute.begin_create_or_update(AmlCompute(name={name!r}, size={planned or 'Standard_DS3_v2'!r}, "
            f"max_instances={instances}))",
            compute=name,
            planned=planned,
        ) from None


def _is_gpu_size(size: str) -> bool:
    from ..skus import get_sku

    try:
        get_sku(size)
    except ConfigError:
        return False
    return True


def _require_model(ml_client: Any, model_id: Optional[str]) -> None:
    """ConfigError unless ``azureml:name:version`` is registered (a step not built in this process)."""
    if not model_id or not model_id.startswith("azureml:") or model_id.startswith("azureml://") or "@" in model_id:
        return
    parts = model_id[len("azureml:"):].split(":")
    if len(parts) != 2:
        return
    from ..targets.azureml.boundary import azure_errors

    try:
        with azure_errors(f"find the model {model_id}", model=parts[0]):
            ml_client.models.get(name=parts[0], version=parts[1])
    except DeploymentNotFoundError:
        raise ConfigError(
            f"The scoring step reads the model {model_id}, which the workspace does not hold. Build the component "
            "in this process (mii_azure.pipeline.batch_score_component) so that submit() registers the weights, "
            "or pass ml_client= to batch_score_component to register them now.",
            model=model_id,
        ) from None
