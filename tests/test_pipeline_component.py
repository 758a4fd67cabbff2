"""The Azure ML pipeline step without a workspace: the components azure-ai-ml's own validation accepts and its
loaders read back from their YAML dump, the pipeline the issue's user writes, the ordering step on shuffled
shards, and the step's own code (split, the parallel entry script, order, one node) run here as a cluster
runs it, giving the records batch_score gives.

What a workspace adds (the PUTs, the uploads, the cluster check) is in tests/azure/test_pipeline_submission.py.
"""


import json
import random
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import mii_azure
from mii_azure.errors import ConfigError, MissingDependencyError
from mii_azure.pipeline import restore_order, split_into_shards
from mii_azure.pipeline.ordering import NOT_SCORED, input_files

SKU = "NC24ads"
INSTANCE_TYPE = "Standard_NC24ads_A100_v4"
PROMPTS = ["DeepSpeed is", "The cat", "Azure ML", "A pipeline", "Hello", "Tokens", "Batch", "Order"]


@pytest.fixture(scope="module")
def gpu_package(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Any:
    """The tiny GPT-2 packaged for an A100 size (planning needs no GPU)."""
    return mii_azure.package(model_dirs["gpt2"], output=tmp_path_factory.mktemp("pipeline") / "pkg", sku=SKU, name="tiny-gpt2",
                             max_batch_size=4)


def _jsonl(path: Path, prompts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(prompt) + "\n" for prompt in prompts), encoding="utf-8")
    return path


def _answers(records: list[dict[str, Any]]) -> list[Any]:
    """The records without their timing (the only part that differs between two runs)."""
    return [{key: value for key, value in record.items() if key != "timing"} for record in records]


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------ components


@pytest.mark.azure  # needs azure-ai-ml, which the oldest-stack serving run does not install
def test_one_node_component_is_a_pipeline_component_that_azure_ml_validates(gpu_package):
    component = mii_azure.pipeline.batch_score_component(gpu_package, parameters={"max_new_tokens": 4})
    assert component.type == "pipeline" and component._validate().passed
    assert set(component.inputs) == {"input", "parameters", "column"} and component.inputs["input"].type == "uri_file"
    assert component.inputs["parameters"].default == '{"max_new_tokens":4}'
    assert component.outputs["output"].type == "uri_folder"
    assert component.tags["mii_azure_sku"] == INSTANCE_TYPE and component.tags["mii_azure_instance_count"] == "1"
    (node,) = component.jobs.values()
    score = node.component
    assert score.type == "command" and score.tags["mii_azure_role"] == "score"
    assert score.command.startswith("python -m mii_azure.pipeline.step score --model ${{inputs.model}}")
    # The model input is the registered weights, named by their content; the environment is the package's build context.
    model = node.inputs["model"]._data
    assert model.type == "custom_model" and model.path == component.tags["mii_azure_model"]
    assert model.path.startswith("azureml:tiny-gpt2:")
    assert Path(score.environment.build.path) == gpu_package.path / "environment"
    # The code is the package without its weights (and with the parallel entry script).
    code = Path(score.code)
    assert (code / "mii_package.json").is_file() and (code / "mii_azure/pipeline/step.py").is_file()
    assert (code / "mii_batch_entry.py").is_file()
    assert not (code / "model").exists() and not (code / "azureml").exists()
    assert Path(mii_azure.pipeline.batch_score_component(gpu_package).jobs[node.name].component.code) == code, "same code, same folder"


