"""scoring/score.py in-process, as Azure ML calls it: init() once, run() with the raw request."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from werkzeug.test import EnvironBuilder

from mii_azure.runtime.http_server import entry_script_path

REPO_ENTRY_SCRIPT = Path(__file__).resolve().parents[1] / "scoring" / "score.py"

pytestmark = pytest.mark.serving


def _load_score_module():
    spec = importlib.util.spec_from_file_location("score_under_test", entry_script_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _request(body: bytes, method: str = "POST"):
    from flask import Request

    return Request(EnvironBuilder(method=method, data=body, content_type="application/json").get_environ())


def test_repository_entry_script_is_the_shipped_one():
    assert REPO_ENTRY_SCRIPT.resolve() == entry_script_path()


def test_run_before_init_is_503_with_retry_after():
    score = _load_score_module()
    response = score.run(_request(b'{"query": "x"}'))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert json.loads(response.get_data())["error"]["code"] == "unavailable"


def test_init_then_run(monkeypatch, model_dirs):
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_dirs["bert_classifier"]))
    monkeypatch.setenv("MII_AZURE_DEPLOYMENT_NAME", "in-process")
    score = _load_score_module()
    score.init()
    response = score.run(_request(b'{"query": ["good", "bad"], "parameters": {"top_k": 2}}'))
    assert response.status_code == 200
    body = json.loads(response.get_data())
    assert body["model"] == "in-process" and body["task"] == "text-classification"
    assert [len(entry) for entry in body["responses"]] == [2, 2]
    bad = score.run(_request(b'{"query": ["good"], "parameters": {"top_k": 9}}'))
    assert bad.status_code == 400 and "3 labels" in json.loads(bad.get_data())["error"]["message"]


def test_init_without_model_dir_says_how_to_fix(monkeypatch):
    from mii_azure.errors import ConfigError

    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    score = _load_score_module()
    with pytest.raises(ConfigError, match="--model_dir"):
        score.init()
