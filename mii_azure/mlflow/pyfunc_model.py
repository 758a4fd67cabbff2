"""The MLflow pyfunc model of a mii_azure package: ``predict`` runs the package's scoring service.

MLflow loads it from :mod:`mii_azure.mlflow.model_code` ("models from code", no pickle). Its
``load_context`` loads the logged package (artifact ``package``: manifest, code snapshot, weights)
exactly as the package's ``score.py`` does in a deployment, through
:meth:`mii_azure.runtime.service.ScoringService.from_environment` (the manifest hashes are checked, the
package's plan is used where it fits this machine, else the model is re-planned here with the same
choices). ``predict`` answers through the same service and engine as ``/score`` and gRPC, and returns
the DESIGN.md section-3 entries, one per input, in order.

Inputs ``predict`` takes:

* a string, a list of strings, a pandas Series, or a DataFrame whose (first) column holds the texts;
  question-answering: a DataFrame, or a list of dicts, with columns ``question`` and ``context``;
* MLflow ``params``: the task's parameters (``max_new_tokens``, ``temperature``, ...), for every input;
* a list of section-3 request dicts (``{"query": ..., "parameters": {...}}``), each with its own
  parameters: called on the Python model itself (``loaded.unwrap_python_model().predict(None, [...])``).
  Through ``mlflow.pyfunc.load_model(uri).predict`` MLflow first turns such a list into a DataFrame
  and keeps only the column its signature names (see :func:`mii_azure.mlflow.model_signature`), so
  there give parameters as ``params``.

This module imports mlflow: only MLflow (and this wing) imports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import mlflow.pyfunc
import pandas

__all__ = ["MiiAzureModel", "PACKAGE_ARTIFACT", "serving_environment", "inputs_from", "parameters_from"]

logger = logging.getLogger(__name__)

#: The artifact that holds the package directory.
PACKAGE_ARTIFACT = "package"
#: Variables of the process that do not reach the scoring service: the pyfunc serves the logged
#: package's model, whatever model folder, hub model or worker count the surrounding server names.
_NOT_PASSED = ("AZUREML_MODEL_DIR", "MII_AZURE_HUB_MODEL", "WORKER_COUNT", "MII_AZURE_API_KEY")


class MiiAzureModel(mlflow.pyfunc.PythonModel):
    """A mii_azure package as an MLflow pyfunc model."""

    def __init__(self) -> None:
        self._service: Any = None

    def load_context(self, context: Any) -> None:
        """Load the logged package's model with the deployment's scoring service and engine."""
        from mii_azure.runtime.service import ScoringService

        package_dir = Path(context.artifacts[PACKAGE_ARTIFACT])
        self._service = ScoringService.from_environment(serving_environment(), package_dir=package_dir)
        logger.info("MLflow pyfunc serves package %s (%s).", self._service.name, self._service.task_cls.name)

    @property
    def service(self) -> Any:
        """The scoring service (after ``load_context``)."""
        if self._service is None:
            from mii_azure.errors import ConfigError

            raise ConfigError(
                "The mii_azure pyfunc model is not loaded; load it with mlflow.pyfunc.load_model(model_uri)."
            )
        return self._service

    def predict(self, context: Any, model_input: pandas.DataFrame, params: Optional[dict[str, Any]] = None) -> list[Any]:
        """The section-3 entries for ``model_input`` (see the module docstring), one per input.

        MLflow hands over a DataFrame (it enforces the logged signature first); called directly, the
        model also takes the other forms. (A DataFrame hint is one MLflow infers no signature from, so
        the logged one stays in force.)
        """
        service = self.service
        defaults = parameters_from(params, service.task_cls)
        if _is_request_list(model_input):
            entries: list[Any] = []
            for request in model_input:
                entries.extend(service.score(_with_defaults(request, defaults))["responses"])
            return entries
        inputs = inputs_from(model_input, service.task_cls)
        limit = service.settings.max_inputs_per_request
        entries = []
        for start in range(0, len(inputs), limit):
            entries.extend(service.score_inputs(inputs[start : start + limit], defaults)["responses"])
        return entries


def serving_environment(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The variables the scoring service reads (``MII_AZURE_*`` settings), less those naming another model."""
    environ = os.environ if environ is None else environ
    return {
        key: value
        for key, value in environ.items()
        if key.startswith("MII_AZURE_") and key not in _NOT_PASSED
    }