@pytest.mark.azure
def test_scaled_out_component_splits_scores_in_parallel_and_restores_order(gpu_package, tmp_path):
    from azure.ai.ml import load_component

    component = mii_azure.pipeline.batch_score_component(
        gpu_package, instance_count=4, mini_batch_size=2, error_threshold=5, mini_batch_error_threshold=1, max_retries=3,
        mini_batch_timeout_s=900,
    )
    assert component._validate().passed
    assert set(component.jobs) == {"mii_batch_split", "mii_batch_score_parallel", "mii_batch_order"}
    parallel = component.jobs["mii_batch_score_parallel"]
    spec = parallel.component
    assert spec.type == "parallel" and spec.resources.instance_count == 4 and int(spec.mini_batch_size) == 2
    assert (spec.error_threshold, spec.mini_batch_error_threshold) == (5, 1)
    assert (spec.retry_settings.max_retries, spec.retry_settings.timeout) == (3, 900)
    assert spec.input_data == "${{inputs.input}}" and spec.task.entry_script == "mii_batch_entry.py"
    assert spec.task.append_row_to == "${{outputs.scores}}"
    assert "--model ${{inputs.model}} --input ${{inputs.input}}" in spec.task.program_arguments
    # 16 shards by default (4 per worker process), and the order step reads the shards the parallel step read.
    assert component.jobs["mii_batch_split"].inputs["shards"]._data == 16
    order = component.jobs["mii_batch_order"]
    assert "--keep-source" not in order.component.command
    assert str(order.inputs["input"]._data) == str(parallel.inputs["input"]._data)

    # azure-ai-ml's own YAML dump, read back by its own loader: the same steps and settings, valid again.
    path = tmp_path / "batch_score.yml"
    component.dump(path)
    loaded = load_component(source=path)
    assert loaded._validate().passed
    assert set(loaded.jobs) == set(component.jobs)
    again = loaded.jobs["mii_batch_score_parallel"].component
    assert (int(again.mini_batch_size), again.resources.instance_count, again.task.entry_script) == (2, 4, "mii_batch_entry.py")
    assert again.task.program_arguments == spec.task.program_arguments
    assert loaded.jobs["mii_batch_order"].component.command == order.component.command
    assert loaded.tags == component.tags

    # A folder of files is split by the parallel job itself; the order step keeps each record's source.
    folders = mii_azure.pipeline.batch_score_component(gpu_package, instance_count=2, input_type="uri_folder")
    assert folders.inputs["input"].type == "uri_folder" and "mii_batch_split" not in folders.jobs
    assert "--keep-source" in folders.jobs["mii_batch_order"].component.command


@pytest.mark.azure
def test_the_pipeline_of_the_issue_builds_validates_and_dumps(gpu_package, tmp_path):
    from azure.ai.ml import Input, dsl, load_job

    component = mii_azure.pipeline.batch_score_component(gpu_package, instance_count=4)

    @dsl.pipeline(default_compute="gpu-cluster")
    def nightly(prompts: Input(type="uri_file")):
        return {"scores": component(input=prompts).outputs.output}

    job = nightly(prompts=Input(type="uri_file", path="azureml:prompts:1"))
    assert job._validate().passed
    (node,) = job.jobs.values()
    assert node.component is component and mii_azure.pipeline.component.step_of(component).instance_count == 4
    job.dump(tmp_path / "nightly.yml")
    dumped = yaml.safe_load((tmp_path / "nightly.yml").read_text())
    assert dumped["settings"]["default_compute"] == "azureml:gpu-cluster"
    (step,) = dumped["jobs"].values()
    assert step["type"] == "pipeline" and step["inputs"]["input"]["path"] == "${{parent.inputs.prompts}}"
    assert set(step["component"]["jobs"]) == {"mii_batch_split", "mii_batch_score_parallel", "mii_batch_order"}
    # azure-ai-ml 1.35.2's load_job refuses a pipeline step given inline ("Not supporting non file for
    # component"): the component's own dump is what round-trips (the test above).
    with pytest.raises(Exception, match="non file for component"):
        load_job(tmp_path / "nightly.yml")


@pytest.mark.azure
def test_sizes_packages_and_inputs_it_refuses(gpu_package, model_dirs, tmp_path):
    with pytest.raises(ConfigError) as other_size:
        mii_azure.pipeline.batch_score_component(gpu_package, sku="Standard_NC4as_T4_v3")
    assert other_size.value.planned == INSTANCE_TYPE and "sku='Standard_NC24ads_A100_v4'" in other_size.value.message
    with pytest.raises(ConfigError, match="sku="):
        mii_azure.pipeline.batch_score_component(model_dirs["gpt2"])
    with pytest.raises(ConfigError, match="input_type"):
        mii_azure.pipeline.batch_score_component(gpu_package, input_type="mltable")
    with pytest.raises(ConfigError, match="instance_count"):
        mii_azure.pipeline.batch_score_component(gpu_package, instance_count=0)
    # A model given with sku= is packaged for it (as deploy does).
    built = mii_azure.pipeline.batch_score_component(model_dirs["gpt2"], sku="T4", output=tmp_path / "t4")
    assert built.tags["mii_azure_sku"] == "Standard_NC4as_T4_v3"


