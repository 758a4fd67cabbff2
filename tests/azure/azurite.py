"""Start and stop the real Azurite blob emulator (npm ``azurite``) on loopback, over HTTPS.

``scripts/install.sh`` installs Azurite into ``.node/`` at the repository root. The emulator serves
the well-known development account ``devstoreaccount1`` both path-style
(``https://127.0.0.1:<port>/devstoreaccount1/...``, used by the fakes themselves) and production-style
(``https://devstoreaccount1.blob.core.<test domain>:<port>/...``, the URL azure-ai-ml builds from the
cloud's ``storage_endpoint``): Azurite takes the account name from the first label of a host name.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from certs import LoopbackPki

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

__all__ = ["ACCOUNT_NAME", "ACCOUNT_KEY", "Azurite", "AzuriteError", "azurite_binary"]

logger = logging.getLogger(__name__)

#: Azurite's well-known development account and key (published in Azurite's README; not a secret,
#: but never logged all the same).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_REPO_ROOT = Path(__file__).resolve().parents[2]


class AzuriteError(RuntimeError):
    """Azurite is not installed, or did not start."""


def azurite_binary(root: Path = _REPO_ROOT) -> Path:
    """The project-local ``azurite-blob`` launcher; AzuriteError (saying how to install it) if missing."""
    binary = root / ".node" / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise AzuriteError(
            f"Azurite is not installed at {binary}. Run `bash scripts/install.sh` (it runs "
            "`npm install --prefix .node azurite@3.35.0`; needs Node.js 20 and npm)."
        )
    if shutil.which("node") is None:
        raise AzuriteError("Azurite needs Node.js (`node` is not on PATH). Install Node.js 20 or newer.")
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Azurite:
    """One Azurite blob service on 127.0.0.1, storing in ``root`` and serving ``pki``'s certificate."""

    def __init__(self, root: Path, pki: LoopbackPki, *, binary: Optional[Path] = None) -> None:
        self.root = Path(root)
        self.pki = pki
        self.binary = binary or azurite_binary()
        self.port = 0
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log_path = self.root / "azurite.log"

    @property
    def path_style_url(self) -> str:
        """The account URL on the loopback address (``https://127.0.0.1:<port>/devstoreaccount1``)."""
        return f"https://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    def start(self, timeout_s: float = 60.0) -> "Azurite":
        """Launch Azurite and wait (at most ``timeout_s``) until it answers over HTTPS."""
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        command = [
            str(self.binary),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--location", str(data),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--loose",
            # No access log: SAS query strings (signatures) stay out of the log file.
            "--silent",
            "--cert", str(self.pki.cert_path),
            "--key", str(self.pki.key_path),
        ]
        logger.info("starting Azurite on 127.0.0.1:%d (log %s)", self.port, self.log_path)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        # Its own session survives the test process; this stops it even if no fixture teardown runs.
        atexit.register(self.stop)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise AzuriteError(f"Azurite exited during start-up. Log:\n{self.log_tail()}")
            try:
                # Any HTTP answer (an unsigned request gets 403) means it serves.
                requests.get(f"{self.path_style_url}?comp=list", verify=str(self.pki.ca_path), timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise AzuriteError(f"Azurite did not answer within {timeout_s:g} s. Log:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the emulator (SIGKILL after ``timeout_s``)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines Azurite wrote."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def service_client(self) -> "BlobServiceClient":
        """A path-style BlobServiceClient with the account key (no name resolution needed)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(
            self.path_style_url,
            credential={"account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY},
            connection_verify=str(self.pki.ca_path),
        )

    def create_containers(self, names: Iterable[str]) -> None:
        """Create each container unless it exists."""
        from azure.core.exceptions import ResourceExistsError

        client = self.service_client()
        for name in names:
            try:
                client.create_container(name)
            except ResourceExistsError:
                pass

    def clear(self, keep: Iterable[str] = ()) -> None:
        """Delete every container but those in ``keep``, and every blob in those."""
        client = self.service_client()
        kept = set(keep)
        for container in client.list_containers():
            if container.name not in kept:
                client.delete_container(container.name)
        for name in kept:
            container_client = client.get_container_client(name)
            blobs = [blob.name for blob in container_client.list_blobs()]
            for start in range(0, len(blobs), 200):
                container_client.delete_blobs(*blobs[start:start + 200])

    def blob_names(self, container: str, prefix: Optional[str] = None) -> list[str]:
        """Names of the blobs in ``container`` (under ``prefix``), sorted."""
        client = self.service_client().get_container_client(container)
        return sorted(blob.name for blob in client.list_blobs(name_starts_with=prefix))

    def download_blob(self, container: str, name: str, destination: Path) -> bool:
        """Download the one blob ``name`` to the file ``destination``; False if there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        blob = self.service_client().get_blob_client(container, name)
        try:
            downloader = blob.download_blob()
        except ResourceNotFoundError:
            return False
        destination.parent.mkdir(parents=True, exist_ok=True)
        with destination.open("wb") as handle:
            downloader.readinto(handle)
        return True

    def download_prefix(self, container: str, prefix: str, destination: Path) -> list[Path]:
        """Download every blob under ``prefix/`` into ``destination``, keeping the relative paths."""
        client = self.service_client().get_container_client(container)
        prefix = prefix.strip("/")
        start = f"{prefix}/" if prefix else ""
        written = []
        for blob in client.list_blobs(name_starts_with=start or None):
            relative = blob.name[len(start):]
            if not relative or relative.endswith("/"):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as handle:
                client.download_blob(blob.name).readinto(handle)
            written.append(target)
        return written
