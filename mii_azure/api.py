"""The top-level verbs: deploy a model, find running deployments, the DeepSpeed-MII query handle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .config import ServingSettings
from .deployment import Deployment
from .errors import ConfigError
from .models import resolve_model
from .packaging import MANIFEST_FILE, Package, check_name, deployment_name, package
from .targets.local import LocalTarget

__all__ = ["deploy", "get_deployment", "list_deployments", "mii_query_handle"]

ModelLike = Union[str, "os.PathLike[str]", Package]


def deploy(
    model: ModelLike,
    *,
    local: bool = False,
    name: Optional[str] = None,
    task: Optional[str] = None,
    sku: Optional[str] = None,
    port: Optional[int] = None,
    grpc_port: Optional[int] = None,
    wait: bool = True,
    progress: Union[bool, Callable[[str], None]] = False,
    settings: Optional[ServingSettings] = None,
    **overrides: Any,
) -> Deployment:
    """Deploy ``model`` (a model reference, a package folder or a :class:`Package`).

    With ``local=True`` it runs on this machine through the same package, scoring script and
    inference server that Azure ML runs, on 127.0.0.1 (HTTP ``/score`` and OIP-v2 gRPC). Plan
    ``overrides`` (dtype, max_batch_size, ...) go to the planner. ``progress=True`` prints start-up
    progress (or pass a callable taking one line).
    """
    if not local:
        raise ConfigError(
            "Deploying to Azure ML managed online endpoints is not available in this version yet; use "
            "deploy(model, local=True), or deploy the package's azureml/*.yml with `az ml`.",
            conflict="local",
        )
    target = LocalTarget()
    choices = {"name": name, "task": task, "sku": sku, "settings": settings, **overrides}
    bundle = _as_package(target, model, choices)
    report = print if progress is True else (progress or None)
    return target.deploy(bundle, port=port, grpc_port=grpc_port, wait=wait, progress=report)


def get_deployment(name: str) -> Deployment:
    """The running local deployment called ``name`` (works from any process)."""
    return LocalTarget().get(name)


def list_deployments() -> list[Deployment]:
    """Every running local deployment."""
    return LocalTarget().list()


def mii_query_handle(name: str) -> Deployment:
    """DeepSpeed-MII compatibility: ``mii_query_handle(name).query({"query": ...}, **kwargs)``."""
    return get_deployment(name)


def _as_package(target: LocalTarget, model: ModelLike, choices: dict[str, Any]) -> Package:
    """The package to deploy: the one given (``choices`` must leave it as built), or one built for
    ``model`` with ``choices`` (name, task, sku, settings, plan overrides) under the target's home."""
    if isinstance(model, Package) or (Path(os.fspath(model)).expanduser() / MANIFEST_FILE).is_file():
        bundle = model if isinstance(model, Package) else Package.load(Path(os.fspath(model)).expanduser())
        changed = sorted(key for key, value in choices.items() if value is not None and not (key == "name" and value == bundle.name))
        if changed:
            raise ConfigError(
                f"A package is deployed as it was built; {', '.join(changed)} cannot be changed here. Rebuild it "
                "with mii_azure.package(...) to change them.",
                conflict=changed[0],
            )
        return bundle
    facts = resolve_model(model)
    name = check_name(choices.pop("name") or deployment_name(facts))
    target.ensure_free(name)  # never rebuild the package under a running deployment
    return package(facts, output=target.home / "packages" / name, name=name, overwrite=True, **choices)
