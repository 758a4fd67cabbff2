"""Start, watch and stop one inference server process on loopback.

The process runs the real ``azureml-inference-server-http`` with a scoring script through the
standalone launcher beside it (``mii_azure/scoring/launch.py``); its output goes to a log file. Start-up failures are reported
with the process's own last log lines instead of a hang. With several workers (one model copy
each), it is ready once every copy has written its ready marker in the server's replica folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Optional

from ..errors import ConfigError, ModelLoadError
from ..runtime.ports import LOOPBACK, free_port, port_is_free
from ..runtime.replicas import READY_SUFFIX, REPLICA_DIR_ENV

__all__ = ["InferenceServerProcess", "free_port", "port_is_free", "LOOPBACK"]

# "package.module.SomeError: message", as the last line of a logged traceback.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*: ")


class InferenceServerProcess:
    """One ``azureml-inference-server-http`` process serving a model folder on loopback."""

    def __init__(
        self,
        model_dir: Path,
        *,
        log_path: Path,
        port: Optional[int] = None,
        host: str = LOOPBACK,
        entry_script: Optional[Path] = None,
        environment: Optional[Mapping[str, str]] = None,
        threads: int = 8,
        workers: int = 1,
        replica_dir: Optional[Path] = None,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers={workers}: the server needs at least one worker.", workers=workers)
        self.model_dir = Path(model_dir)
        self.host = host
        self.log_path = Path(log_path)
        self.entry_script = entry_script
        self.environment = dict(environment or {})
        self.threads = threads
        self.workers = workers
        self.replica_dir = Path(replica_dir) if replica_dir else self.log_path.with_name(f"{self.log_path.stem}-replicas")
        if port is not None and not port_is_free(port, host):
            raise ConfigError(
                f"Port {port} on {host} is already in use. Pick another port, or leave port=None to use a free one.",
                port=port,
                host=host,
            )
        self.port = port if port is not None else free_port(host)
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the server."""
        return f"http://{self.host}:{self.port}"

    @property
    def scoring_uri(self) -> str:
        """The ``/score`` URL, the same contract as an Azure ML endpoint."""
        return f"{self.base_url}/score"

    def command(self) -> list[str]:
        """The launcher's command line: the launcher beside the entry script (a package's), else this
        copy's, with the entry script, model folder, address, threads and workers."""
        from ..runtime.http_server import entry_script_path, launcher_path

        entry_script = Path(self.entry_script or entry_script_path())
        sibling_launcher = entry_script.parent / "launch.py"
        return [
            sys.executable,
            str(sibling_launcher if sibling_launcher.is_file() else launcher_path()),
            "--entry_script",
            str(entry_script),
            "--model_dir",
            str(self.model_dir),
            "--port",
            str(self.port),
            "--host",
            self.host,
            "--threads",
            str(self.threads),
            "--worker_count",
            str(self.workers),
        ]

    def start(self) -> "InferenceServerProcess":
        """Launch the process (returns at once; see :meth:`wait_ready`)."""
        command = self.command()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.environment}
        if self.workers > 1:
            # A fresh folder: no slot or ready marker of an earlier server counts for this one.
            if self.replica_dir.exists():
                shutil.rmtree(self.replica_dir)
            self.replica_dir.mkdir(parents=True)
            env[REPLICA_DIR_ENV] = str(self.replica_dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return self

    def process_handle(self) -> "subprocess.Popen[bytes]":
        """The running process (ConfigError if :meth:`start` was not called)."""
        if self.process is None:
            raise ConfigError("The inference server was not started; call start() first.")
        return self.process

    def wait_ready(self, timeout_s: float = 300.0, progress: Optional[Callable[[str], None]] = None) -> None:
        """Block until the server answers its liveness route (after the model loaded and answered once)
        and, with several workers, every model copy has marked itself ready.

        Raises ModelLoadError with the log tail if the process exits first or the timeout passes.
        """
        deadline = time.monotonic() + timeout_s
        shown = 0
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ModelLoadError(
                    f"The inference server for {str(self.model_dir)!r} exited during start-up (exit code {code}): "
                    f"{self.failure_cause()}\nLast log lines:\n{self.log_tail(30)}",
                    exit_code=code,
                    log_path=str(self.log_path),
                )
            if progress is not None:
                shown = self._report_progress(progress, shown)
            if self.is_live() and (self.workers == 1 or len(self.ready_replicas()) == self.workers):
                return
            time.sleep(0.2)
        tail = self.log_tail(30)
        ready = self.ready_replicas()
        self.stop()
        copies = f" ({len(ready)} of its {self.workers} model copies were ready)" if self.workers > 1 else ""
        raise ModelLoadError(
            f"The inference server for {str(self.model_dir)!r} was not ready after {timeout_s:g} s{copies} and was "
            f"stopped. Last log lines:\n{tail}",
            log_path=str(self.log_path),
            ready_replicas=ready,
            replicas=self.workers,
        )

    def ready_replicas(self) -> list[int]:
        """The model copies (replica slots) that marked themselves ready; [0] for a one-worker server once live."""
        if self.workers == 1:
            return [0] if self.is_live() else []
        try:
            names = [path.name for path in self.replica_dir.iterdir()]
        except OSError:
            return []
        return sorted(
            int(name[len("slot-") : -len(READY_SUFFIX)])
            for name in names
            if name.startswith("slot-") and name.endswith(READY_SUFFIX) and name[len("slot-") : -len(READY_SUFFIX)].isdigit()
        )

    def is_live(self) -> bool:
        """Whether the liveness route answers 200."""
        try:
            with urllib.request.urlopen(self.base_url + "/", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 30.0) -> Optional[int]:
        """SIGTERM the server (it finishes in-flight requests), SIGKILL it after ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def log_tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines the server wrote."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure_cause(self) -> str:
        """The last exception line the server logged (the cause of a failed start), or ''."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        causes = [line for line in lines if _EXCEPTION_LINE.match(line)]
        return causes[-1] if causes else ""

    def _report_progress(self, progress: Callable[[str], None], shown: int) -> int:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return shown
        for line in lines[shown:]:
            if "mii_azure" in line:
                progress(line)
        return len(lines)

    def __enter__(self) -> "InferenceServerProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
