"""Faults: a serving worker killed mid-request, and packaging interrupted by a full disk or a model
folder that goes away. Nothing hangs, the server heals by itself, and nothing half-written deploys."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

import mii_azure
from mii_azure.errors import InvalidModelError, PackagingError


def _post(url: str, payload: dict, timeout: float) -> int:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        answer.read()
        return answer.status


def _probe(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.serving
@pytest.mark.harness
def test_a_worker_killed_mid_request_fails_its_requests_and_the_server_heals(chat_harness):
    """SIGKILL the worker while 8 generations run: each caller gets an error within seconds (no hang);
    the probe fails while the inference server restarts the worker and the model reloads, then the
    server answers again by itself."""
    (worker,) = psutil.Process(chat_harness.process.pid).children()
    started = threading.Event()

    def generate(index: int) -> str:
        started.set()
        began = time.monotonic()
        try:
            _post(chat_harness.scoring_uri, {"query": f"long story {index}", "parameters": {"max_new_tokens": 120}}, timeout=60)
            return "answered"
        except (urllib.error.URLError, ConnectionError, OSError) as exc:  # reset, refused, or a 5xx
            assert time.monotonic() - began < 30, "a killed worker's callers must not hang"
            return type(exc).__name__

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(generate, index) for index in range(8)]
        started.wait(5)
        time.sleep(0.1)
        os.kill(worker.pid, signal.SIGKILL)
        outcomes = [future.result(timeout=60) for future in futures]
    assert any(outcome != "answered" for outcome in outcomes), outcomes

    probe = chat_harness.base_url + "/"
    saw_not_ready = not _probe(probe)
    deadline = time.monotonic() + 120
    while not _probe(probe, timeout=2.0):
        saw_not_ready = True
        assert time.monotonic() < deadline, "the server did not come back by itself"
        time.sleep(0.5)
    assert saw_not_ready, "the probe should fail while the model reloads"
    (replacement,) = psutil.Process(chat_harness.process.pid).children()
    assert replacement.pid != worker.pid
    assert _post(chat_harness.scoring_uri, {"query": "back again", "parameters": {"max_new_tokens": 2}}, timeout=60) == 200


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(".mii-package-"))


def test_a_full_disk_while_packaging_leaves_nothing_half_written(model_dirs, tmp_path, monkeypatch):
    import mii_azure.packaging as packaging

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packaging.shutil, "copytree", full_disk)
    with pytest.raises(PackagingError) as failed:
        mii_azure.package(model_dirs["bert_classifier"], output=tmp_path / "pkg")
    assert "No space left on device" in failed.value.message and "Nothing was written" in failed.value.message
    assert not (tmp_path / "pkg").exists() and _leftovers(tmp_path) == []


def test_a_failed_overwrite_keeps_the_previous_package(model_dirs, tmp_path, monkeypatch):
    import mii_azure.packaging as packaging

    first = mii_azure.package(model_dirs["bert_classifier"], output=tmp_path / "pkg")
    before = sorted(path.relative_to(first.path).as_posix() for path in first.path.rglob("*"))
    real_write = packaging.write_build_context

    def full_disk_midway(*args, **kwargs):
        real_write(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packaging, "write_build_context", full_disk_midway)
    with pytest.raises(PackagingError):
        mii_azure.package(model_dirs["bert_classifier"], output=tmp_path / "pkg", overwrite=True)
    after = sorted(path.relative_to(first.path).as_posix() for path in first.path.rglob("*"))
    assert after == before and _leftovers(tmp_path) == []
    mii_azure.Package.load(tmp_path / "pkg").verify()  # still whole


def test_a_model_folder_that_disappears_while_packaging_leaves_no_package(model_dirs, tmp_path, monkeypatch):
    import mii_azure.packaging as packaging

    model = shutil.copytree(model_dirs["bert_classifier"], tmp_path / "model")
    real_write = packaging.write_build_context

    def model_goes_away(*args, **kwargs):
        shutil.rmtree(model)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(packaging, "write_build_context", model_goes_away)
    with pytest.raises(InvalidModelError) as failed:
        mii_azure.package(model, output=tmp_path / "pkg")
    assert "disappeared while the package was being written" in failed.value.message
    assert not (tmp_path / "pkg").exists() and _leftovers(tmp_path) == []
