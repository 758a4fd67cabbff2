"""Shared fixtures: tiny models built once per session, and real inference servers shared per model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

import model_factory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny model of the factory, built once, by name; plus the real MiniLM as "minilm"."""
    root = tmp_path_factory.mktemp("models")
    folders = {name: build(root / name) for name, build in model_factory.BUILDERS.items()}
    folders["minilm"] = model_factory.minilm_model_dir()
    return folders


class Servers:
    """Starts one real inference server per (model, settings) and keeps it for the session."""

    def __init__(self, root: Path, model_dirs: dict[str, Path]) -> None:
        self.root = root
        self.model_dirs = model_dirs
        self._running: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}

    def get(self, name: str, environment: Optional[dict[str, str]] = None) -> Any:
        from mii_azure.targets.server_process import InferenceServerProcess

        key = (name, tuple(sorted((environment or {}).items())))
        if key not in self._running:
            log = self.root / f"{name}-{len(self._running)}.log"
            server = InferenceServerProcess(self.model_dirs[name], log_path=log, environment=environment).start()
            server.wait_ready(timeout_s=180)
            self._running[key] = server
        return self._running[key]

    def stop_all(self) -> None:
        """Stop every server at once (each drains its in-flight requests and exits on its own)."""
        from concurrent.futures import ThreadPoolExecutor

        servers = list(self._running.values())
        if servers:
            with ThreadPoolExecutor(len(servers)) as pool:
                list(pool.map(lambda server: server.stop(), servers))


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Iterator[Servers]:
    pool = Servers(tmp_path_factory.mktemp("server-logs"), model_dirs)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session", autouse=True)
def isolated_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Local deployments of the tests are recorded in a temporary MII_AZURE_HOME, not the user's."""
    home = tmp_path_factory.mktemp("mii-azure-home")
    previous = os.environ.get("MII_AZURE_HOME")
    os.environ["MII_AZURE_HOME"] = str(home)
    yield home
    from mii_azure.targets.local import LocalTarget

    for deployment in LocalTarget(home).list():
        deployment.delete()
    if previous is None:
        os.environ.pop("MII_AZURE_HOME", None)
    else:
        os.environ["MII_AZURE_HOME"] = previous


@pytest.fixture(scope="session")
def chat_harness(servers: Servers) -> Any:
    """One real inference server (HTTP and gRPC) for the tiny chat model, shared by the fuzz, load and
    fault tests of the session (they check that it keeps serving)."""
    from mii_azure.runtime.ports import free_port

    return servers.get("gpt2_chat", {"MII_AZURE_DEPLOYMENT_NAME": "chat-harness", "MII_AZURE_GRPC_PORT": str(free_port())})
