"""Start-up of the real inference server: where init() finds the model, and how it fails."""

from __future__ import annotations

import shutil
import time

import pytest

from helpers import post_json
from mii_azure.errors import ModelLoadError
from mii_azure.targets.server_process import InferenceServerProcess

pytestmark = pytest.mark.serving


def _start(model_dir, tmp_path, **environment):
    return InferenceServerProcess(model_dir, log_path=tmp_path / "server.log", environment=environment).start()


@pytest.mark.parametrize(
    ("make_folder", "fragment"),
    [
        pytest.param(lambda root: root / "does-not-exist", "does not exist", id="missing"),
        pytest.param(lambda root: root, "it is empty", id="empty"),
        pytest.param(lambda root: (root / "config.json").write_text("{not json") and root, "not valid JSON", id="broken-config"),
        pytest.param(lambda root: (root / "config.json").write_text('{"hello": 1}') and root, "neither 'architectures'", id="not-a-model-config"),
    ],
)
def test_init_failure_names_the_folder_and_the_problem(tmp_path, make_folder, fragment):
    folder = tmp_path / "model"
    folder.mkdir()
    model_dir = make_folder(folder)
    server = _start(model_dir, tmp_path)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as failure:
        server.wait_ready(timeout_s=120)
    assert time.monotonic() - started < 60, "a bad model folder fails start-up within seconds, not at a timeout"
    assert failure.value.exit_code == 3
    assert fragment in failure.value.message
    assert str(model_dir) in failure.value.message


def test_model_one_level_down_as_azure_ml_mounts_it(tmp_path, model_dirs):
    mount = tmp_path / "azureml-models" / "tiny-classifier" / "1"
    shutil.copytree(model_dirs["bert_classifier"], mount / "bert_classifier")
    with _start(mount, tmp_path) as server:
        server.wait_ready(timeout_s=180)
        answer = post_json(server.scoring_uri, {"query": "a good day"})
    assert answer.status == 200, answer.body
    assert answer.body["task"] == "text-classification"
    assert answer.body["model"] == "bert_classifier"


def test_task_override_and_deployment_name_from_environment(tmp_path, model_dirs):
    with _start(
        model_dirs["bert_fill_mask"],
        tmp_path,
        MII_AZURE_TASK="feature-extraction",
        MII_AZURE_DEPLOYMENT_NAME="my-embedder",
    ) as server:
        server.wait_ready(timeout_s=180)
        answer = post_json(server.scoring_uri, {"query": ["a b", "c"]})
    assert answer.status == 200, answer.body
    assert answer.body["task"] == "feature-extraction"
    assert answer.body["model"] == "my-embedder"
    assert len(answer.body["responses"][0]["embedding"]) == 32


def test_task_that_does_not_fit_lists_the_tasks_that_would(tmp_path, model_dirs):
    server = _start(model_dirs["bert_classifier"], tmp_path, MII_AZURE_TASK="text-generation")
    with pytest.raises(ModelLoadError) as failure:
        server.wait_ready(timeout_s=120)
    assert "does not fit" in failure.value.message
    assert "text-classification, feature-extraction" in failure.value.message
