"""MLflow: a package logged as a pyfunc model answers in a fresh interpreter as the scoring service does;
plans, cost reports and benchmarks logged as runs read back as logged. Every store is a SQLite file
under tmp_path (MLflow's default kind of store since 3.7), never the user's."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

mlflow = pytest.importorskip("mlflow", reason="the MLflow wing needs the mlflow extra (pip install 'mii-azure[mlflow]')")

import mii_azure  # noqa: E402
import mii_azure.mlflow  # noqa: E402
from mii_azure.errors import ConfigError, MissingDependencyError  # noqa: E402
from mii_azure.mlflow import _tracking  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store (artifacts beside it) for this module's tests, in a temporary folder, for
    this process and its children. One: creating a store runs MLflow's database migrations (seconds)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow's default artifact root of a SQLite store is ./mlruns
        for key, value in {**QUIET, "MLFLOW_TRACKING_URI": uri}.items():
            patch.setenv(key, value)
        mlflow.set_tracking_uri(uri)
        yield uri
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


FRESH_INTERPRETER = textwrap.dedent(
    """
    import json, sys
    import mlflow, pandas
    uris = json.loads(sys.argv[1])
    gpt2, embedder, reader = (mlflow.pyfunc.load_model(uris[name]) for name in ("gpt2", "embedder", "reader"))
    params = {"max_new_tokens": 5}
    answers = {
        "gpt2_list": gpt2.predict(["DeepSpeed is", "a cat sat on"], params=params),
        "gpt2_frame": gpt2.predict(pandas.DataFrame({"prompt": ["DeepSpeed is", "a cat sat on"]}), params=params),
        "gpt2_stop": gpt2.predict("DeepSpeed is", params={"max_new_tokens": 5, "stop": ["x"]}),
        "gpt2_requests": gpt2.unwrap_python_model().predict(None, [{"query": "DeepSpeed is", "parameters": params}]),
        "embedder": embedder.predict(["a cat sits", "a dog runs"]),
        "reader": reader.predict([{"question": "Who wrote it?", "context": "Ada wrote it in London."}]),
        "mii_azure": sys.modules["mii_azure"].__file__,
    }
    with open(sys.argv[2], "w") as sink:
        json.dump(answers, sink)
    """
)


@pytest.mark.serving
def test_a_logged_package_answers_in_a_fresh_interpreter_as_the_scoring_service_does(model_dirs, store, tmp_path):
    from mii_azure.runtime.service import ScoringService

    embedder = mii_azure.package(model_dirs["sentence_transformer"], output=tmp_path / "embedder")
    reader = mii_azure.package(model_dirs["bert_question_answering"], output=tmp_path / "reader")
    infos = {
        "gpt2": mii_azure.mlflow.log_model(model_dirs["gpt2"], registered_model_name="tiny-gpt2"),  # packaged on the way
        "embedder": mii_azure.mlflow.log_model(embedder, name="embedder"),
        "reader": mii_azure.mlflow.log_model(str(reader.path)),
    }
    with pytest.raises(ConfigError, match="already planned"):
        mii_azure.mlflow.log_model(embedder, sku="NC24ads")
    answers_file, log_file = tmp_path / "answers.json", tmp_path / "fresh.log"
    with open(log_file, "w") as log:  # the fresh interpreter runs while this one loads the same packages
        fresh = subprocess.Popen(
            [sys.executable, "-c", FRESH_INTERPRETER, json.dumps({k: v.model_uri for k, v in infos.items()}), str(answers_file)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        )
    try:
        # The same packages through the deployment's own scoring service, in this process.
        folders = (_logged_package(infos["gpt2"]), embedder.path, reader.path)
        services = [ScoringService.from_environment({}, package_dir=folder) for folder in folders]
    finally:
        returncode = fresh.wait(timeout=300)
    assert returncode == 0, log_file.read_text()[-4000:]
    answers = json.loads(answers_file.read_text())
    gpt2_service, embedder_service, reader_service = services
    expected = gpt2_service.score({"query": ["DeepSpeed is", "a cat sat on"], "parameters": {"max_new_tokens": 5}})["responses"]
    assert answers["gpt2_list"] == expected and answers["gpt2_frame"] == expected
    assert answers["gpt2_requests"] == expected[:1]
    stopped = gpt2_service.score({"query": "DeepSpeed is", "parameters": {"max_new_tokens": 5, "stop": ["x"]}})["responses"]
    assert answers["gpt2_stop"] == stopped
    vectors = embedder_service.score({"query": ["a cat sits", "a dog runs"]})["responses"]
    for got, want in zip(answers["embedder"], vectors, strict=True):
        assert len(got["embedding"]) == len(want["embedding"])
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(got["embedding"], want["embedding"]))
    qa = reader_service.score(
        {"query": {"question": "Who wrote it?", "context": "Ada wrote it in London."}}
    )["responses"]
    ((got,), (want,)) = answers["reader"], qa
    assert (got["answer"], got["start"], got["end"]) == (want["answer"], want["start"], want["end"])
    assert math.isclose(got["score"], want["score"], abs_tol=1e-5)
    # The fresh interpreter ran the package's own code snapshot, logged with the model, not this checkout.
    assert "/artifacts/code/mii_azure/" in answers["mii_azure"] and str(REPO) not in answers["mii_azure"]

    # The MLmodel: signature, params with the task's defaults, the package's pinned requirements.
    model = mlflow.models.get_model_info(infos["gpt2"].model_uri)
    signature = model.signature.to_dict()
    assert json.loads(signature["inputs"]) == [{"type": "string", "required": True}]
    params = {spec["name"]: spec for spec in json.loads(signature["params"])}
    assert params["max_new_tokens"]["default"] == 32 and params["stop"]["shape"] == [-1]
    reader_inputs = json.loads(mlflow.models.get_model_info(infos["reader"].model_uri).signature.to_dict()["inputs"])
    assert [column["name"] for column in reader_inputs] == ["question", "context"]
    requirements = Path(mlflow.pyfunc.get_model_dependencies(infos["gpt2"].model_uri)).read_text().splitlines()
    packaged = (_logged_package(infos["gpt2"]) / "environment" / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert {line for line in packaged if line and not line.startswith("#")} <= set(requirements)
    assert f"mlflow-skinny=={mlflow.__version__}" in requirements and "torch==2.13.0+cpu" in requirements
    # The weights themselves travel with the model (the package's link is followed), and the run has the plan.
    weights = _logged_package(infos["gpt2"]) / "model" / "model.safetensors"
    assert weights.is_file() and not (weights.parent.is_symlink() or weights.is_symlink())
    run = mlflow.get_run(infos["gpt2"].run_id)
    assert run.data.params["sku"] == "local" and run.data.params["dtype"] == gpt2_service.engine.plan.dtype
    assert run.data.tags["mii_azure.kind"] == "model"
    assert mlflow.MlflowClient().get_registered_model("tiny-gpt2").name == "tiny-gpt2"
    for service in services:
        service.engine.close()


def _logged_package(info) -> Path:
    """The package directory logged with a model (local artifact store: no download, the logged files)."""
    return Path(mlflow.artifacts.download_artifacts(info.model_uri)) / "artifacts" / "package"


def test_plans_cost_reports_and_benchmarks_are_runs_with_their_params_and_metrics(store):
    client = mlflow.MlflowClient()
    plan = mii_azure.plan("bigscience/bloom-7b1", sku="NC24ads")
    run = mii_azure.mlflow.log_plan(plan, experiment="plans")
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["model"] == "bigscience/bloom-7b1" and params["sku"] == plan.hardware.name
    assert (params["dtype"], params["tensor_parallel"], params["kernel_inject"]) == (
        plan.dtype, str(plan.tensor_parallel), str(plan.kernel_inject),
    )
    assert params["quantization"] == "None"
    assert metrics["memory.weights_gb"] == pytest.approx(plan.memory.weights_gb)
    assert metrics["kv_cache_tokens"] == plan.kv_cache_tokens
    assert tags["reason.dtype"] == plan.reasons["dtype"]
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/plan.json") == plan.to_dict()
    assert mlflow.get_experiment(run.info.experiment_id).name == "plans"

    report = mii_azure.estimate_cost(
        "bigscience/bloom-7b1",
        mii_azure.Workload(prompt_tokens=512, new_tokens=128, requests_per_second=2, latency_slo_ms=80),
        skus=["NC24ads_A100_v4", "NC48ads_A100_v4", "ND96asr_v4"],
    )
    best = report.best
    assert best is not None
    with mlflow.start_run(run_name="comparison") as outer:  # nested under the caller's run
        parent = mii_azure.mlflow.log_cost_report(report)
    assert parent.data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert parent.data.params["sku"] == best.instance_type and parent.data.params["best.plan"] == best.plan_summary
    assert parent.data.params["workload.latency_slo_ms"] == "80.0"
    assert parent.data.metrics["usd_per_million_tokens"] == pytest.approx(best.usd_per_million_tokens)
    assert parent.data.metrics["latency_ms"] == pytest.approx(best.latency_ms)
    assert parent.data.metrics["tokens_per_s_per_instance"] == pytest.approx(best.tokens_per_s_per_instance)
    assert parent.data.tags["mii_azure.figures"] == "estimated"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(child.data.params["sku"] for child in children) == sorted(e.instance_type for e in report.estimates)
    for child in children:
        estimate = report[child.data.params["sku"]]
        assert child.data.params["status"] == estimate.status and child.data.params["model"] == "bigscience/bloom-7b1"
        if estimate.usd_per_million_tokens is not None:
            assert child.data.metrics["usd_per_million_tokens"] == pytest.approx(estimate.usd_per_million_tokens)
            assert child.data.params["tensor_parallel"] == str(estimate.plan.tensor_parallel)
    assert mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/cost_report.json")["best"] == best.instance_type

    results = REPO / "benchmarks" / "results" / "continuous_batching.json"
    data = json.loads(results.read_text())
    bench = mii_azure.mlflow.log_benchmark(results)
    assert bench.info.run_name == "continuous_batching" and bench.data.tags["mii_azure.figures"] == "measured"
    assert bench.data.params["benchmark"] == "continuous_batching"
    assert bench.data.params["hardware.torch"] == data["hardware"]["torch"]
    first = data["runs"]["continuous"][0]
    assert bench.data.metrics["runs.continuous.0.throughput_tokens_s"] == pytest.approx(first["throughput_tokens_s"])
    steps = client.get_metric_history(bench.info.run_id, "workload.max_new_tokens_from")
    logged = [(metric.step, metric.value) for metric in sorted(steps, key=lambda metric: metric.step)]
    assert logged == list(enumerate(map(float, data["workload"]["max_new_tokens_from"])))


def test_a_plan_is_made_from_a_model_reference_and_logged_to_the_tracking_uri_given(tmp_path, store):
    mlflow.MlflowClient().search_experiments()  # the store exists (migrated): copy it rather than migrate another
    shutil.copyfile(store.removeprefix("sqlite:///"), tmp_path / "other.db")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    run = mii_azure.mlflow.log_plan("bigscience/bloom-7b1", sku="ND96asr_v4", tracking_uri=other, run_name="bloom on ND96")
    assert mlflow.get_tracking_uri() == other  # as mlflow.set_tracking_uri does, so the run id resolves afterwards
    assert mlflow.MlflowClient(other).get_run(run.info.run_id).data.params["sku"] == "Standard_ND96asr_v4"
    try:
        with mlflow.start_run():
            with pytest.raises(ConfigError, match="active"):
                mii_azure.mlflow.log_plan(run.data.params["model"], sku="ND96asr_v4", tracking_uri=store)
    finally:
        mlflow.set_tracking_uri(store)


def test_without_mlflow_every_call_names_the_install_command(monkeypatch):
    code = "import sys, mii_azure, mii_azure.mlflow; print('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    for call in (
        lambda: mii_azure.mlflow.log_plan("bigscience/bloom-7b1", sku="ND96asr_v4"),
        lambda: mii_azure.mlflow.log_benchmark({"benchmark": "x"}),
        lambda: mii_azure.mlflow.resolve_tracking_uri(),
    ):
        with pytest.raises(MissingDependencyError) as caught:
            call()
        assert caught.value.install == 'pip install "mii-azure[mlflow]"'
        assert 'pip install "mii-azure[mlflow]"' in str(caught.value)


def test_tracking_stores_need_their_plugins_and_an_azure_ml_workspace_gives_its_uri(monkeypatch):
    monkeypatch.setattr(_tracking, "_importable", lambda name: name != "alembic")
    with pytest.raises(MissingDependencyError, match="alembic"):
        mii_azure.mlflow.resolve_tracking_uri("sqlite:///x.db")
    monkeypatch.undo()

    uri = (
        "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g"
        "/providers/Microsoft.MachineLearningServices/workspaces/w"
    )
    asked = []
    workspaces = SimpleNamespace(get=lambda name: asked.append(name) or SimpleNamespace(mlflow_tracking_uri=uri))
    ml_client = SimpleNamespace(workspace_name="w", workspaces=workspaces)
    monkeypatch.setattr(_tracking, "_has_azureml_plugin", lambda: False)
    with pytest.raises(MissingDependencyError) as caught:
        mii_azure.mlflow.resolve_tracking_uri(ml_client=ml_client)
    assert caught.value.install == "pip install azureml-mlflow" and asked == ["w"]
    monkeypatch.setattr(_tracking, "_has_azureml_plugin", lambda: True)
    assert mii_azure.mlflow.resolve_tracking_uri(ml_client=ml_client) == uri
    with pytest.raises(ConfigError, match="not both"):
        mii_azure.mlflow.resolve_tracking_uri("sqlite:///x.db", ml_client=ml_client)
    with pytest.raises(ConfigError, match="names no workspace"):
        mii_azure.mlflow.resolve_tracking_uri(ml_client=SimpleNamespace(workspace_name=None))
