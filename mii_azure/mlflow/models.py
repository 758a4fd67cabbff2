"""``log_model``: a mii_azure package as an MLflow pyfunc model, with its signature and pinned requirements.

What is logged, so that the model loads without the machine that built it:

* the whole package directory as the artifact ``package``: manifest, ``score.py``, the ``mii_azure``
  snapshot, the environment, and the model's weights (the package's ``model`` link is followed, so
  the files themselves are copied);
* the package's ``mii_azure`` snapshot again as the model's code (``code_paths``), so the model runs
  the very code the package was tested with, and the "models from code" script
  :mod:`mii_azure.mlflow.model_code` (no pickle);
* the signature (:func:`model_signature`) and the pip requirements (:func:`pip_requirements`).

The run it is logged in carries the package's plan as params, like :func:`mii_azure.mlflow.log_plan`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import typing
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError
from ..packaging import MANIFEST_FILE, MODEL_LINK, Package, PackageError
from ._tracking import require_mlflow, start_run, use_tracking_uri, version_tags
from .runs import as_metrics, as_params, plan_metrics, plan_params, plan_tags

__all__ = ["log_model", "model_signature", "param_specs", "pip_requirements", "PACKAGE_ARTIFACT"]

logger = logging.getLogger(__name__)

#: The artifact that holds the package directory (:data:`mii_azure.mlflow.pyfunc_model.PACKAGE_ARTIFACT`;
#: that module imports mlflow, so the name is repeated here).
PACKAGE_ARTIFACT = "package"

PathLike = Union[str, "os.PathLike[str]"]
#: The snapshot's pyfunc files: a package built by a mii_azure without them cannot be logged.
_CODE_SCRIPT = Path("mii_azure") / "mlflow" / "model_code.py"
#: Type names of MLflow's ParamSpec for the annotations task parameters use.
_PARAM_TYPES = {int: "long", float: "double", bool: "boolean", str: "string"}


def log_model(
    package_or_model: Union[Package, PathLike],
    *,
    name: str = "model",
    registered_model_name: Optional[str] = None,
    experiment: Optional[str] = None,
    run_name: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    ml_client: Any = None,
    task: Optional[str] = None,
    sku: Optional[str] = None,
    **overrides: Any,
) -> Any:
    """Log ``package_or_model`` as an MLflow pyfunc model; returns MLflow's ``ModelInfo``.

    ``package_or_model`` is a :class:`~mii_azure.Package`, a package folder, or anything
    :func:`mii_azure.package` takes (a model folder, a cached hub id), packaged here first with
    ``task``, ``sku`` and the plan ``overrides``. Its weights must be local (a package of an Azure ML
    registered model has none to log). ``mlflow.pyfunc.load_model(info.model_uri).predict([...])``
    then answers as a deployment of the package does (see :mod:`mii_azure.mlflow.pyfunc_model`).

    It is logged in the active run, or else in a new run (``run_name``, default ``"<package> model"``)
    of ``experiment`` (default: MLflow's current one), which records the package's plan as params.
    ``registered_model_name`` also registers it in the model registry. The tracking store:
    ``tracking_uri``, an Azure ML workspace's (``ml_client``; needs ``azureml-mlflow``), or MLflow's own.
    """
    if isinstance(package_or_model, Package) or _is_package_dir(package_or_model):
        if task is not None or sku is not None or overrides:
            raise ConfigError(
                "A package is already planned, so task=, sku= and plan overrides do not apply; rebuild it with "
                "mii_azure.package(model, task=..., sku=..., ...) or log the model itself.",
            )
        bundle = package_or_model if isinstance(package_or_model, Package) else Package.load(package_or_model)
        return _log_package(bundle, name, registered_model_name, experiment, run_name, tracking_uri, ml_client)
    from ..packaging import package

    with tempfile.TemporaryDirectory(prefix="mii-azure-mlflow-") as scratch:
        bundle = package(package_or_model, output=Path(scratch) / "package", task=task, sku=sku, **overrides)
        return _log_package(bundle, name, registered_model_name, experiment, run_name, tracking_uri, ml_client)


def model_signature(task: str) -> Any:
    """The MLflow signature of a package serving ``task``.

    Inputs: one string column, the texts (unnamed, so a list of strings, a Series or a one-column
    DataFrame of any column name fit); question-answering: the string columns ``question`` and ``context``.
    Outputs: one column of untyped objects, the section-3 entries (a dict, or a list of dicts for the
    classification tasks): their shape differs by task and MLflow does not enforce outputs, so the
    entries come back as the Python objects ``/score`` answers in JSON, with nothing to decode.
    Params: the task's parameters (:func:`param_specs`).
    """
    require_mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, Schema

    from ..tasks import get_task

    task_cls = get_task(task)
    names = tuple(task_cls.input_names)
    columns = [ColSpec("string")] if names == ("query",) else [ColSpec("string", name) for name in names]
    return ModelSignature(
        inputs=Schema(columns),
        outputs=Schema([ColSpec(AnyType())]),
        params=ParamSchema(param_specs(task_cls)),
    )


def param_specs(task_cls: Any) -> list[Any]:
    """MLflow ParamSpecs of the task's parameters, each with the task's own default (MLflow fills in the
    defaults of the params a call leaves out; None means unset). ``stop`` and other lists are string arrays."""
    from mlflow.types.schema import ParamSpec

    specs = []
    for name, field in task_cls.parameters_model.model_fields.items():
        kind = _param_kind(field.annotation)
        if kind is None:
            logger.debug("Task parameter %s (%s) has no MLflow param type; it is not in the signature.", name, field.annotation)
            continue
        dtype, is_list = kind
        default = field.default
        if is_list:
            default = [] if default is None else list(default)
            specs.append(ParamSpec(name, dtype, default, shape=(-1,)))
        else:
            specs.append(ParamSpec(name, dtype, default))
    return specs


def pip_requirements(bundle: Package) -> list[str]:
    """The pip requirements of the logged model: the package's serving pins (``environment/requirements.txt``,
    the serving image's), torch's CPU index for a CPU package, and the MLflow and pandas the pyfunc itself
    needs, at the versions installed here.

    DeepSpeed is not among them, as it is not in the image's requirements: it builds only against an
    installed torch (``DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed==<version>``), which a
    requirements file cannot ask for. A GPU package whose plan injects DeepSpeed kernels says so when it
    loads without it (MissingDependencyError with that command).
    """
    from ..serving_image import REQUIREMENTS_FILE, TORCH_CPU_INDEX_URL

    source = bundle.path / "environment" / REQUIREMENTS_FILE
    if not source.is_file():
        raise PackageError(
            f"The package at {str(bundle.path)!r} has no environment/{REQUIREMENTS_FILE}; rebuild it with this "
            "version of mii_azure (mii_azure.package(...)).",
            path=str(bundle.path),
        )
    pins = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
    pins = [line for line in pins if line and not line.startswith("#")]
    gpu = bundle.plan.hardware.kind == "gpu"
    head = [] if gpu else [f"--extra-index-url {TORCH_CPU_INDEX_URL}"]
    return head + pins + [_installed("mlflow-skinny", "mlflow"), _installed("pandas")]


def _log_package(
    bundle: Package,
    name: str,
    registered_model_name: Optional[str],
    experiment: Optional[str],
    run_name: Optional[str],
    tracking_uri: Optional[str],
    ml_client: Any,
) -> Any:
    require_mlflow()
    bundle.verify()
    code_script = bundle.path / _CODE_SCRIPT
    if not code_script.is_file():
        raise PackageError(
            f"The package at {str(bundle.path)!r} was built by a mii_azure without MLflow support (its snapshot has "
            f"no {_CODE_SCRIPT.as_posix()}); rebuild it with this version (mii_azure.package(...)).",
            path=str(bundle.path),
        )
    if bundle.model_dir is None:
        raise PackageError(
            f"The package at {str(bundle.path)!r} serves {bundle.manifest.model.reference!r} and holds no local "
            "weights, so there is nothing to log with it; package a local model folder (or a cached hub id).",
            path=str(bundle.path),
            model=bundle.manifest.model.reference,
        )
    signature = model_signature(bundle.manifest.task)
    requirements = pip_requirements(bundle)
    with use_tracking_uri(tracking_uri, ml_client=ml_client) as mlflow, _staged(bundle) as staged:
        import mlflow.pyfunc

        active = mlflow.active_run()
        if active is not None and (experiment is not None or run_name is not None):
            raise ConfigError(
                f"An MLflow run ({active.info.run_id}) is active, so the model is logged in it; leave experiment= "
                "and run_name= out, or end the run first.",
                active_run=active.info.run_id,
            )
        tags = {**version_tags("model"), **plan_tags(bundle.plan), "mii_azure.package": bundle.name}
        with _run_for_model(mlflow, active, run_name or f"{bundle.name} model", experiment, tags) as run:
            if active is None:
                client = mlflow.MlflowClient()
                client.log_batch(
                    run.info.run_id, params=as_params(plan_params(bundle.plan)), metrics=as_metrics(plan_metrics(bundle.plan))
                )
            with warnings.catch_warnings():
                # An input example would make MLflow load the model (the engine) here just to check it.
                warnings.filterwarnings("ignore", message=".*input example.*")
                info = mlflow.pyfunc.log_model(
                    name=name,
                    python_model=str(staged / _CODE_SCRIPT),
                    artifacts={PACKAGE_ARTIFACT: str(staged)},
                    code_paths=[str(staged / "mii_azure")],
                    signature=signature,
                    pip_requirements=requirements,
                    registered_model_name=registered_model_name,
                    metadata={
                        "mii_azure_version": bundle.manifest.mii_azure_version,
                        "package": bundle.name,
                        "task": bundle.manifest.task,
                        "model": bundle.manifest.model.reference,
                    },
                )
    logger.info("Logged package %s as MLflow model %s.", bundle.name, info.model_uri)
    return info


@contextlib.contextmanager
def _staged(bundle: Package) -> Iterator[Path]:
    """The package with its model link replaced by the weights themselves (hard links where the file system
    allows, else copies): MLflow refuses to log a link that leads outside the folder it logs."""
    with tempfile.TemporaryDirectory(prefix="mii-azure-mlflow-") as scratch:
        staged = Path(scratch) / PACKAGE_ARTIFACT  # MLflow keeps the folder's name: artifacts/package
        shutil.copytree(bundle.path, staged, symlinks=False, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("__pycache__"))
        model_link = bundle.path / MODEL_LINK
        if not model_link.exists() and bundle.model_dir is not None:  # the manifest references the weights
            shutil.copytree(bundle.model_dir, staged / MODEL_LINK, copy_function=_link_or_copy)
        yield staged


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, destination)


def _run_for_model(mlflow: Any, active: Any, run_name: str, experiment: Optional[str], tags: dict[str, str]) -> Any:
    if active is not None:
        return contextlib.nullcontext(active)
    return start_run(mlflow, run_name=run_name, experiment=experiment, tags=tags)


def _is_package_dir(value: Any) -> bool:
    try:
        return (Path(value).expanduser() / MANIFEST_FILE).is_file()
    except TypeError:
        return False


def _param_kind(annotation: Any) -> Optional[tuple[str, bool]]:
    """(MLflow type, is a list) for a parameter annotation; None for one MLflow params cannot hold."""
    if typing.get_origin(annotation) is typing.Union:
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    else:
        options = [annotation]
    listed = [typing.get_args(option)[0] for option in options if typing.get_origin(option) is list and typing.get_args(option)]
    scalars = [option for option in options if typing.get_origin(option) is not list]
    if listed:  # str | list[str]: the list holds both
        kinds = set(listed) | set(scalars)
        return (_PARAM_TYPES[listed[0]], True) if len(kinds) == 1 and listed[0] in _PARAM_TYPES else None
    if len(scalars) == 1 and scalars[0] in _PARAM_TYPES:
        return _PARAM_TYPES[scalars[0]], False
    return None


def _installed(*names: str) -> str:
    """``name==version`` of the first of ``names`` installed here."""
    for name in names:
        try:
            return f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return names[0]
