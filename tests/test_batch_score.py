"""Batch scoring on this machine: every input line answered once, in order, even across a killed run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import mii_azure
from helpers import post_json

pytestmark = pytest.mark.serving

WORDS = "the cat sat on a mat while dogs ran past quickly and birds sang songs of summer in green trees".split()
MALFORMED = ['{"query": "unclosed', "", "[1, 2]", '{"query": 5}', '{"query": "x", "parameters": {"nope": 1}}',
             '{"text": "no query"}', "null", '"   "', '{"query": []}', '{"query": "x", "parameters": {"max_new_tokens": -1}}']


def _write_input(path, count: int, bad_every: int = 100) -> list[int]:
    """``count`` lines, one malformed line per ``bad_every`` (their 1-based numbers are returned)."""
    rng = random.Random(0)
    lines, bad = [], []
    for index in range(count):
        if index % bad_every == bad_every // 2:
            lines.append(MALFORMED[len(bad) % len(MALFORMED)])
            bad.append(index + 1)
        elif index % 3 == 0:
            lines.append(json.dumps(" ".join(rng.choices(WORDS, k=rng.randint(1, 8)))))  # a bare string
        else:
            lines.append(json.dumps({"query": " ".join(rng.choices(WORDS, k=rng.randint(1, 8))), "parameters": {"max_new_tokens": rng.choice([2, 3])}}))
    path.write_text("\n".join(lines) + "\n")
    return bad


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.harness  # a process killed and the harness's answers: the same on every library version
def test_a_killed_run_resumes_and_every_line_is_answered_once_as_the_harness_answers_it(model_dirs, servers, tmp_path):
    source, target = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    bad = _write_input(source, 1000)
    command = [sys.executable, "-m", "mii_azure.cli", "batch-score", "--model", str(model_dirs["gpt2"]), "--input", str(source),
               "--output", str(target), "--parameters", '{"max_new_tokens": 3}', "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if target.exists() and target.read_bytes().count(b"\n") >= 150:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    written = target.read_bytes().count(b"\n")
    assert 150 <= written < 1000, f"the run was killed half-way ({written} lines written)"

    summary = mii_azure.batch_score(model_dirs["gpt2"], source, target, parameters={"max_new_tokens": 3}, quiet=True)
    assert summary.skipped == written and summary.answered + summary.errors == 1000 - written

    records = _records(target)
    assert [record["line"] for record in records] == list(range(1, 1001)), "one record per line, in order"
    errors = [record["line"] for record in records if "error" in record]
    assert errors == bad
    assert all(set(record["error"]) == {"code", "message"} and record["error"]["message"] for record in records if "error" in record)

    server = servers.get("gpt2")
    lines = source.read_text().splitlines()

    def harness(number: int) -> list:
        payload = json.loads(lines[number - 1])
        request = {"query": payload, "parameters": {"max_new_tokens": 3}} if isinstance(payload, str) else {
            **payload, "parameters": {"max_new_tokens": 3, **payload.get("parameters", {})}}
        answer = post_json(server.scoring_uri, request)
        assert answer.status == 200, answer.body
        return answer.body["responses"]

    answered = [record for record in records if "error" not in record]
    assert len(answered) == 990
    with ThreadPoolExecutor(max_workers=16) as pool:
        expected = list(pool.map(harness, [record["line"] for record in answered]))
    assert [record["responses"] for record in answered] == expected


def test_text_files_bad_lines_and_a_finished_run(model_dirs, tmp_path):
    source, target = tmp_path / "texts.txt", tmp_path / "out.jsonl"
    source.write_text("a cat sits\n\na dog runs\n")
    first = mii_azure.batch_score(model_dirs["minilm"], source, target, quiet=True)
    assert (first.answered, first.errors, first.skipped, first.lines) == (2, 1, 0, 3)
    records = _records(target)
    assert [record["line"] for record in records] == [1, 2, 3]
    assert len(records[0]["responses"][0]["embedding"]) == 384
    assert records[1]["error"]["code"] == "bad_request" and "empty" in records[1]["error"]["message"]

    again = mii_azure.batch_score(model_dirs["minilm"], source, target, quiet=True)
    assert (again.answered, again.errors, again.skipped) == (0, 0, 3), "a finished run is not scored again"
    afresh = mii_azure.batch_score(model_dirs["minilm"], source, target, resume=False, quiet=True)
    assert (afresh.answered, afresh.skipped) == (2, 0) and len(_records(target)) == 3

    with pytest.raises(mii_azure.ConfigError, match="only 1 lines"):
        (tmp_path / "short.txt").write_text("one\n")
        mii_azure.batch_score(model_dirs["minilm"], tmp_path / "short.txt", target, quiet=True)
    with pytest.raises(mii_azure.ConfigError, match="is not a file"):
        mii_azure.batch_score(model_dirs["minilm"], tmp_path / "missing.jsonl", target, quiet=True)


def test_a_partial_last_line_of_a_killed_run_is_cut_off(model_dirs, tmp_path):
    source, target = tmp_path / "texts.txt", tmp_path / "out.jsonl"
    source.write_text("a cat sits\na dog runs\n")
    mii_azure.batch_score(model_dirs["minilm"], source, target, quiet=True)
    whole = target.read_text().splitlines()
    target.write_text(whole[0] + "\n" + whole[1][: len(whole[1]) // 2])  # killed while writing line 2
    summary = mii_azure.batch_score(model_dirs["minilm"], source, target, quiet=True)
    assert (summary.skipped, summary.answered) == (1, 1)
    assert _records(target)[1]["line"] == 2 and len(_records(target)) == 2


def test_the_cli_says_what_is_wrong_with_its_parameters(tmp_path, capsys):
    from mii_azure.cli import main

    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    code = main(["batch-score", "--model", str(tmp_path), "--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--parameters", "{bad"])
    assert code == 1 and "--parameters is not valid JSON" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.jsonl")
