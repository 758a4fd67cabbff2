"""The Azure ML pipeline step: :func:`batch_score_component` returns an azure-ai-ml pipeline component.

The component takes ``input`` (a ``uri_file``, or with ``input_type="uri_folder"`` a folder of files:
JSON Lines, ``.txt``, CSV/TSV/Parquet) and gives ``output``, a ``uri_folder`` holding ``scores.jsonl``
(one record per input line, in input order, as :func:`~mii_azure.pipeline.batch_score` writes them) and
``summary.json``. String inputs ``parameters`` (a JSON object of default generation parameters) and
``column`` (a table's text column) have the defaults given here. Inside it:

- ``instance_count=1``: one command step scores the input on one node.
- ``instance_count>1``: Azure ML's own parallel job (``parallel_run_function``'s ``ParallelComponent``)
  scores mini-batches of files on ``instance_count`` nodes, with the retries and error thresholds that job
  type defines; a single file is first cut into shards of contiguous lines (a parallel job splits a
  folder, not a file), and a last command step restores input order (every row the parallel step returns
  names its source file and line; see :mod:`mii_azure.pipeline.ordering`).

Every step runs the package's own code (its ``mii_azure`` snapshot, without the weights: see
:mod:`mii_azure.pipeline.step`) in the package's serving environment (its Docker build context, the same
environment name and content-derived version an online deployment registers). The weights are the scoring
step's ``model`` input: the registered model ``azureml:<name>:<version>`` whose version is derived from the
weights' content, registered by :func:`mii_azure.pipeline.submit` (or here, given ``ml_client``) when
missing. The plan's VM size is on the components' tags; ``submit`` checks the cluster against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import ConfigError, MissingDependencyError
from ..models import ModelSource
from ..packaging import MANIFEST_FILE, Package
from ..targets.azureml.workspace import AZURE_INSTALL
from .ordering import SCORES_FILE

__all__ = [
    "batch_score_component",
    "BatchStep",
    "ENTRY_SCRIPT",
    "step_of",
    "AZURE_ML_INSTALL",
    "SKU_TAG",
    "ROLE_TAG",
    "MODEL_TAG",
    "INSTANCES_TAG",
    "PLAN_TAG",
]

logger = logging.getLogger(__name__)

AZURE_ML_INSTALL = AZURE_INSTALL  # the Azure wing's install command
#: The parallel job's entry script, written at the root of the component's code (it imports the package's
#: own snapshot of mii_azure.pipeline.step; this module does not import that one, so that
#: ``python -m mii_azure.pipeline.step`` finds it unimported).
ENTRY_SCRIPT = "mii_batch_entry.py"
#: Tags on the pipeline component and its scoring step: the VM size (``Standard_...``; ``cpu`` for a CPU
#: plan), the role of a step, the model input, the parallel step's node count, the plan's hardware kind.
SKU_TAG = "mii_azure_sku"
ROLE_TAG = "mii_azure_role"
MODEL_TAG = "mii_azure_model"
INSTANCES_TAG = "mii_azure_instance_count"
PLAN_TAG = "mii_azure_plan"
#: A parallel job's mini-batch run() is cut off after this many seconds by default (Azure ML's default,
#: 60 s, is short for a file of generations).
DEFAULT_MINI_BATCH_TIMEOUT_S = 3600
_INPUT_TYPES = ("uri_file", "uri_folder")
_STEP_MODULE = "mii_azure/pipeline/step.py"
_ENTRY_TEXT = '''"""Entry script of the mii_azure batch-scoring parallel step (init/run/shutdown), written by
mii_azure.pipeline.component: it imports the package's own mii_azure snapshot beside it."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [_HERE] + [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]

from mii_azure.pipeline import step as _step  # noqa: E402


def init():
    _step.init(package=_HERE)


def run(mini_batch):
    return _step.run(mini_batch)


def shutdown():
    _step.shutdown()
