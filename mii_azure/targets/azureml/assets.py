"""The Azure ML assets a deployment refers to: its model and its environment.

- A local model folder is registered as a custom model; the SDK uploads it (azure-ai-ml shows the
  upload's progress). Its content hash is kept as a tag, so a folder whose content is already
  registered under that name is reused, not uploaded again.
- ``azureml:name:version`` and ``azureml://registries/...`` references are used as they are
  (``@latest`` is resolved to its version, so the deployment records what it serves).
- A hub id is not registered: the scoring script fetches it at start-up (``MII_AZURE_HUB_MODEL``).
- The environment (the package's Docker build context, or its image + conda file) is registered
  under a version derived from its content, and reused while the content is the same. A build
  context carries an ``inference_config``: its image runs the package's launcher, and the endpoint
  forwards every path to it (see :mod:`mii_azure.serving_image`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from ...models import ModelSource
from ...packaging import Package
from ...serving_image import inference_config
from .boundary import azure_errors

__all__ = ["model_asset", "environment_asset", "serving_environment", "code_folder", "folder_digest", "CONTENT_TAG"]

logger = logging.getLogger(__name__)

CONTENT_TAG = "mii_azure_content_sha256"
_CHUNK = 1 << 20


def model_asset(ml_client: Any, bundle: Package, *, asset_name: str) -> Optional[str]:
    """The model id the deployment uses (``azureml:...``), registering local weights if needed; None
    for a hub model (fetched at start-up)."""
    model = bundle.manifest.model
    if model.source is ModelSource.HUB:
        return None
    if model.source is ModelSource.AZUREML:
        if model.reference.startswith("azureml://"):
            return model.reference
        if model.version:
            return f"azureml:{model.name}:{model.version}"
        with azure_errors(f"find the model {model.name}@{model.label}", model=model.name):
            found = ml_client.models.get(name=model.name, label=model.label or "latest")
        return f"azureml:{found.name}:{found.version}"
    folder = bundle.model_dir
    if folder is None:
        from ...errors import InvalidModelError

        raise InvalidModelError(
            f"The package {bundle.name!r} links no model folder (it was built from {model.reference!r}, which is "
            "gone). Rebuild the package from the model folder.",
            package=str(bundle.path),
        )
    folder = folder.resolve()
    digest = folder_digest(folder)
    existing = _registered_with_digest(ml_client, asset_name, digest)
    if existing is not None:
        logger.info("Model %s:%s already holds this content (%s); reusing it.", asset_name, existing, digest[:12])
        return f"azureml:{asset_name}:{existing}"
    from azure.ai.ml.entities import Model

    entity = Model(
        name=asset_name,
        version=_next_version(ml_client, asset_name),
        path=str(folder),
        type="custom_model",
        description=f"Weights of {model.reference}, registered by mii_azure.",
        tags={CONTENT_TAG: digest, "mii_azure_task": bundle.manifest.task},
    )
    with azure_errors(f"register the model {asset_name} (upload {folder})", model=asset_name):
        registered = ml_client.models.create_or_update(entity)
    return f"azureml:{registered.name}:{registered.version}"


def environment_asset(ml_client: Any, bundle: Package) -> str:
    """The environment id (``azureml:name:version``) for the package's serving environment."""
    entity = serving_environment(bundle)
    name, version = entity.name, entity.version
    try:
        with azure_errors(f"find the environment {name}:{version}"):
            ml_client.environments.get(name=name, version=version)
        logger.info("Environment %s:%s exists; reusing it.", name, version)
        return f"azureml:{name}:{version}"
    except Exception as exc:  # DeploymentNotFoundError for a 404; anything else is real
        from ...errors import DeploymentNotFoundError

        if not isinstance(exc, DeploymentNotFoundError):
            raise
    with azure_errors(f"register the environment {name}:{version}"):
        registered = ml_client.environments.create_or_update(entity)
    return f"azureml:{registered.name}:{registered.version}"


