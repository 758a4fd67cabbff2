"""The inference-server launcher (mii_azure/scoring/launch.py) as the serving image runs it on Azure ML:
``--host 0.0.0.0 --port 5001`` only, the rest from the variables Azure ML and the deployment set.

Each case runs the launcher in its own process up to the point where the real inference server would
start gunicorn (``amlserver_linux.run`` is replaced by a probe that prints what it was given), so the
server's own argument and environment handling is what is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.serving

LAUNCHER = Path(__file__).resolve().parents[1] / "mii_azure" / "scoring" / "launch.py"

_PROBE = """
import json, os, runpy, sys
from azureml_inference_server_http import amlserver_linux

def run(host, port, worker_count, health_port=None):
    print("PROBE " + json.dumps({
        "host": host, "port": port, "workers": worker_count,
        "entry_script": os.environ.get("AZUREML_ENTRY_SCRIPT"), "model_dir": os.environ.get("AZUREML_MODEL_DIR"),
        "gunicorn": os.environ.get("GUNICORN_CMD_ARGS"),
    }))

amlserver_linux.run = run
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

_AZURE_VARIABLES = ("AML_APP_ROOT", "AZUREML_ENTRY_SCRIPT", "AZUREML_MODEL_DIR", "WORKER_COUNT", "GUNICORN_CMD_ARGS")


def _launch(tmp_path: Path, *arguments: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in _AZURE_VARIABLES}
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-c", _PROBE, str(LAUNCHER), *arguments],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def _probe(result: subprocess.CompletedProcess[str]) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and lines, result.stdout + result.stderr
    return json.loads(lines[-1][len("PROBE "):])


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A code folder as Azure ML mounts it (the scoring script at its top) and a model folder."""
    code = tmp_path / "var" / "azureml-app" / "pkg"
    code.mkdir(parents=True)
    (code / "score.py").write_text("def init():\n    pass\n\ndef run(data):\n    return data\n")
    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    return code


def test_on_azure_everything_but_address_and_port_comes_from_the_environment(tmp_path, app):
    seen = _probe(_launch(
        tmp_path, "--host", "0.0.0.0", "--port", "5001",
        AML_APP_ROOT=str(app), AZUREML_ENTRY_SCRIPT="score.py", AZUREML_MODEL_DIR=str(tmp_path / "models" / "m" / "1"),
        WORKER_COUNT="3", GUNICORN_CMD_ARGS="--threads 64",
    ))
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 5001)
    assert seen["entry_script"] == str(app / "score.py")
    assert seen["model_dir"] == str(tmp_path / "models" / "m" / "1")
    assert seen["workers"] == 3, "the deployment's WORKER_COUNT (the plan's replicas) reaches gunicorn"
    assert seen["gunicorn"] == "--threads 64 --no-control-socket", "the deployment's threads are kept, not overridden"


def test_a_hub_model_has_no_model_folder_and_defaults_stay_as_before(tmp_path, app):
    seen = _probe(_launch(tmp_path, AML_APP_ROOT=str(app), AZUREML_ENTRY_SCRIPT="score.py"))
    assert (seen["host"], seen["port"], seen["workers"]) == ("127.0.0.1", 5001, 1), "loopback unless told otherwise"
    assert seen["model_dir"] is None
    assert seen["gunicorn"] == "--threads 8 --no-control-socket"


def test_explicit_arguments_win_as_the_local_harness_passes_them(tmp_path, app):
    seen = _probe(_launch(
        tmp_path, "--entry_script", str(app / "score.py"), "--model_dir", str(tmp_path / "models"), "--port", "6123",
        "--threads", "16", "--worker_count", "2",
        WORKER_COUNT="5", GUNICORN_CMD_ARGS="--threads 64",
    ))
    assert (seen["port"], seen["workers"], seen["model_dir"]) == (6123, 2, str(tmp_path / "models"))
    assert seen["gunicorn"].split()[-3:] == ["--threads", "16", "--no-control-socket"], "the last --threads wins in gunicorn"


def test_without_an_entry_script_it_says_what_to_set(tmp_path):
    result = _launch(tmp_path, "--host", "0.0.0.0")
    assert result.returncode == 2 and "AZUREML_ENTRY_SCRIPT" in result.stderr and "--entry_script" in result.stderr