'''


@dataclass(frozen=True)
class BatchStep:
    """What :func:`mii_azure.pipeline.submit` needs to know about a component built in this process: the
    package, the model input (``model_id``) and the local weights to register under it (None when the
    model is registered already), the planned VM size and the node count."""

    package: Package
    model_id: str
    model_name: Optional[str]
    model_version: Optional[str]
    weights: Optional[Path]
    instance_type: Optional[str]
    instance_count: int


_STEP_ATTRIBUTE = "_mii_azure_step"


def step_of(component: Any) -> Optional[BatchStep]:
    """The :class:`BatchStep` of a component :func:`batch_score_component` built in this process, else None
    (a component loaded from YAML or from the workspace)."""
    return getattr(component, _STEP_ATTRIBUTE, None)


def batch_score_component(
    package_or_model: Union[str, "os.PathLike[str]", Package],
    *,
    sku: Optional[str] = None,
    instance_count: int = 1,
    input_type: str = "uri_file",
    parameters: Optional[Mapping[str, Any]] = None,
    column: Optional[str] = None,
    compute: Optional[str] = None,
    mini_batch_size: int = 1,
    shards: Optional[int] = None,
    max_concurrency_per_instance: int = 1,
    error_threshold: Optional[int] = None,
    mini_batch_error_threshold: Optional[int] = None,
    max_retries: Optional[int] = None,
    mini_batch_timeout_s: int = DEFAULT_MINI_BATCH_TIMEOUT_S,
    environment: Any = None,
    model_name: Optional[str] = None,
    name: Optional[str] = None,
    output: Optional[Union[str, "os.PathLike[str]"]] = None,
    ml_client: Any = None,
    **overrides: Any,
) -> Any:
    """An azure-ai-ml pipeline component that batch-scores ``input`` with the package (or the model,
    packaged here for ``sku``), usable inside ``@dsl.pipeline``::

        component = mii_azure.pipeline.batch_score_component("./gpt2", sku="NC24ads", instance_count=4)

        @dsl.pipeline(default_compute="gpu-cluster")
        def nightly(prompts: Input(type="uri_file")):
            return {"scores": component(input=prompts).outputs.output}

        mii_azure.pipeline.submit(nightly(prompts=Input(path="azureml:prompts:1")), ml_client=ml_client)

    ``sku`` chooses the plan (as for :func:`mii_azure.deploy`); a package keeps the size it was planned for.
    ``instance_count`` > 1 scales out through Azure ML's parallel job: ``mini_batch_size`` files per
    mini-batch, ``max_concurrency_per_instance`` worker processes per node (each loads the model),
    ``error_threshold`` / ``mini_batch_error_threshold`` (failed files / mini-batches ignored; Azure ML's
    default -1 ignores all, and their lines get ``not_scored`` error records), ``max_retries`` and
    ``mini_batch_timeout_s`` per mini-batch; a ``uri_file`` input is cut into ``shards`` files first (by
    default 4 per worker process). ``compute`` names the scoring step's cluster (by default the pipeline's
    ``default_compute``; the split and order steps always use that). ``environment`` replaces the
    package's serving environment (an ``Environment`` or ``"azureml:name:version"``). ``model_name`` names
    the registered weights (default: the package's name). With ``ml_client`` the weights and the environment
    are registered now; otherwise :func:`mii_azure.pipeline.submit` registers what is missing.
    Plan ``overrides`` apply when a model is packaged here.
    """
    _require_azure_ml()
    if input_type not in _INPUT_TYPES:
        raise ConfigError(f"input_type={input_type!r}: use 'uri_file' or 'uri_folder'.", conflict="input_type")
    for option, value, least in (("instance_count", instance_count, 1), ("mini_batch_size", mini_batch_size, 1),
                                 ("max_concurrency_per_instance", max_concurrency_per_instance, 1),
                                 ("shards", shards if shards is not None else 1, 1),
                                 ("mini_batch_timeout_s", mini_batch_timeout_s, 1)):
        if int(value) < least:
            raise ConfigError(f"{option}={value}: it must be at least {least}.", conflict=option)
    if parameters is not None and not isinstance(parameters, Mapping):
        raise ConfigError(f"parameters={parameters!r}: pass a dict such as {{'max_new_tokens': 32}}.", conflict="parameters")
    # The steps' command lines quote these values with single quotes: JSON can spell one as \u0027 (JSON itself
    # never uses single quotes, so only string values hold them); a column name cannot.
    encoded = json.dumps(dict(parameters or {}), separators=(",", ":")).replace("'", "\\u0027")
    if "'" in (column or ""):
        raise ConfigError(f"column={column!r}: a column name with a single quote cannot be passed to the step's command "
                          "line; rename the column.", conflict="column")
    bundle = _package(package_or_model, sku=sku, name=name, output=output, overrides=overrides)
    bundle.verify()
    if not (bundle.path / _STEP_MODULE).is_file():
        raise ConfigError(
            f"The package {bundle.name!r} was built by a mii_azure without the pipeline step ({_STEP_MODULE} is "
            "missing from its runtime snapshot). Rebuild it with mii_azure.package(...).",
            package=str(bundle.path),
        )
    model = _model_input(bundle, model_name)
    instance_type = bundle.plan.hardware.name if bundle.plan.hardware.kind == "gpu" else None
    step = BatchStep(bundle, model.id, model.name, model.version, model.weights, instance_type, int(instance_count))
    if ml_client is not None:
        from .submit import register_model

        register_model(ml_client, step)
        environment = environment if environment is not None else _registered_environment(ml_client, bundle)
    parts = _Parts(
        bundle=bundle,
        step=step,
        code=str(stage_code(bundle)),
        environment=environment if environment is not None else _environment(bundle),
        parameters=encoded,
        column=column or "",
        compute=compute,
        input_type=input_type,
    )
    if instance_count == 1:
        component = parts.single_node()
    else:
        component = parts.scaled_out(
            mini_batch_size=mini_batch_size,
            shards=shards or 4 * instance_count * max_concurrency_per_instance,
            max_concurrency_per_instance=max_concurrency_per_instance,
            error_threshold=error_threshold,
            mini_batch_error_threshold=mini_batch_error_threshold,
            max_retries=max_retries,
            timeout_s=mini_batch_timeout_s,
        )
    setattr(component, _STEP_ATTRIBUTE, step)
    return component


# --- the parts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ModelInput:
    id: str
    name: Optional[str]
    version: Optional[str]
    weights: Optional[Path]


@dataclass
class _Parts:
    """Builds the steps and the pipeline component from one package's code, environment and model."""

    bundle: Package
    step: BatchStep
    code: str
    environment: Any
    parameters: str
    column: str
    compute: Optional[str]
    input_type: str

    @property
    def version(self) -> str:
        """One version for every component of this package and configuration (azure-ai-ml re-uses equal ones)."""
        text = json.dumps([_manifest_digest(self.bundle), self.step.model_id, self.step.instance_count, self.input_type,
                           self.parameters, self.column, self.compute, _describe(self.environment)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def tags(self) -> dict[str, str]:
        plan = self.bundle.plan
        return {
            SKU_TAG: self.step.instance_type or "cpu",
            PLAN_TAG: plan.hardware.kind,
            MODEL_TAG: self.step.model_id,
            INSTANCES_TAG: str(self.step.instance_count),
            "mii_azure_package": self.bundle.name,
            "mii_azure_task": self.bundle.manifest.task,
            "mii_azure_version": self.bundle.manifest.mii_azure_version,
        }

    def _string_inputs(self) -> dict[str, Any]:
        from azure.ai.ml import Input

        return {
            "parameters": Input(type="string", default=self.parameters,
                                description='JSON object of default parameters, e.g. {"max_new_tokens":32} (single quotes as \\u0027)'),
            "column": Input(type="string", default=self.column, description="a table's text column ('' picks it)"),
        }

    def _model_binding(self) -> Any:
        from azure.ai.ml import Input

        return Input(type="custom_model", path=self.step.model_id, mode="ro_mount")

    def score_command(self, input_type: str) -> Any:
        """The one-node scoring step (a command component)."""
        from azure.ai.ml import Input, Output
        from azure.ai.ml.entities import CommandComponent

        return CommandComponent(
            name="mii_batch_score_step",
            version=self.version,
            display_name="score (one node)",
            description=f"Scores every line of the input with {self.bundle.name} (mii_azure batch_score).",
            tags={**self.tags, ROLE_TAG: "score"},
            inputs={"input": Input(type=input_type, mode="ro_mount"), "model": Input(type="custom_model", mode="ro_mount"),
                    **self._string_inputs()},
            outputs={"output": Output(type="uri_folder", description=f"{SCORES_FILE} and summary.json")},
            code=self.code,
            environment=self.environment,
            command=(
                "python -m mii_azure.pipeline.step score --model ${{inputs.model}} --input ${{inputs.input}} "
                "--output ${{outputs.output}} --parameters '${{inputs.parameters}}' --column '${{inputs.column}}'"
            ),
            is_deterministic=True,
        )

    def split_command(self) -> Any:
        """Cuts one line file into shards of contiguous lines (a command component)."""
        from azure.ai.ml import Input, Output
        from azure.ai.ml.entities import CommandComponent

        return CommandComponent(
            name="mii_batch_split",
            version=self.version,
            display_name="cut into shards",
            description="Cuts a JSON Lines or text file into shards of contiguous lines for the parallel step.",
            tags={**self.tags, ROLE_TAG: "split"},
            inputs={"input": Input(type="uri_file", mode="ro_mount"), "shards": Input(type="integer", default=1, min=1)},
            outputs={"shards": Output(type="uri_folder")},
            code=self.code,
            environment=self.environment,
            command="python -m mii_azure.pipeline.step split --input ${{inputs.input}} --output ${{outputs.shards}} --shards ${{inputs.shards}}",
            is_deterministic=True,
        )

    def parallel_score(self, *, mini_batch_size: int, max_concurrency_per_instance: int, error_threshold: Optional[int],
                       mini_batch_error_threshold: Optional[int], max_retries: Optional[int], timeout_s: int) -> Any:
        """The scaled-out scoring step: Azure ML's parallel job over a folder of files."""
        from azure.ai.ml import Input, Output
        from azure.ai.ml.entities import ParallelComponent
        from azure.ai.ml.entities._job.parallel.retry_settings import RetrySettings
        from azure.ai.ml.parallel import RunFunction

        from ..azureml_specs import expected_load_s

        # The first mini-batch waits for init() (the model's load): give it the load's expected time twice.
        first_task_s = max(600, 2 * expected_load_s(self.bundle.plan))
        retry = RetrySettings(timeout=int(timeout_s), **({"max_retries": int(max_retries)} if max_retries is not None else {}))
        thresholds = {key: int(value) for key, value in (("error_threshold", error_threshold),
                                                          ("mini_batch_error_threshold", mini_batch_error_threshold))
                      if value is not None}
        return ParallelComponent(
            name="mii_batch_score_parallel",
            version=self.version,
            display_name=f"score ({self.step.instance_count} nodes, parallel job)",
            description=f"Scores mini-batches of files with {self.bundle.name} on several nodes (mii_azure batch_score).",
            tags={**self.tags, ROLE_TAG: "score"},
            inputs={"input": Input(type="uri_folder", mode="ro_mount"), "model": Input(type="custom_model", mode="ro_mount"),
                    **self._string_inputs()},
            outputs={"scores": Output(type="uri_folder", description="rows in completion order, each with source and line")},
            input_data="${{inputs.input}}",
            mini_batch_size=str(int(mini_batch_size)),
            instance_count=self.step.instance_count,
            max_concurrency_per_instance=int(max_concurrency_per_instance),
            retry_settings=retry,
            logging_level="INFO",
            task=RunFunction(
                code=self.code,
                entry_script=ENTRY_SCRIPT,
                environment=self.environment,
                program_arguments=(
                    "--model ${{inputs.model}} --input ${{inputs.input}} --parameters '${{inputs.parameters}}' "
                    f"--column '${{{{inputs.column}}}}' --first_task_creation_timeout {first_task_s}"
                ),
                append_row_to="${{outputs.scores}}",
            ),
            is_deterministic=True,
            **thresholds,
        )

    def order_command(self, *, keep_source: bool) -> Any:
        """Writes the parallel step's rows back in input order (a command component)."""
        from azure.ai.ml import Input, Output
        from azure.ai.ml.entities import CommandComponent

        return CommandComponent(
            name="mii_batch_order",
            version=self.version,
            display_name="restore input order",
            description="Writes the parallel step's rows in input order, one record per input line.",
            tags={**self.tags, ROLE_TAG: "order"},
            inputs={"scores": Input(type="uri_folder", mode="ro_mount"), "input": Input(type="uri_folder", mode="ro_mount"),
                    "column": Input(type="string", default=self.column)},
            outputs={"output": Output(type="uri_folder", description=f"{SCORES_FILE} and summary.json")},
            code=self.code,
            environment=self.environment,
            command=(
                "python -m mii_azure.pipeline.step order --scores ${{inputs.scores}} --input ${{inputs.input}} "
                f"--output ${{{{outputs.output}}}} --column '${{{{inputs.column}}}}'{' --keep-source' if keep_source else ''}"
            ),
            is_deterministic=True,
        )

    def _pipeline(self, build: Any, *, description: str) -> Any:
        """The pipeline component ``build`` (a function of the component's inputs) makes."""
        from azure.ai.ml import Input, dsl

        input_type = self.input_type
        pipeline_name = "mii_batch_score_" + "".join(c if c.isalnum() else "_" for c in self.bundle.name.lower())

        def batch_score(input, parameters=self.parameters, column=self.column):  # type: ignore[no-untyped-def]  # noqa: A002
            return {"output": build(input, parameters, column)}

        # dsl reads the inputs from the annotations, which must be objects (this module's are strings).
        batch_score.__annotations__ = {"input": Input(type=input_type), "parameters": str, "column": str}
        decorated = dsl.pipeline(name=pipeline_name, version=self.version, display_name=f"batch score ({self.bundle.name})",
                                 description=description, tags=self.tags)(batch_score)
        return decorated(input=Input(type=input_type)).component

    def single_node(self) -> Any:
        score = self.score_command(self.input_type)

        def build(input: Any, parameters: Any, column: Any) -> Any:  # noqa: A002
            node = score(input=input, model=self._model_binding(), parameters=parameters, column=column)
            if self.compute:
                node.compute = self.compute
            return node.outputs.output

        return self._pipeline(build, description=f"Batch scoring with {self.bundle.name} on one node: {SCORES_FILE} in input order.")

    def scaled_out(self, *, shards: int, **parallel: Any) -> Any:
        score = self.parallel_score(**parallel)
        order = self.order_command(keep_source=self.input_type == "uri_folder")
        split = self.split_command() if self.input_type == "uri_file" else None

        def build(input: Any, parameters: Any, column: Any) -> Any:  # noqa: A002
            folder = input
            if split is not None:
                folder = split(input=input, shards=shards).outputs.shards
            node = score(input=folder, model=self._model_binding(), parameters=parameters, column=column)
            node.resources = {"instance_count": self.step.instance_count}
            if self.compute:
                node.compute = self.compute
            return order(scores=node.outputs.scores, input=folder, column=column).outputs.output

        return self._pipeline(build, description=(
            f"Batch scoring with {self.bundle.name} on {self.step.instance_count} nodes (Azure ML parallel job), "
            f"then {SCORES_FILE} in input order."
        ))


# --- the package, its model, its code ----------------------------------------------------------------
def _package(model: Any, *, sku: Optional[str], name: Optional[str], output: Any, overrides: dict[str, Any]) -> Package:
    """The package to run: a given one (whose size ``sku`` must match), or the model packaged for ``sku``."""
    from ..packaging import package
    from ..skus import get_sku

    existing = model if isinstance(model, Package) else None
    if existing is None and (Path(os.fspath(model)).expanduser() / MANIFEST_FILE).is_file():
        existing = Package.load(model)
    if existing is not None:
        changes = sorted(key for key, value in {"name": name, **overrides}.items() if value is not None)
        if changes:
            raise ConfigError(
                f"A package runs as it was built; {', '.join(changes)} cannot be changed here. Rebuild it with "
                "mii_azure.package(...) to change them.",
                conflict=changes[0],
            )
        if sku is not None:
            planned = existing.plan.hardware.name if existing.plan.hardware.kind == "gpu" else "a CPU"
            asked = get_sku(sku).instance_type
            if asked != planned:
                raise ConfigError(
                    f"The package {existing.name!r} is planned for {planned}, not {asked}: pass sku={planned!r} "
                    f"(or leave sku out), or rebuild it with mii_azure.package(model, sku={sku!r}).",
                    conflict="sku",
                    planned=planned,
                    sku=asked,
                )
        return existing
    if sku is None:
        raise ConfigError(
            "A pipeline step runs on an Azure VM size: pass sku= (such as 'NC24ads' or 'Standard_NC24ads_A100_v4'), "
            "or a package built with mii_azure.package(model, sku=...).",
            conflict="sku",
        )
    from ..models import resolve_model
    from ..packaging import check_name, deployment_name
    from ..targets.local import state_home

    facts = resolve_model(model)
    package_name = check_name(name or deployment_name(facts))
    destination = Path(output).expanduser() if output else state_home() / "packages" / "pipeline" / package_name
    return package(facts, output=destination, name=package_name, sku=sku, overwrite=True, **overrides)


def _model_input(bundle: Package, model_name: Optional[str]) -> _ModelInput:
    """The scoring step's ``model`` input: the registered model, or the version the local weights get."""
    model = bundle.manifest.model
    if model.source is ModelSource.AZUREML:
        if model.reference.startswith("azureml://"):
            return _ModelInput(model.reference, None, None, None)
        if model.version:
            return _ModelInput(f"azureml:{model.name}:{model.version}", model.name, model.version, None)
        return _ModelInput(f"azureml:{model.name}@{model.label or 'latest'}", model.name, None, None)
    weights = bundle.model_dir
    if weights is None:
        raise ConfigError(
            f"The package {bundle.name!r} links no local weights (its model is {model.reference!r}), and a pipeline step "
            "reads its model from the workspace. Register the model (ml_client.models.create_or_update(...)) and "
            "package 'azureml:<name>:<version>', or package a local folder or a model in the hub cache.",
            package=str(bundle.path),
        )
    from ..targets.azureml.assets import folder_digest

    weights = weights.resolve()
    name = model_name or bundle.name
    version = folder_digest(weights)[:16]
    return _ModelInput(f"azureml:{name}:{version}", name, version, weights)


def stage_code(bundle: Package) -> Path:
    """The component's code: the package without its weights link and ``azureml/`` (azure-ai-ml would follow
    the link and upload the weights as code), plus the parallel job's entry script; kept under
    ``$MII_AZURE_HOME/pipeline/code/`` by content, so the same package is the same code (uploaded once)."""
    from ..targets.local import state_home

    digest = hashlib.sha256(f"{_manifest_digest(bundle)}\n{_ENTRY_TEXT}".encode()).hexdigest()[:16]
    folder = state_home() / "pipeline" / "code" / f"{bundle.name}-{digest}"
    if (folder / MANIFEST_FILE).is_file() and (folder / ENTRY_SCRIPT).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.name}-", dir=folder.parent))
    try:
        code = staging / "code"
        shutil.copytree(
            bundle.path,
            code,
            ignore=lambda where, names: [n for n in names if Path(where) == bundle.path and n in ("model", "azureml")]
            + [n for n in names if n == "__pycache__"],
        )
        (code / ENTRY_SCRIPT).write_text(_ENTRY_TEXT, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        code.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _manifest_digest(bundle: Package) -> str:
    """SHA-256 of the package's manifest: its plan, settings and the hash of every code file."""
    return hashlib.sha256((bundle.path / MANIFEST_FILE).read_bytes()).hexdigest()


def _describe(environment: Any) -> str:
    """What an environment is, for the components' version: its id, or its build context or image."""
    if isinstance(environment, str):
        return environment
    build = getattr(environment, "build", None)
    return str(getattr(build, "path", None) or getattr(environment, "image", None) or type(environment).__name__)


def _environment(bundle: Package) -> Any:
    """The serving environment inline: azure-ai-ml registers it anonymously at submission (by content), so
    it carries no name or version of its own."""
    from ..targets.azureml.assets import serving_environment

    from azure.ai.ml.entities import Environment

    named = serving_environment(bundle)
    if named.build is not None:
        return Environment(build=named.build, inference_config=named.inference_config, description=named.description)
    return Environment(image=named.image, conda_file=named.conda_file, description=named.description)


def _registered_environment(ml_client: Any, bundle: Package) -> str:
    from ..targets.azureml.assets import environment_asset

    return environment_asset(ml_client, bundle)


def _require_azure_ml() -> None:
    try:
        import azure.ai.ml  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"The Azure ML pipeline step needs azure-ai-ml ({exc.name} is missing); install it with: {AZURE_ML_INSTALL}",
            install=AZURE_ML_INSTALL,
        ) from None
