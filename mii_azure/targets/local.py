"""LocalTarget: run a package on this machine exactly as Azure ML would, on 127.0.0.1.

One serving process per deployment: the real azureml-inference-server-http running the package's
own score.py (HTTP ``/score``), with the OIP-v2 gRPC front started inside each worker around the
same engine. The server runs one worker per model copy (the plan's ``replicas`` when the package
was planned for this machine, else one); each worker claims its own GPUs (or cores) in the
deployment's replica folder, ``$MII_AZURE_HOME/replicas/<name>``, and the deployment is ready
once every copy is. Running deployments are recorded under ``$MII_AZURE_HOME`` (default
``~/.mii_azure``) so that another process (the CLI, a notebook) can find, query and delete them;
records of processes that died are cleaned up when read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict

from ..config import API_KEY_ENV
from ..deployment import Deployment
from ..errors import ConfigError, DeploymentNotFoundError
from ..packaging import Package, worker_threads
from .server_process import LOOPBACK, InferenceServerProcess, free_port, port_is_free

__all__ = ["LocalTarget", "DeploymentNotFoundError", "state_home", "STATE_HOME_ENV"]

STATE_HOME_ENV = "MII_AZURE_HOME"


class LocalRecord(BaseModel):
    """What is kept about a running local deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    pid: int
    host: str
    port: int
    grpc_port: int
    package: str
    log: str
    created_at: float


def state_home() -> Path:
    """Where local deployments are recorded (``$MII_AZURE_HOME`` or ``~/.mii_azure``)."""
    return Path(os.environ.get(STATE_HOME_ENV) or Path.home() / ".mii_azure").expanduser()