def serving_environment(bundle: Package) -> Any:
    """The package's serving environment as an azure-ai-ml ``Environment`` (not registered): its name and a
    version derived from its content, so the same content is one environment (and one image build)
    wherever it is used: an online deployment or a pipeline step."""
    from azure.ai.ml.entities import BuildContext, Environment

    folder = bundle.path / "environment"
    gpu = bundle.plan.hardware.kind == "gpu"
    name = "mii-azure-serving-gpu" if gpu else "mii-azure-serving-cpu"
    dockerfile = folder / "Dockerfile"
    if dockerfile.is_file():
        # The image runs the package's launcher itself (mii_azure.serving_image): the routes tell Azure ML
        # where it listens, and make the endpoint forward every path (/score, /v1/..., /metrics) to it.
        routes = inference_config()
        version = hashlib.sha256(f"{folder_digest(folder)}\n{json.dumps(routes, sort_keys=True)}".encode()).hexdigest()[:16]
        entity = Environment(
            name=name,
            version=version,
            build=BuildContext(path=str(folder)),
            inference_config=routes,
            description=_env_description(bundle),
        )
    else:
        # A package written before the image had a Dockerfile: Azure ML's prebuilt inference server runs
        # score.py, and the endpoint forwards /score only.
        logger.info("Package %s has no Dockerfile: its endpoint serves /score only (no /v1 routes).", bundle.name)
        conda = bundle.path / bundle.manifest.conda_file
        version = hashlib.sha256((bundle.manifest.image + "\n" + conda.read_text(encoding="utf-8")).encode()).hexdigest()[:16]
        entity = Environment(name=name, version=version, image=bundle.manifest.image, conda_file=str(conda), description=_env_description(bundle))
    return entity


@contextmanager
def code_folder(bundle: Package) -> Iterator[Path]:
    """The package's code as the deployment uploads it: everything but the model link and ``azureml/``,
    copied to a temporary folder. (azure-ai-ml follows a linked folder and matches ignore patterns
    against the resolved path, so no ``.amlignore`` entry keeps the weights out of an upload from the
    package itself.) The copy is byte-for-byte what the manifest hashes; azure-ai-ml skips the upload
    when the same content was uploaded before."""
    staging = Path(tempfile.mkdtemp(prefix="mii-azure-code-"))
    code = staging / bundle.path.name
    try:
        shutil.copytree(
            bundle.path,
            code,
            ignore=lambda folder, names: [n for n in names if Path(folder) == bundle.path and n in ("model", "azureml")]
            + [n for n in names if n == "__pycache__"],
        )
        yield code
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file's relative path, size and bytes (cached by path, size and mtime)."""
    cache = _DigestCache.load()
    digest = hashlib.sha256()
    for file in sorted(path for path in folder.rglob("*") if path.is_file()):
        relative = file.relative_to(folder).as_posix()
        if "__pycache__" in relative:
            continue
        digest.update(f"{relative}\0{file.stat().st_size}\0{cache.file_digest(file)}\n".encode())
    cache.save()
    return digest.hexdigest()


def _registered_with_digest(ml_client: Any, name: str, digest: str) -> Optional[str]:
    from ...errors import DeploymentNotFoundError

    try:
        with azure_errors(f"list the versions of model {name}", model=name):
            versions = list(ml_client.models.list(name=name))
    except DeploymentNotFoundError:
        return None
    for version in versions:
        if (getattr(version, "tags", None) or {}).get(CONTENT_TAG) == digest:
            return str(version.version)
    return None


def _next_version(ml_client: Any, name: str) -> str:
    from ...errors import DeploymentNotFoundError

    try:
        with azure_errors(f"list the versions of model {name}", model=name):
            numbers = [int(v.version) for v in ml_client.models.list(name=name) if str(v.version).isdigit()]
    except DeploymentNotFoundError:
        numbers = []
    return str(max(numbers, default=0) + 1)


def _env_description(bundle: Package) -> str:
    versions = bundle.manifest.versions
    return f"mii_azure serving environment (torch {versions.get('torch', '?')}, transformers {versions.get('transformers', '?')})."


class _DigestCache:
    """SHA-256 of files by (absolute path, size, mtime), under ``$MII_AZURE_HOME``: hashing a multi-GB
    model folder once is enough."""

    def __init__(self, path: Path, entries: dict[str, str]) -> None:
        self.path = path
        self.entries = entries
        self.changed = False

    @classmethod
    def load(cls) -> "_DigestCache":
        from ..local import state_home

        path = state_home() / "digests.json"
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    def file_digest(self, file: Path) -> str:
        stat = file.stat()
        key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self.entries:
            digest = hashlib.sha256()
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(block)
            self.entries[key] = digest.hexdigest()
            self.changed = True
        return self.entries[key]

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.entries), encoding="utf-8")
            temporary.replace(self.path)
        except OSError as exc:  # a cache only: hashing again next time is fine
            logger.debug("Could not save the digest cache %s: %s", self.path, exc)
