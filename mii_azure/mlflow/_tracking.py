"""Importing mlflow (lazily), choosing the tracking store, and the runs this wing logs into.

The tracking store is, in order: ``tracking_uri=``; an Azure ML workspace's (``ml_client=``); or
whatever MLflow resolves itself (``MLFLOW_TRACKING_URI``, ``mlflow.set_tracking_uri``, else its
default: a SQLite file ``mlflow.db`` in the working directory since MLflow 3.7). A given store is set
with ``mlflow.set_tracking_uri`` for the whole process, as MLflow's own calls do, so that the model
URIs and run ids these functions return resolve against it afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any, Optional

from ..errors import ConfigError, MissingDependencyError

__all__ = [
    "MLFLOW_INSTALL",
    "AZUREML_MLFLOW_INSTALL",
    "require_mlflow",
    "resolve_tracking_uri",
    "use_tracking_uri",
    "start_run",
    "experiment_id",
    "version_tags",
]

logger = logging.getLogger(__name__)

MLFLOW_INSTALL = 'pip install "mii-azure[mlflow]"'
AZUREML_MLFLOW_INSTALL = "pip install azureml-mlflow"
#: Schemes MLflow serves from a SQL database through SQLAlchemy (and migrates with Alembic).
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def require_mlflow() -> Any:
    """The ``mlflow`` module, or MissingDependencyError naming the install command."""
    try:
        import mlflow
    except ImportError as exc:
        raise MissingDependencyError(
            f"MLflow support needs mlflow ({exc.name or 'mlflow'} is missing); install it with: {MLFLOW_INSTALL}",
            install=MLFLOW_INSTALL,
            package="mlflow-skinny",
        ) from None
    return mlflow


def resolve_tracking_uri(tracking_uri: Optional[str] = None, *, ml_client: Any = None) -> str:
    """The tracking URI the call logs to: ``tracking_uri``, the workspace of ``ml_client``, or MLflow's own.

    Checks that what the store needs is installed: SQLAlchemy and Alembic for a database store (MLflow's
    default SQLite one included; mlflow-skinny leaves them out), the ``azureml-mlflow`` plugin for an
    Azure ML workspace (``azureml://`` URIs).
    """
    mlflow = require_mlflow()
    if tracking_uri is not None and ml_client is not None:
        raise ConfigError("Pass either tracking_uri= or ml_client= (the workspace's tracking URI), not both.")
    if ml_client is not None:
        uri = _workspace_tracking_uri(ml_client)
    else:
        uri = str(tracking_uri) if tracking_uri is not None else mlflow.get_tracking_uri()
    _check_store_dependencies(uri)
    return uri


@contextlib.contextmanager
def use_tracking_uri(tracking_uri: Optional[str], *, ml_client: Any = None) -> Iterator[Any]:
    """Set the tracking store a call asked for (or keep MLflow's) and yield the mlflow module.

    An active run belongs to the store it was started in, so asking for another store while one is
    active is refused.
    """
    mlflow = require_mlflow()
    uri = resolve_tracking_uri(tracking_uri, ml_client=ml_client)
    if (tracking_uri is not None or ml_client is not None) and uri != mlflow.get_tracking_uri():
        active = mlflow.active_run()
        if active is not None:
            raise ConfigError(
                f"MLflow run {active.info.run_id} is active in the tracking store {mlflow.get_tracking_uri()!r}; "
                f"it cannot log to {uri!r}. End the run (mlflow.end_run()) or leave tracking_uri/ml_client out.",
                tracking_uri=uri,
                active_run=active.info.run_id,
            )
        mlflow.set_tracking_uri(uri)
    yield mlflow


def experiment_id(mlflow: Any, experiment: Optional[str]) -> Optional[str]:
    """The id of the experiment named ``experiment`` (created if new); None for MLflow's current one."""
    if experiment is None:
        return None
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(experiment)


@contextlib.contextmanager
def start_run(
    mlflow: Any,
    *,
    run_name: str,
    experiment: Optional[str],
    tags: Mapping[str, str],
) -> Iterator[Any]:
    """A new run (nested under the active run, if there is one) that ends when the block does:
    FINISHED, or FAILED when the block raises."""
    parent = mlflow.active_run()
    wanted = experiment_id(mlflow, experiment)
    if parent is not None and wanted is not None and wanted != parent.info.experiment_id:
        raise ConfigError(
            f"The active MLflow run {parent.info.run_id} is in another experiment than {experiment!r}; a nested "
            "run stays in its parent's experiment. End the active run or leave experiment= out.",
            experiment=experiment,
            active_run=parent.info.run_id,
        )
    with mlflow.start_run(run_name=run_name, experiment_id=wanted, nested=parent is not None, tags=dict(tags)) as run:
        yield run


def version_tags(kind: str) -> dict[str, str]:
    """Tags every run of this wing carries: what it logs and which mii_azure logged it."""
    from .. import __version__

    return {"mii_azure.kind": kind, "mii_azure.version": __version__}


def _workspace_tracking_uri(ml_client: Any) -> str:
    """The MLflow tracking URI of the Azure ML workspace ``ml_client`` names (``azureml://...``)."""
    from ..targets.azureml.boundary import azure_errors

    name = getattr(ml_client, "workspace_name", None)
    if not name:
        raise ConfigError(
            "The MLClient names no workspace, so it has no MLflow tracking URI; build it with "
            "MLClient(credential, subscription_id, resource_group_name, workspace_name).",
        )
    with azure_errors(f"reading workspace {name!r}", workspace=name):
        workspace = ml_client.workspaces.get(name)
    uri = getattr(workspace, "mlflow_tracking_uri", None)
    if not uri:
        raise ConfigError(f"Azure ML returned no MLflow tracking URI for workspace {name!r}.", workspace=name)
    return str(uri)


def _check_store_dependencies(uri: str) -> None:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme in _DATABASE_SCHEMES:
        missing = [name for name in ("sqlalchemy", "alembic") if not _importable(name)]
        if missing:
            raise MissingDependencyError(
                f"The MLflow tracking store {uri!r} is a database, which MLflow reaches through SQLAlchemy and "
                f"Alembic ({', '.join(missing)} missing; mlflow-skinny does not bring them); install them with: "
                f"{MLFLOW_INSTALL}",
                install=MLFLOW_INSTALL,
                tracking_uri=uri,
            )
    elif scheme == "azureml" and not _has_azureml_plugin():
        raise MissingDependencyError(
            f"The MLflow tracking store {uri!r} is an Azure ML workspace, which MLflow reaches through the "
            f"azureml-mlflow plugin; install it with: {AZUREML_MLFLOW_INSTALL}",
            install=AZUREML_MLFLOW_INSTALL,
            tracking_uri=uri,
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _has_azureml_plugin() -> bool:
    """Whether a plugin serves ``azureml://`` tracking URIs (the way MLflow finds it: an entry point)."""
    return any(entry.name == "azureml" for entry in metadata.entry_points(group="mlflow.tracking_store"))