class LocalTarget:
    """Deploys packages as local serving processes and keeps track of them."""

    name = "local"

    def __init__(self, home: Optional[Path] = None) -> None:
        self.home = Path(home) if home else state_home()
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # --- deploy ------------------------------------------------------------------------------
    def deploy(
        self,
        bundle: Package,
        *,
        name: Optional[str] = None,
        port: Optional[int] = None,
        grpc_port: Optional[int] = None,
        api_key: Optional[str] = None,
        wait: bool = True,
        timeout_s: float = 600.0,
        progress: Optional[Callable[[str], None]] = None,
    ) -> Deployment:
        """Start serving ``bundle`` as ``name`` (default: the package's own name; responses report it as
        their ``model``); with ``wait``, return once it answered a sample input. With ``api_key`` every
        route but the health probe requires it; it reaches the server in its environment only, never a
        file, and the handle returned sends it."""
        from ..packaging import check_name

        bundle.verify()
        name = check_name(name or bundle.name)
        self.ensure_free(name)
        if bundle.model_dir is None:
            raise ConfigError(
                f"The package {name!r} links no local weights (its model is {bundle.manifest.model.reference!r}), "
                "so it cannot be served on this machine. Package a local folder or a cached hub model.",
                name=name,
            )
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ConfigError("api_key must be a non-empty string (or None for no key).", conflict="api_key")
        grpc_port = self._grpc_port(grpc_port, http_port=port)
        environment = {"MII_AZURE_GRPC_PORT": str(grpc_port), "MII_AZURE_DEPLOYMENT_NAME": name}
        if api_key is not None:
            environment[API_KEY_ENV] = api_key
        logs = self.home / "logs"
        server = InferenceServerProcess(
            bundle.model_dir,
            log_path=logs / f"{name}.log",
            port=port,
            host=LOOPBACK,
            entry_script=bundle.entry_script,
            environment=environment,
            threads=worker_threads(bundle.plan),
            workers=copies_served_here(bundle),
            replica_dir=self.home / "replicas" / name,
        )
        if server.port == grpc_port:
            raise ConfigError(f"port and grpc_port are both {grpc_port}; give them different values.", port=grpc_port)
        process = server.start().process_handle()
        record = LocalRecord(
            name=name,
            pid=process.pid,
            host=LOOPBACK,
            port=server.port,
            grpc_port=grpc_port,
            package=str(bundle.path),
            log=str(server.log_path),
            created_at=time.time(),
        )
        self._children[name] = process
        self._write(record)
        if wait:
            try:
                server.wait_ready(timeout_s=timeout_s, progress=progress)
            except BaseException:
                server.stop(timeout_s=10)
                self._forget(name)
                raise
        return self._handle(record, bundle, api_key=api_key)

    def ensure_free(self, name: str) -> None:
        """ConfigError if a local deployment called ``name`` is running."""
        if self._alive_record(name) is not None:
            raise ConfigError(
                f"A local deployment named {name!r} is already running. Delete it first "
                f"(mii_azure.get_deployment({name!r}).delete()) or pass another name=.",
                name=name,
            )

    # --- find --------------------------------------------------------------------------------
    def get(self, name: str, *, api_key: Optional[str] = None) -> Deployment:
        """The running deployment called ``name``; ``api_key``: the key it was started with, if any."""
        record = self._alive_record(name)
        if record is None:
            running = ", ".join(record.name for record in self._records()) or "none"
            raise DeploymentNotFoundError(
                f"No local deployment named {name!r} is running (running: {running}). Deploy it with "
                "mii_azure.deploy(model, local=True).",
                name=name,
            )
        return self._handle(record, Package.load(record.package), api_key=api_key)

    def list(self) -> list[Deployment]:
        """Every running local deployment (records of dead processes are removed)."""
        return [self._handle(record, Package.load(record.package)) for record in self._records()]

    # --- backend of the handle -------------------------------------------------------------
    def logs(self, name: str, lines: int = 50) -> str:
        """The last ``lines`` lines the deployment's server wrote."""
        record = self._read(name)
        if record is None:
            raise DeploymentNotFoundError(f"No local deployment named {name!r} is recorded.", name=name)
        try:
            text = Path(record.log).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def delete(self, name: str, timeout_s: float = 60.0) -> None:
        """SIGTERM the serving process (in-flight requests finish), wait for it, forget it."""
        record = self._read(name)
        if record is None:
            raise DeploymentNotFoundError(f"No local deployment named {name!r} is recorded.", name=name)
        if _alive(record.pid):
            try:
                os.killpg(record.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not self._wait_gone(name, record.pid, timeout_s):
                os.killpg(record.pid, signal.SIGKILL)
                self._wait_gone(name, record.pid, 10)
        self._forget(name)

    # --- internals ---------------------------------------------------------------------------
    def _handle(self, record: LocalRecord, bundle: Package, *, api_key: Optional[str] = None) -> Deployment:
        return Deployment(
            record.name,
            target=self.name,
            scoring_uri=f"http://{record.host}:{record.port}/score",
            grpc_target=f"{record.host}:{record.grpc_port}",
            plan=bundle.plan,
            backend=self,
            auth=_bearer(api_key) if api_key else None,
        )

    def _grpc_port(self, grpc_port: Optional[int], *, http_port: Optional[int]) -> int:
        if grpc_port is None:
            port = free_port()
            while port == http_port:
                port = free_port()
            return port
        if not port_is_free(grpc_port):
            raise ConfigError(
                f"Port {grpc_port} on {LOOPBACK} is already in use. Pick another grpc_port, or leave it None.",
                port=grpc_port,
            )
        return grpc_port

    def _wait_gone(self, name: str, pid: int, timeout_s: float) -> bool:
        child = self._children.get(name)
        if child is not None:
            try:
                child.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.1)
        return False

    @property
    def _records_dir(self) -> Path:
        return self.home / "deployments"

    def _write(self, record: LocalRecord) -> None:
        self._records_dir.mkdir(parents=True, exist_ok=True)
        path = self._records_dir / f"{record.name}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(record.model_dump_json(indent=2), encoding="utf-8")
        temporary.replace(path)

    def _read(self, name: str) -> Optional[LocalRecord]:
        path = self._records_dir / f"{name}.json"
        try:
            return LocalRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def _forget(self, name: str) -> None:
        self._children.pop(name, None)
        (self._records_dir / f"{name}.json").unlink(missing_ok=True)
        shutil.rmtree(self.home / "replicas" / name, ignore_errors=True)

    def _alive_record(self, name: str) -> Optional[LocalRecord]:
        record = self._read(name)
        if record is None:
            return None
        if not _alive(record.pid):
            self._forget(name)
            return None
        return record

    def _records(self) -> list[LocalRecord]:
        if not self._records_dir.is_dir():
            return []
        names = sorted(path.stem for path in self._records_dir.glob("*.json"))
        return [record for record in (self._alive_record(name) for name in names) if record is not None]


def copies_served_here(bundle: Package) -> int:
    """Model copies (server workers) this machine runs for ``bundle``: its plan's replicas when the plan
    was made for this machine; one when the model is re-planned here (a package for an Azure SKU)."""
    from ..runtime.service import plan_for_this_machine

    plan, _ = plan_for_this_machine(bundle.plan)
    return plan.replicas if plan is not None else 1


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _bearer(api_key: str) -> Callable[[], dict[str, str]]:
    """The handle's authentication for a local deployment started with ``api_key``."""

    def headers() -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    return headers
