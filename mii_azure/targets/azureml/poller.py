"""DeploymentPoller: a deployment running in the background, in the manner of azure-ai-ml's ``begin_*``."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from ...deployment import Deployment
from ...errors import MiiAzureError

__all__ = ["DeploymentPoller"]


class DeploymentPoller:
    """Runs one deployment's stages on a background thread; ``result()`` waits for its handle.

    ``status()`` is the stage it is in (``"preflight"``, ``"model"``, ..., ``"succeeded"`` or
    ``"failed"``); a failure is raised by ``result()``, as azure-core's ``LROPoller`` does.
    """

    def __init__(self, run: Callable[[Callable[[str], None]], Deployment], *, name: str) -> None:
        self.name = name
        self._stage = "starting"
        self._handle: Optional[Deployment] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(run,), name=f"mii-azure-deploy-{name}", daemon=True)
        self._thread.start()

    def _run(self, run: Callable[[Callable[[str], None]], Deployment]) -> None:
        try:
            self._handle = run(self._track)
            self._stage = "succeeded"
        except BaseException as exc:  # handed to the caller of result()
            self._error = exc
            self._stage = "failed"

    def _track(self, line: str) -> None:
        if line.startswith("[") and "]" in line:
            self._stage = line[1 : line.index("]")]

    def status(self) -> str:
        """The stage the deployment is in, or ``"succeeded"`` / ``"failed"``."""
        return self._stage

    def done(self) -> bool:
        """Whether the deployment finished, either way."""
        return not self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait up to ``timeout`` seconds (None: until it finishes)."""
        self._thread.join(timeout)

    def result(self, timeout: Optional[float] = None) -> Deployment:
        """The deployment's handle once it is ready; raises what the deployment raised."""
        self.wait(timeout)
        if not self.done():
            raise MiiAzureError(
                f"Deployment {self.name} is still in stage {self._stage!r} after {timeout:g} s; call result() again "
                "to keep waiting.",
                stage=self._stage,
            )
        if self._error is not None:
            raise self._error
        if self._handle is None:
            raise MiiAzureError(f"Deployment {self.name} finished without a handle.", stage=self._stage)
        return self._handle

    def __repr__(self) -> str:
        return f"DeploymentPoller(name={self.name!r}, status={self._stage!r})"
