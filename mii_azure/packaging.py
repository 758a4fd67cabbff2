"""Packages: a directory that fully describes one deployment (DESIGN.md section 5).

Layout of a package directory::

    mii_package.json      manifest: schema, name, task, model reference, plan with reasons,
                          serving settings, pinned runtime versions, SHA-256 of every code file
    score.py, launch.py   the scoring script and its inference-server launcher
    mii_azure/            a snapshot of the runtime score.py imports (byte-for-byte what was tested)
    environment/          the serving image's Docker build context (Dockerfile, pinned requirements.txt;
                          GPU: CUDA matching torch's, DeepSpeed's ops built at image build) and the
                          same pins as conda.yml for a local conda environment
    model                 a link to local weights (never a copy), when the model is local or cached
    azureml/              endpoint.yml and deployment.yml for `az ml online-endpoint/-deployment create -f`
    .amlignore            keeps the model link and azureml/ out of the code upload

``init()`` of the packaged score.py verifies the hashes and refuses a tampered or mismatched package.
The package can be moved: its code refers to nothing outside it but the model link.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from .config import ServingSettings
from .errors import ConfigError, InvalidModelError, MiiAzureError, PackagingError
from .hardware import Hardware
from .models import ModelFacts, ModelSource, resolve_model, resolve_task
from .planner import OptimizationPlan, PlanOverrides, make_plan
from .serving_image import write_build_context
from .skus import compute_capability

__all__ = [
    "Package",
    "PackageManifest",
    "PackageError",
    "package",
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "deployment_name",
    "worker_threads",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "mii_package.json"
SCHEMA_VERSION = 1
MODEL_LINK = "model"
#: The runtime dependencies whose installed versions a manifest pins.
PINNED_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "diffusers",
    "huggingface-hub",
    "pydantic",
    "azureml-inference-server-http",
    "grpcio",
    "protobuf",
    "deepspeed",
)
_SNAPSHOT_EXCLUDE = {"__pycache__", "cli.py"}
_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")


class PackageError(MiiAzureError):
    """A package directory that is missing files, tampered with, or from another schema."""


class ModelLink(BaseModel):
    """The model a package serves: its reference, and where its weights were linked from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reference: str
    source: ModelSource
    name: str
    version: Optional[str] = None
    label: Optional[str] = None
    linked_from: Optional[str] = None


class PackageManifest(BaseModel):
    """The contents of ``mii_package.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int
    name: str
    task: str
    created_at: str
    mii_azure_version: str
    model: ModelLink
    plan: OptimizationPlan
    settings: ServingSettings
    image: str
    conda_file: str
    versions: dict[str, str]
    files: dict[str, str]


class Package:
    """A package directory on disk."""

    def __init__(self, path: Path, manifest: PackageManifest) -> None:
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "Package":
        """Read the package at ``path`` (not yet verified: see :meth:`verify`)."""
        folder = Path(path).expanduser().resolve()
        manifest_file = folder / MANIFEST_FILE
        if not manifest_file.is_file():
            raise PackageError(
                f"{str(folder)!r} is not a mii_azure package: it has no {MANIFEST_FILE}. Build one with "
                "mii_azure.package(model, output=...) or `mii-azure package MODEL -o DIR`.",
                path=str(folder),
            )
        try:
            data = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PackageError(f"{str(manifest_file)!r} cannot be read as JSON ({exc}).", path=str(folder)) from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise PackageError(
                f"The package at {str(folder)!r} has schema version {version!r}; this mii_azure reads version "
                f"{SCHEMA_VERSION}. Rebuild the package with this version of mii_azure.",
                path=str(folder),
                schema_version=version,
            )
        try:
            manifest = PackageManifest.model_validate(data)
        except ValidationError as exc:
            raise PackageError(f"{str(manifest_file)!r} is not a valid manifest: {exc}", path=str(folder)) from None
        return cls(folder, manifest)

    @property
    def name(self) -> str:
        """The deployment name the package was built for."""
        return self.manifest.name

    @property
    def plan(self) -> OptimizationPlan:
        """The optimization plan the package was built with."""
        return self.manifest.plan

    @property
    def entry_script(self) -> Path:
        """The package's own scoring script."""
        return self.path / "score.py"

    @property
    def model_dir(self) -> Optional[Path]:
        """The package's local weights: its ``model`` link, or (where no link could be made, as on
        Windows without symlink rights) the folder the manifest references; None when neither exists."""
        link = self.path / MODEL_LINK
        if link.exists():
            return link
        referenced = self.manifest.model.linked_from
        return Path(referenced) if referenced and Path(referenced).is_dir() else None

    def verify(self) -> None:
        """Raise PackageError unless every code file is present and matches its SHA-256."""
        modified, missing = [], []
        for relative, expected in self.manifest.files.items():
            file = self.path / relative
            if not file.is_file():
                missing.append(relative)
            elif _sha256(file) != expected:
                modified.append(relative)
        if modified or missing:
            problems = []
            if modified:
                problems.append(f"modified: {', '.join(modified[:10])}")
            if missing:
                problems.append(f"missing: {', '.join(missing[:10])}")
            raise PackageError(
                f"The package at {str(self.path)!r} does not match its manifest ({'; '.join(problems)}), so it is "
                "not what was tested. Rebuild it with mii_azure.package(...) instead of editing it.",
                path=str(self.path),
                modified=modified,
                missing=missing,
            )

    def __repr__(self) -> str:
        return f"Package(name={self.name!r}, task={self.manifest.task!r}, path={str(self.path)!r})"


