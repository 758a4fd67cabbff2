"""How the fake runs a deployment whose environment has an ``inference_config`` (a custom container).

Azure ML then runs the image's own command and probes the routes the environment names; it does not
start its inference server itself. The fake cannot build the image, so it runs the command of the
environment's Dockerfile (its ``ENTRYPOINT``, read from the build context the SDK uploaded) with the
two changes a container on this machine needs, each made exactly where the command says it:

- the image's Python (``<prefix>/bin/python``) is this test environment's interpreter;
- the container port the routes name is published on a free loopback port (``--host 0.0.0.0
  --port <container port>`` becomes ``--host 127.0.0.1 --port <free port>``), as ``docker run -p
  127.0.0.1:<free>:<port>`` would.

Everything else (the shell, ``cd "$AML_APP_ROOT"``, the launcher found beside the entry script, the
variables Azure ML sets) runs as written. Readiness is the readiness route's path answering 200 (and
the liveness route's). A command the fake cannot adapt fails the deployment with what was expected.
"""

from __future__ import annotations

import json
import shlex
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

from mii_azure.targets.server_process import InferenceServerProcess

__all__ = ["ContainerRoutes", "ContainerProcess", "image_command", "FakeContainerError"]


class FakeContainerError(ValueError):
    """The fake cannot run this custom container; the message says what it expected."""


@dataclass(frozen=True)
class ContainerRoutes:
    """An environment's ``inferenceConfig``: the container port its routes name and their paths."""

    port: int
    liveness_path: str
    readiness_path: str
    scoring_path: str

    @classmethod
    def from_environment(cls, environment: dict[str, Any]) -> Optional["ContainerRoutes"]:
        """The routes of an environment version resource (None without an ``inferenceConfig``)."""
        config = (environment.get("properties") or {}).get("inferenceConfig")
        if not config:
            return None
        routes = {name: config.get(f"{name}Route") or {} for name in ("liveness", "readiness", "scoring")}
        missing = [name for name, route in routes.items() if not route.get("port") or not route.get("path")]
        if missing:
            raise FakeContainerError(f"inferenceConfig needs a port and a path for every route; {missing} lack one")
        ports = {int(route["port"]) for route in routes.values()}
        if len(ports) != 1:
            raise FakeContainerError(f"the fake publishes one container port; the routes name {sorted(ports)}")
        return cls(ports.pop(), routes["liveness"]["path"], routes["readiness"]["path"], routes["scoring"]["path"])


def image_command(dockerfile: str, *, python_prefix: str, container_port: int, host_port: int) -> list[str]:
    """The Dockerfile's ``ENTRYPOINT`` (exec form) as the fake runs it: ``python_prefix``'s Python is this
    interpreter, ``--host 0.0.0.0 --port <container_port>`` is ``--host 127.0.0.1 --port <host_port>``."""
    entrypoints = [line[len("ENTRYPOINT"):].strip() for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT ")]
    if not entrypoints:
        raise FakeContainerError("the environment's Dockerfile has no ENTRYPOINT: the fake runs only that command")
    try:
        command = json.loads(entrypoints[-1])
    except ValueError as exc:
        raise FakeContainerError(f"the ENTRYPOINT {entrypoints[-1]!r} is not in exec (JSON) form: {exc}") from exc
    changes = {
        f"{python_prefix.rstrip('/')}/bin/python": shlex.quote(sys.executable),
        f"--host 0.0.0.0 --port {container_port}": f"--host 127.0.0.1 --port {host_port}",
    }
    text = "\0".join(str(part) for part in command)
    for before, after in changes.items():
        if before not in text:
            raise FakeContainerError(f"the ENTRYPOINT {command!r} does not contain {before!r}, which the fake replaces")
        text = text.replace(before, after)
    return text.split("\0")


class ContainerProcess(InferenceServerProcess):
    """The inference server started by the image's command (:func:`image_command`), ready when its
    liveness and readiness routes answer 200."""

    def __init__(self, *args: Any, command: list[str], routes: ContainerRoutes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._command = list(command)
        self.routes = routes

    def command(self) -> list[str]:
        return list(self._command)

    def is_live(self) -> bool:
        """Whether both the liveness and the readiness route answer 200."""
        for path in (self.routes.liveness_path, self.routes.readiness_path):
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                    if response.status != 200:
                        return False
            except (urllib.error.URLError, OSError):
                return False
        return True
