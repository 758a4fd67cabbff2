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
    """Killed with SIGKILL three times at random points (each run resuming the last), then finished:
    exactly one record per line, in order, answered as the harness answers the same requests."""
    source, target = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    bad = _write_input(source, 1000)
    command = [sys.executable, "-m", "mii_azure.cli", "batch-score", "--model", str(model_dirs["gpt2"]), "--input", str(source),
               "--output", str(target), "--parameters", '{"max_new_tokens": 3}', "--quiet"]
    rng = random.Random(5)
    written = 0
    for _ in range(3):
        stop_at = written + rng.randint(60, 220)  # complete lines this run writes before it is killed
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if target.exists() and target.read_bytes().count(b"\n") >= stop_at:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        complete = target.read_bytes().count(b"\n")
        assert written < complete < 1000, f"the run was killed part-way ({written} -> {complete} lines)"
        kept = [json.loads(line)["line"] for line in target.read_bytes().split(b"\n")[:complete]]
        assert kept == list(range(1, complete + 1)), "what a killed run leaves is every line once, in order"
        written = complete

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


def _table(count: int) -> dict[str, list]:
    """``count`` rows: an integer id, the text (row 3 empty, row 6 null), a second text column."""
    texts = [" ".join(WORDS[index % 7 : index % 7 + 3]) for index in range(count)]
    texts[2], texts[5] = "", None
    return {"id": list(range(1, count + 1)), "note": [f"note {index}" for index in range(count)], "text": texts}


def _check_table_records(records: list[dict], count: int, column: str) -> None:
    assert [record["line"] for record in records] == list(range(1, count + 1)), "row N of the table is line N"
    assert [record["line"] for record in records if "error" in record] == [3, 6]
    for number in (3, 6):
        error = records[number - 1]["error"]
        assert error["code"] == "bad_request" and f"row {number} in column {column!r} is empty" in error["message"]
    assert all(record["responses"][0][0]["label"] for record in records if "error" not in record)


def test_a_csv_input_scores_its_text_column_and_resumes_after_a_killed_run(model_dirs, tmp_path):
    pandas = pytest.importorskip("pandas")
    source, target = tmp_path / "rows.csv", tmp_path / "out.jsonl"
    table = _table(12)
    table["text"][7] = "a text, with a comma\nand a second line"  # quoted: one row over two lines of the file
    pandas.DataFrame(table).to_csv(source, index=False)
    first = mii_azure.batch_score(model_dirs["bert_classifier"], source, target, quiet=True)  # "text": by its name
    assert (first.lines, first.answered, first.errors) == (12, 10, 2)
    whole = _records(target)
    _check_table_records(whole, 12, "text")

    kept = target.read_text().splitlines(keepends=True)
    target.write_text("".join(kept[:5]) + kept[5][:9])  # killed while writing row 6
    again = mii_azure.batch_score(model_dirs["bert_classifier"], source, target, quiet=True)
    assert (again.skipped, again.answered + again.errors) == (5, 7)
    assert [{**r, "timing": None} for r in _records(target)] == [{**r, "timing": None} for r in whole], "nothing lost or doubled"

    with pytest.raises(mii_azure.ConfigError, match="no column 'body'; its columns are 'id', 'note', 'text'"):
        mii_azure.batch_score(model_dirs["bert_classifier"], source, target, column="body", quiet=True)
    pandas.DataFrame({"id": [1], "a": ["x"], "b": ["y"]}).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(mii_azure.ConfigError, match=r"Its columns are 'id', 'a', 'b' \(its text columns are 'a', 'b'\); pass one as column="):
        mii_azure.batch_score(model_dirs["bert_classifier"], tmp_path / "two.csv", target, quiet=True)
    (tmp_path / "in.jsonl").write_text('"x"\n')
    with pytest.raises(mii_azure.ConfigError, match="names a column of a CSV or Parquet table"):
        mii_azure.batch_score(model_dirs["bert_classifier"], tmp_path / "in.jsonl", target, column="text", quiet=True)


def test_a_parquet_input_is_read_a_row_group_at_a_time_and_resumes_across_groups(model_dirs, tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    source, target = tmp_path / "rows.parquet", tmp_path / "out.jsonl"
    table = _table(11)
    table["body"] = table.pop("text")
    parquet.write_table(pyarrow.table(table), source, row_group_size=4)  # groups of rows 1-4, 5-8, 9-11
    with pytest.raises(mii_azure.ConfigError, match="its text columns are 'note', 'body'"):
        mii_azure.batch_score(model_dirs["bert_classifier"], source, target, quiet=True)  # two text columns, neither named text
    with pytest.raises(mii_azure.ConfigError, match="Column 'id' .* holds int64, not text"):
        mii_azure.batch_score(model_dirs["bert_classifier"], source, target, column="id", quiet=True)

    first = mii_azure.batch_score(model_dirs["bert_classifier"], source, target, column="body", quiet=True)
    assert (first.lines, first.answered, first.errors) == (11, 9, 2)
    whole = _records(target)
    _check_table_records(whole, 11, "body")
    target.write_text("".join(target.read_text().splitlines(keepends=True)[:6]))  # stopped inside the second group
    again = mii_azure.batch_score(model_dirs["bert_classifier"], source, target, column="body", quiet=True)
    assert (again.skipped, again.answered, again.errors) == (6, 5, 0)
    assert [{**r, "timing": None} for r in _records(target)] == [{**r, "timing": None} for r in whole]


def test_the_cli_takes_the_text_column_of_a_table(model_dirs, tmp_path, capsys):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    from mii_azure.cli import main

    source, target = tmp_path / "rows.parquet", tmp_path / "out.jsonl"
    parquet.write_table(pyarrow.table({"question": ["a cat sits", "a dog runs"], "source": ["x", "y"]}), source)
    common = ["batch-score", "--model", str(model_dirs["bert_classifier"]), "--input", str(source), "--output", str(target), "--quiet"]
    assert main([*common, "--column", "nope"]) == 1
    assert "no column 'nope'; its columns are 'question', 'source'" in capsys.readouterr().err
    assert main([*common, "--column", "question"]) == 0
    assert "2 answered, 0 errors" in capsys.readouterr().out
    assert [record["line"] for record in _records(target)] == [1, 2]


@pytest.mark.parametrize("suffix, module", [(".parquet", "pyarrow"), (".csv", "pandas")])
def test_a_missing_table_reader_names_the_install_command(tmp_path, monkeypatch, suffix, module):
    (tmp_path / f"rows{suffix}").write_text("text\nhello\n")
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(mii_azure.MissingDependencyError, match=r'needs .*install it with: pip install "mii-azure\[batch\]"'):
        mii_azure.batch_score(tmp_path, tmp_path / f"rows{suffix}", tmp_path / "out.jsonl", quiet=True)
    assert not (tmp_path / "out.jsonl").exists()