def worker_threads(plan: OptimizationPlan) -> int:
    """Request threads of each inference-server worker (one model copy): enough for its batcher to
    gather full batches from concurrent requests. The same on Azure ML and in the local harness."""
    return max(64, 2 * plan.max_batch_size)


def deployment_name(facts: ModelFacts) -> str:
    """A valid Azure ML endpoint name derived from the model (3-32 chars, a-z, 0-9, '-')."""
    base = re.sub(r"[^a-z0-9-]+", "-", facts.name.lower()).strip("-") or "model"
    if not base[0].isalpha():
        base = "m-" + base
    base = base[:32].rstrip("-")
    return base if len(base) >= 3 else f"{base}-mii"


def check_name(name: str) -> str:
    """``name`` if it is a valid deployment name, else ConfigError saying what is allowed."""
    if not _NAME.match(name):
        raise ConfigError(
            f"Deployment name {name!r} is not valid: use 3 to 32 lower-case letters, digits and '-', starting "
            "with a letter and not ending with '-' (Azure ML endpoint names follow the same rule).",
            name=name,
        )
    return name


def package(
    model: Union[str, "os.PathLike[str]", ModelFacts],
    *,
    output: Optional[Union[str, "os.PathLike[str]"]] = None,
    name: Optional[str] = None,
    task: Optional[str] = None,
    sku: Optional[str] = None,
    hardware: Optional[Hardware] = None,
    settings: Optional[ServingSettings] = None,
    overwrite: bool = False,
    **overrides: Any,
) -> Package:
    """Build a package for ``model``: plan it for ``sku`` (or ``hardware``, default this machine),
    snapshot the serving code, pin the environment, link the weights, write the Azure ML specs.

    ``output`` defaults to ``./<name>``; an existing non-empty folder is refused unless ``overwrite``.
    Plan ``overrides`` are the fields of :class:`mii_azure.planner.PlanOverrides`.
    """
    from .sku_choice import choose_sku

    facts = model if isinstance(model, ModelFacts) else resolve_model(model)
    task_name = resolve_task(facts, task or (settings.task if settings else None))
    name = check_name(name or deployment_name(facts))
    try:
        choices = PlanOverrides(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"Invalid plan override: {exc}", overrides=overrides) from None
    if sku:  # a deployable size: aliases pick the cheapest fit; unlisted or CUDA-incompatible sizes are refused
        plan = choose_sku(facts, sku, task=task_name, overrides=choices).plan
    else:
        plan = make_plan(facts, hardware or Hardware.local(), task=task_name, overrides=choices)
    settings = (settings or ServingSettings()).model_copy(update={"deployment_name": name, "task": task_name})
    destination = Path(output or name).expanduser().resolve()
    _prepare_destination(destination, overwrite=overwrite)

    staging = Path(tempfile.mkdtemp(prefix=".mii-package-", dir=destination.parent))
    try:
        files = _write_code(staging)
        link_source = _link_model(staging, facts)
        conda_file = "environment/conda.yml"
        gpu = plan.hardware.kind == "gpu"
        _copy_data_file("serving-gpu.yml" if gpu else "serving-cpu.yml", staging / conda_file)
        # The serving image's Docker build context: CUDA matching torch's, DeepSpeed's ops built for
        # the size's GPUs at image build (see mii_azure.serving_image).
        arches = [compute_capability(plan.hardware.gpu_model or "")] if gpu else []
        image = write_build_context(staging / "environment", gpu=gpu, cuda_arch_list=arches)
        manifest = PackageManifest(
            schema_version=SCHEMA_VERSION,
            name=name,
            task=task_name,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            mii_azure_version=_own_version(),
            model=ModelLink(
                reference=facts.ref.reference,
                source=facts.ref.source,
                name=facts.ref.name,
                version=facts.ref.version,
                label=facts.ref.label,
                linked_from=link_source,
            ),
            plan=plan,
            settings=settings,
            image=image.base_image,
            conda_file=conda_file,
            versions=_pinned_versions(),
            files=files,
        )
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        _write_azureml_specs(staging, manifest)
        # Anchored (gitignore rules): an unanchored "azureml/" would also drop mii_azure/targets/azureml/.
        (staging / ".amlignore").write_text(f"/{MODEL_LINK}\n/azureml/\n__pycache__/\n", encoding="utf-8")
        if link_source is not None and not Path(link_source).is_dir():
            raise InvalidModelError(
                f"The model folder {link_source!r} disappeared while the package was being written; nothing was "
                "written. Put the model back (or point to its new place) and package again.",
                path=link_source,
            )
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PackagingError(
            f"Writing the package {str(destination)!r} failed: {exc.strerror or exc} ({type(exc).__name__}). "
            "Nothing was written: the folder is as it was before. Free some space (or fix the permission) and "
            "package again.",
            path=str(destination),
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Package(destination, manifest)


def _prepare_destination(destination: Path, *, overwrite: bool) -> None:
    if destination.exists() and any(destination.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{str(destination)!r} already exists and is not empty; pass overwrite=True (--overwrite) or "
                "choose another output folder.",
                path=str(destination),
            )
        if not (destination / MANIFEST_FILE).is_file():
            raise ConfigError(
                f"{str(destination)!r} is not a mii_azure package, so it is not overwritten; choose another "
                "output folder.",
                path=str(destination),
            )
    destination.parent.mkdir(parents=True, exist_ok=True)


def _write_code(staging: Path) -> dict[str, str]:
    """Copy score.py, launch.py and the runtime snapshot; their SHA-256 by relative path."""
    source = Path(__file__).resolve().parent
    shutil.copy2(source / "scoring" / "score.py", staging / "score.py")
    shutil.copy2(source / "scoring" / "launch.py", staging / "launch.py")
    shutil.copytree(source, staging / "mii_azure", ignore=shutil.ignore_patterns(*_SNAPSHOT_EXCLUDE, "*.pyc"))
    files = {}
    for file in sorted(staging.rglob("*")):
        if file.is_file():
            files[file.relative_to(staging).as_posix()] = _sha256(file)
    return files


def _link_model(staging: Path, facts: ModelFacts) -> Optional[str]:
    """Link the local (or cached) weights into the package; the linked folder, or None."""
    if facts.ref.source is ModelSource.AZUREML or not facts.path:
        return None
    target = Path(facts.path).resolve()
    if not target.is_dir():
        raise InvalidModelError(f"Model folder {str(target)!r} is gone; cannot link it.", path=str(target))
    try:
        (staging / MODEL_LINK).symlink_to(target, target_is_directory=True)
    except OSError as exc:  # Windows without symlink rights, some network shares
        logger.info("Could not link %s into the package (%s); the manifest references it instead.", target, exc)
    return str(target)


def _copy_data_file(name: str, destination: Path) -> None:
    from importlib import resources

    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(resources.files("mii_azure").joinpath(f"data/{name}").read_text(encoding="utf-8"), encoding="utf-8")


def _write_azureml_specs(staging: Path, manifest: PackageManifest) -> None:
    """endpoint.yml and deployment.yml in the Azure ML CLI v2 schemas, under the package's own name
    (a deployment writes them again under the names it is given)."""
    from .azureml_specs import AzureNames, deployment_spec, write_specs

    spec = deployment_spec(manifest, AzureNames(manifest.name))
    write_specs(staging, manifest, spec)


def _pinned_versions() -> dict[str, str]:
    versions = {}
    for name in PINNED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _own_version() -> str:
    from . import __version__

    return __version__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