def inputs_from(model_input: Any, task_cls: Any) -> list[Any]:
    """The task's inputs (as ``Task.inputs_from_tensors`` returns them) from a pyfunc input."""
    from mii_azure.errors import BadRequestError

    names = tuple(task_cls.input_names)
    if isinstance(model_input, str):
        model_input = [model_input]
    if isinstance(model_input, pandas.Series):
        model_input = model_input.to_frame()
    if isinstance(model_input, list) and model_input and all(isinstance(item, Mapping) for item in model_input):
        model_input = pandas.DataFrame(model_input)
    if isinstance(model_input, pandas.DataFrame):
        if names == ("query",):
            if model_input.shape[1] == 0:
                raise BadRequestError("The input DataFrame has no column; put the texts in its first column.")
            columns = {"query": _texts(model_input.iloc[:, 0].tolist())}
        else:
            missing = [name for name in names if name not in model_input.columns]
            if missing:
                raise BadRequestError(
                    f"{task_cls.name} needs the columns {list(names)}; the input has {list(map(str, model_input.columns))}.",
                )
            columns = {name: [_native(value) for value in model_input[name].tolist()] for name in names}
        return task_cls.inputs_from_tensors(columns)
    if isinstance(model_input, list):
        return task_cls.inputs_from_tensors({names[0]: _texts(model_input)}) if names == ("query",) else (
            task_cls.parse_query(model_input)
        )
    raise BadRequestError(
        f"The mii_azure pyfunc takes a string, a list of strings, a pandas Series or DataFrame, or a list of "
        f"request dicts, not {type(model_input).__name__}."
    )


def parameters_from(params: Optional[Mapping[str, Any]], task_cls: Any) -> dict[str, Any]:
    """The task parameters among MLflow's ``params``: unset ones (None, or an empty list where the task's
    default is None) left out, numpy values as Python ones. The task validates the rest."""
    fields = task_cls.parameters_model.model_fields
    parameters: dict[str, Any] = {}
    for name, value in (params or {}).items():
        value = _native(value)
        if value is None:
            continue
        field = fields.get(name)
        if field is not None and field.default is None and isinstance(value, list) and not value:
            continue
        if field is not None and _is_float_field(field) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        parameters[name] = value
    return parameters


def _texts(values: list[Any]) -> list[Any]:
    """Cells as inputs: a cell holding several texts (a list) gives one input each."""
    texts: list[Any] = []
    for value in values:
        value = _native(value)
        texts.extend(value if isinstance(value, list) else [value])
    return texts


def _native(value: Any) -> Any:
    """numpy scalars and arrays as Python values (the task parameters are strictly typed)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_native(item) for item in value]
    return value


def _is_float_field(field: Any) -> bool:
    import typing

    annotation = field.annotation
    options = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    return float in options


def _is_request_list(model_input: Any) -> bool:
    """A list of section-3 request dicts (each with a ``query``), as opposed to rows of columns."""
    return (
        isinstance(model_input, list)
        and bool(model_input)
        and all(isinstance(item, Mapping) and "query" in item for item in model_input)
    )


def _with_defaults(request: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The request with ``defaults`` beneath its own parameters (and its legacy top-level keywords)."""
    own = request.get("parameters")
    if not defaults or (own is not None and not isinstance(own, Mapping)):
        return dict(request)  # the scoring service says what is wrong with odd parameters
    inherited = {key: value for key, value in defaults.items() if key not in request}
    return {**request, "parameters": {**inherited, **(own or {})}}
