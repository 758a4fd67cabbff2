"""Which Azure ML workspace to use, as an ``azure.ai.ml.MLClient``.

Three ways, in this order: an explicit ``ml_client``; subscription / resource group / workspace ids
(with the given credential, else ``DefaultAzureCredential``); or ``MLClient.from_config``, which
searches for ``config.json`` (or ``.azureml/config.json``) from the working directory upwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from ...errors import MissingDependencyError, WorkspaceNotConfiguredError

__all__ = ["Workspace", "connect", "require_azure", "AZURE_INSTALL"]

AZURE_INSTALL = 'pip install "mii-azure[azure]"'


def require_azure() -> None:
    """MissingDependencyError naming the install command unless azure-ai-ml and azure-identity import."""
    try:
        import azure.ai.ml  # noqa: F401
        import azure.identity  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"Deploying to Azure ML needs azure-ai-ml and azure-identity ({exc.name} is missing); install them "
            f"with: {AZURE_INSTALL}",
            install=AZURE_INSTALL,
        ) from None


class Workspace:
    """An MLClient and what the SDK needs to know about its workspace (its region, for the preflight)."""

    def __init__(self, ml_client: Any, credential: Any = None) -> None:
        self.ml_client = ml_client
        #: The credential mii_azure built the MLClient with (None for a given ml_client); see credential().
        self._credential = credential
        self._entity: Any = None

    def credential(self) -> Any:
        """The MLClient's credential, for the other Azure clients (Azure Monitor) of the same workspace.

        azure-ai-ml offers no public accessor: the one mii_azure built or was given is used when there is
        one, else the MLClient's own (``MLClient._credential``, set by its constructor in azure-ai-ml 1.35).
        """
        found = self._credential if self._credential is not None else getattr(self.ml_client, "_credential", None)
        if found is None:
            raise WorkspaceNotConfiguredError(
                "The ml_client given does not say which credential it uses, so Azure Monitor (autoscale) cannot be "
                "reached with it. Pass subscription_id=, resource_group=, workspace= and credential= instead of ml_client=.",
                conflict="ml_client",
            )
        return found

    @property
    def name(self) -> str:
        """The workspace name."""
        return str(self.ml_client.workspace_name)

    @property
    def entity(self) -> Any:
        """The workspace as azure-ai-ml describes it (read once)."""
        if self._entity is None:
            from .boundary import azure_errors

            with azure_errors("read the workspace", workspace=self.name):
                self._entity = self.ml_client.workspaces.get(self.name)
        return self._entity

    @property
    def location(self) -> str:
        """The workspace's Azure region."""
        return str(self.entity.location)

    @property
    def outbound_allowed_to(self) -> Optional[list[str]]:
        """None when deployments may reach the internet; else the destinations its managed network's
        outbound rules allow (a workspace isolated to approved outbound traffic)."""
        network = getattr(self.entity, "managed_network", None)
        mode = str(getattr(network, "isolation_mode", "") or "").lower()
        if mode != "allow_only_approved_outbound":
            return None
        return [str(getattr(rule, "destination", "") or "") for rule in (getattr(network, "outbound_rules", None) or [])]

    def __repr__(self) -> str:
        return (
            f"Workspace(subscription={self.ml_client.subscription_id!r}, "
            f"resource_group={self.ml_client.resource_group_name!r}, name={self.name!r})"
        )


def connect(
    ml_client: Any = None,
    *,
    subscription_id: Optional[str] = None,
    resource_group: Optional[str] = None,
    workspace: Optional[str] = None,
    credential: Any = None,
    config: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> Workspace:
    """The workspace to deploy to (see the module docstring for the order of the three ways)."""
    if ml_client is not None:
        if any(value is not None for value in (subscription_id, resource_group, workspace, config)):
            raise WorkspaceNotConfiguredError(
                "Pass either ml_client= or subscription_id/resource_group/workspace (or config=), not both.",
                conflict="ml_client",
            )
        return Workspace(ml_client)
    require_azure()
    from azure.ai.ml import MLClient

    ids = {"subscription_id": subscription_id, "resource_group": resource_group, "workspace": workspace}
    given = [key for key, value in ids.items() if value]
    if given:
        missing = [key for key in ids if key not in given]
        if missing:
            raise WorkspaceNotConfiguredError(
                f"{', '.join(given)} given but {', '.join(missing)} missing: an Azure ML workspace is named by all "
                "three (subscription_id=, resource_group=, workspace=).",
                missing=missing,
            )
        credential = credential or _default_credential()
        return Workspace(MLClient(credential, subscription_id, resource_group, workspace), credential)
    credential = credential or _default_credential()
    try:
        client = MLClient.from_config(credential, path=os.fspath(config) if config else None)
    except Exception as exc:  # azure-ai-ml raises its own ValidationException when no config.json is found
        where = str(Path(config).expanduser()) if config else f"{os.getcwd()} or any folder above it"
        raise WorkspaceNotConfiguredError(
            f"No Azure ML workspace is configured: no config.json in {where} ({_first_line(exc)}). Use one of:\n"
            "  1. mii_azure.deploy(model, sku=..., ml_client=MLClient(DefaultAzureCredential(), "
            "subscription_id, resource_group, workspace))\n"
            "  2. mii_azure.deploy(model, sku=..., subscription_id=..., resource_group=..., workspace=...)\n"
            "  3. a config.json from the workspace's portal page ('Download config.json') in this folder or above it "
            "(or config='path/to/config.json')",
            searched=where,
        ) from None
    return Workspace(client, credential)


def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