def test_a_missing_azure_ai_ml_names_the_install_command(gpu_package, monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.ai.ml", None)
    with pytest.raises(MissingDependencyError) as missing:
        mii_azure.pipeline.batch_score_component(gpu_package)
    assert missing.value.install == 'pip install "mii-azure[azure]"' and missing.value.install in missing.value.message


# ------------------------------------------------------------------------------------------ order


def test_restore_order_puts_shuffled_rows_back_and_marks_what_never_came_back(tmp_path):
    inputs = tmp_path / "inputs"
    _jsonl(inputs / "b.jsonl", ["b1", "b2", "b3"])
    _jsonl(inputs / "a/x.jsonl", ["x1", "x2"])
    _jsonl(inputs / "c.jsonl", [])
    _jsonl(inputs / "d.jsonl", ["d1", "d2"])
    (inputs / ".hidden").write_text("not an input\n")
    assert [relative for relative, _ in input_files(inputs)] == ["a/x.jsonl", "b.jsonl", "c.jsonl", "d.jsonl"]

    def row(source: str, line: int) -> str:
        return json.dumps({"source": source, "line": line, "responses": [f"{source}:{line}"], "task": "t", "model": "m"})

    # What a parallel job appends: each mini-batch's rows together, mini-batches in any order, a retried
    # mini-batch twice, an empty file's marker row, and no rows at all for d.jsonl's line 2 (a failed mini-batch).
    batches = [[row("b.jsonl", 1), row("b.jsonl", 2), row("b.jsonl", 3)], [row("a/x.jsonl", 1), row("a/x.jsonl", 2)],
               [json.dumps({"source": "c.jsonl", "lines": 0})], [row("d.jsonl", 1)], [row("b.jsonl", 2)],
               [row("gone.jsonl", 1)]]
    random.Random(7).shuffle(batches)
    scores = tmp_path / "scores"
    scores.mkdir()
    for index, name in enumerate(("parallel_run_step.txt", "parallel_run_step_1.txt")):
        (scores / name).write_text("".join(line + "\n" for batch in batches[index::2] for line in batch), encoding="utf-8")

    summary = restore_order(scores, inputs, tmp_path / "out" / "scores.jsonl")
    records = _read(tmp_path / "out" / "scores.jsonl")
    assert [(r["line"], r["source"], r["source_line"]) for r in records] == [
        (1, "a/x.jsonl", 1), (2, "a/x.jsonl", 2), (3, "b.jsonl", 1), (4, "b.jsonl", 2), (5, "b.jsonl", 3),
        (6, "d.jsonl", 1), (7, "d.jsonl", 2)]
    assert [r.get("responses") for r in records[:6]] == [["a/x.jsonl:1"], ["a/x.jsonl:2"], ["b.jsonl:1"], ["b.jsonl:2"],
                                                         ["b.jsonl:3"], ["d.jsonl:1"]]
    assert records[6]["error"]["code"] == NOT_SCORED and "line 2 of d.jsonl" in records[6]["error"]["message"]
    assert (summary.lines, summary.files, summary.missing, summary.errors, summary.duplicates, summary.unexpected) == (7, 4, 1, 1, 1, 1)

    # Without sources (the shards of one input file): only the running line number.
    plain = restore_order(scores, inputs, tmp_path / "plain.jsonl", keep_source=False)
    assert plain.lines == 7 and all(set(r) >= {"line"} and "source" not in r for r in _read(tmp_path / "plain.jsonl"))


def test_shards_are_contiguous_and_keep_every_byte(tmp_path):
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(b'"a"\n"b"\r\n\n"d"\n"e"')  # CRLF, an empty line and no newline at the end: 5 lines
    summary = split_into_shards(source, tmp_path / "shards", shards=3)
    assert summary.lines == 5 and [path.name for path in summary.shards] == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    assert b"".join(path.read_bytes() for path in summary.shards) == source.read_bytes()
    assert [len(path.read_bytes().splitlines()) for path in summary.shards] == [2, 2, 1]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert [p.name for p in split_into_shards(empty, tmp_path / "none", shards=4).shards] == ["part-00000.txt"]
    table = tmp_path / "rows.csv"
    table.write_text("text\nhello\n")
    with pytest.raises(ConfigError, match="uri_folder"):
        split_into_shards(table, tmp_path / "t", shards=2)


# ------------------------------------------------------------------------------------------ the step's code


def _substituted(command: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        command = command.replace("${{" + key + "}}", value)
    return command


@pytest.mark.serving
@pytest.mark.harness  # processes running the package's snapshot; the same on every library version
def test_the_steps_run_here_as_on_a_cluster_and_give_batch_scores_records(gpu_package, tmp_path):
    """Split, the parallel entry script (init once, shuffled mini-batches, rows appended in completion order),
    and order, with the components' own command lines; then the one-node step over a folder. Every record is
    the one batch_score writes for the same input line."""
    from mii_azure.pipeline import batch_score, step

    parameters = '{"max_new_tokens":3}'
    component = mii_azure.pipeline.batch_score_component(gpu_package, instance_count=2, shards=3, parameters=json.loads(parameters))
    code = Path(component.jobs["mii_batch_score_parallel"].component.task.code)
    prompts = _jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    expected = tmp_path / "expected.jsonl"
    batch_score(gpu_package.path, prompts, expected, parameters=json.loads(parameters), quiet=True)

    def run_command(node: str, values: dict[str, str]) -> None:
        argv = shlex.split(_substituted(component.jobs[node].component.command, values))
        assert argv[:3] == ["python", "-m", "mii_azure.pipeline.step"]
        assert step.main(argv[3:]) == 0

    shards, scores, out = tmp_path / "shards", tmp_path / "scores", tmp_path / "out"
    run_command("mii_batch_split", {"inputs.input": str(prompts), "outputs.shards": str(shards), "inputs.shards": "3"})
    # The parallel job, in a process of its own: the entry script from the code folder (which imports the
    # package's snapshot of mii_azure), its program arguments, mini-batches of one shard in shuffled order.
    arguments = _substituted(component.jobs["mii_batch_score_parallel"].component.task.program_arguments,
                             {"inputs.model": str(gpu_package.model_dir), "inputs.input": str(shards),
                              "inputs.parameters": parameters, "inputs.column": ""})
    files = sorted(str(path) for path in shards.iterdir())
    random.Random(3).shuffle(files)
    scores.mkdir()
    driver = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('entry', {str(code / 'mii_batch_entry.py')!r})\n"
        "entry = importlib.util.module_from_spec(spec); spec.loader.exec_module(entry)\n"
        f"sys.argv = ['driver'] + {shlex.split(arguments)!r}\n"
        "entry.init()\n"
        f"rows = [row for file in {files!r} for row in entry.run([file])]\n"
        "entry.shutdown()\n"
        "import mii_azure; print(json.dumps({'snapshot': mii_azure.__file__}))\n"
        f"open({str(scores / 'parallel_run_step.txt')!r}, 'w').write(''.join(r + '\\n' for r in rows))\n"
    )
    ran = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout.strip().splitlines()[-1])["snapshot"] == str(code / "mii_azure" / "__init__.py")
    rows = _read(scores / "parallel_run_step.txt")
    assert {row["source"] for row in rows} == {"part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"}
    assert [row["source"] for row in rows] != sorted(row["source"] for row in rows), "the rows came back out of order"
    run_command("mii_batch_order", {"inputs.scores": str(scores), "inputs.input": str(shards), "outputs.output": str(out),
                                    "inputs.column": ""})
    assert _answers(_read(out / "scores.jsonl")) == _answers(_read(expected))
    assert json.loads((out / "summary.json").read_text())["missing"] == 0

    # One node over a folder of files: records in input order, each with its source and line.
    folder = tmp_path / "folder"
    _jsonl(folder / "2.jsonl", PROMPTS[4:])
    _jsonl(folder / "1.jsonl", PROMPTS[:4])
    single = mii_azure.pipeline.batch_score_component(gpu_package, input_type="uri_folder", parameters=json.loads(parameters))
    (node,) = single.jobs.values()
    argv = shlex.split(_substituted(node.component.command, {
        "inputs.model": str(gpu_package.model_dir), "inputs.input": str(folder), "outputs.output": str(tmp_path / "one"),
        "inputs.parameters": parameters, "inputs.column": ""}))
    assert step.main(argv[3:] + ["--package", str(code)]) == 0
    records = _read(tmp_path / "one" / "scores.jsonl")
    assert [(r["source"], r["source_line"]) for r in records] == [("1.jsonl", n) for n in range(1, 5)] + [("2.jsonl", n) for n in range(1, 5)]
    assert _answers([{k: v for k, v in r.items() if k not in ("source", "source_line")} for r in records]) == _answers(_read(expected))
