"""The mii-azure command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mii_azure.cli import main


def test_info_prints_the_facts(model_dirs, capsys):
    assert main(["info", str(model_dirs["gpt2"])]) == 0
    out = capsys.readouterr().out
    assert "GPT2LMHeadModel" in out and "text-generation" in out and "safetensors headers" in out


def test_info_json_round_trips(model_dirs, capsys):
    assert main(["info", str(model_dirs["t5"]), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["default_task"] == "text2text-generation" and facts["is_encoder_decoder"] is True


def test_errors_are_one_line_and_exit_1(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No model folder at") and "Traceback" not in err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.serving
@pytest.mark.harness
def test_demo_serves_queries_and_stops(model_dirs):
    """The README's main job, on the real MiniLM model: deploy locally, query, print answer and plan, delete."""
    result = subprocess.run(
        [sys.executable, "-m", "mii_azure.cli", "demo"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert '"task": "feature-extraction"' in result.stdout
    similar, unrelated = [float(line.rsplit("=", 1)[1]) for line in result.stdout.splitlines() if line.startswith("cosine(")]
    assert similar > unrelated
    assert "Deployment deleted." in result.stdout
    assert "dtype=float32" in result.stdout and "why:" in result.stdout  # the plan is printed
