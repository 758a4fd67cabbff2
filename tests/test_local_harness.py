"""deploy(model, local=True): the package served by the real inference server, HTTP and gRPC, on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from werkzeug.test import EnvironBuilder

import mii_azure
from mii_azure.errors import BadRequestError, ConfigError, InvalidModelError, ModelLoadError, ModelNotFoundError
from mii_azure.packaging import Package, PackageError
from mii_azure.targets.server_process import InferenceServerProcess
from mii_azure.targets.local import DeploymentNotFoundError, LocalTarget

from helpers import post_json

pytestmark = [pytest.mark.serving, pytest.mark.harness]

PARITY = {
    "gpt2": {"query": ["DeepSpeed is", "the cat sat on"], "parameters": {"max_new_tokens": 6}},
    "bert_fill_mask": {"query": ["the cat [MASK] on the mat"], "parameters": {"top_k": 3}},
    "bert_question_answering": {"query": [{"question": "who wrote it?", "context": "ada lovelace wrote it in london"}]},
    "minilm": {"query": ["a cat sits on the mat", "dogs run in the park"]},
}


@pytest.fixture(scope="module")
def deployments(model_dirs):
    running = {name: mii_azure.deploy(model_dirs[name], local=True, name=name.replace("_", "-")) for name in PARITY}
    yield running
    for deployment in running.values():
        deployment.delete()


def _grpc_entries(deployment, request: dict) -> list:
    client = grpcclient.InferenceServerClient(deployment.grpc_target)
    query = request["query"]
    if isinstance(query[0], dict):
        tensors = {name: [item[name] for item in query] for name in ("question", "context")}
    else:
        tensors = {"query": query}
    inputs = []
    for name, values in tensors.items():
        tensor = grpcclient.InferInput(name, [len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode() for value in values], dtype=object))
        inputs.append(tensor)
    result = client.infer(deployment.name, inputs, parameters=request.get("parameters"))
    return [json.loads(item) for item in result.as_numpy("responses")]


def _in_process_run(package_dir: Path, request: dict, monkeypatch) -> list:
    """The package's own score.py, init() and run() in this process, as Azure ML calls them."""
    from flask import Request

    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    monkeypatch.delenv("MII_AZURE_GRPC_PORT", raising=False)
    spec = importlib.util.spec_from_file_location(f"score_{package_dir.name}", package_dir / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    raw = Request(EnvironBuilder(method="POST", data=json.dumps(request), content_type="application/json").get_environ())
    response = module.run(raw)
    assert response.status_code == 200
    return json.loads(response.get_data())["responses"]


@pytest.mark.parametrize("name", list(PARITY))
def test_handle_http_grpc_and_in_process_run_give_identical_entries(deployments, name, monkeypatch):
    deployment, request = deployments[name], PARITY[name]
    via_handle = deployment.query(request)["responses"]
    via_http = post_json(deployment.scoring_uri, request).body["responses"]
    via_grpc = _grpc_entries(deployment, request)
    bundle = Package.load(LocalTarget().home / "packages" / deployment.name)
    via_run = _in_process_run(bundle.path, request, monkeypatch)
    assert via_handle == via_http == via_grpc == via_run
    assert len(via_handle) == len(request["query"])


def test_convenience_forms_and_keyword_parameters(deployments):
    deployment = deployments["gpt2"]
    full = deployment.query({"query": ["DeepSpeed is"], "parameters": {"max_new_tokens": 4}})
    assert deployment.query("DeepSpeed is", max_new_tokens=4)["responses"] == full["responses"]
    assert deployment.query(["DeepSpeed is"], max_new_tokens=4)["responses"] == full["responses"]
    qa = deployments["bert_question_answering"]
    legacy = qa.query({"question": "who wrote it?", "context": "ada lovelace wrote it in london"})
    assert legacy["responses"] == qa.query(PARITY["bert_question_answering"])["responses"]


def test_query_raises_the_sdk_error_types(deployments):
    with pytest.raises(BadRequestError) as raised:
        deployments["gpt2"].query("DeepSpeed is", max_tokens=4)
    assert raised.value.status_code == 400 and "Unknown parameter 'max_tokens'" in raised.value.message
    with pytest.raises(mii_azure.PayloadTooLargeError):
        deployments["gpt2"].query(["x"] * 40)


def test_grpc_bad_input_has_the_http_status_mapping_and_message(deployments):
    deployment = deployments["gpt2"]
    http = post_json(deployment.scoring_uri, {"query": ["x"], "parameters": {"bogus": 1}})
    client = grpcclient.InferenceServerClient(deployment.grpc_target)
    tensor = grpcclient.InferInput("query", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"x"], dtype=object))
    with pytest.raises(grpcclient.InferenceServerException) as raised:
        client.infer(deployment.name, [tensor], parameters={"bogus": 1})
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert raised.value.message() == http.body["error"]["message"]


def test_mii_query_handle(deployments):
    handle = mii_azure.mii_query_handle("gpt2")
    answer = handle.query({"query": ["DeepSpeed is"]}, max_new_tokens=4)
    assert answer["responses"] == deployments["gpt2"].query("DeepSpeed is", max_new_tokens=4)["responses"]


def test_deployments_are_found_from_another_process(deployments):
    env = {**os.environ}
    listed = subprocess.run([sys.executable, "-m", "mii_azure.cli", "list", "--json"], capture_output=True, text=True, env=env, check=True)
    names = {entry["name"] for entry in json.loads(listed.stdout)}
    assert {"gpt2", "bert-fill-mask", "minilm"} <= names
    queried = subprocess.run(
        [sys.executable, "-m", "mii_azure.cli", "query", "bert-fill-mask", '{"query": "the [MASK] sat", "parameters": {"top_k": 2}}'],
        capture_output=True, text=True, env=env, check=True,
    )
    assert len(json.loads(queried.stdout)["responses"][0]) == 2
    logs = subprocess.run([sys.executable, "-m", "mii_azure.cli", "logs", "gpt2", "--lines", "200"], capture_output=True, text=True, env=env, check=True)
    assert "POST /score" in logs.stdout
    assert mii_azure.get_deployment("minilm").scoring_uri == deployments["minilm"].scoring_uri


def test_the_package_snapshot_is_what_serves(deployments):
    log = deployments["gpt2"].logs(lines=500)
    package_dir = LocalTarget().home / "packages" / "gpt2"
    assert f"with the mii_azure runtime in {package_dir}" in log


def test_listening_sockets_are_loopback_only(deployments):
    for deployment in deployments.values():
        record = LocalTarget()._read(deployment.name)
        processes = [psutil.Process(record.pid)] + psutil.Process(record.pid).children(recursive=True)
        listening = [c for p in processes for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert {c.laddr.port for c in listening} >= {int(deployment.scoring_uri.split(":")[2].split("/")[0]), int(deployment.grpc_target.split(":")[1])}
        assert all(_loopback(c.laddr.ip) for c in listening), [c.laddr for c in listening]


def _loopback(ip: str) -> bool:
    """127.0.0.1, also as gRPC's IPv4-mapped IPv6 form (::ffff:127.0.0.1); never a wildcard address."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address) == ipaddress.ip_address("127.0.0.1")


def test_a_taken_port_is_refused_before_starting(model_dirs, deployments):
    taken = int(deployments["gpt2"].scoring_uri.split(":")[2].split("/")[0])
    with pytest.raises(ConfigError, match=f"Port {taken} on 127.0.0.1 is already in use"):
        mii_azure.deploy(model_dirs["bert_classifier"], local=True, name="port-clash", port=taken)
    with pytest.raises(ConfigError, match="already running"):
        mii_azure.deploy(model_dirs["gpt2"], local=True, name="gpt2")


def test_bad_models_fail_fast_with_the_cause(tmp_path, model_dirs):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        mii_azure.deploy(tmp_path / "nope", local=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(InvalidModelError, match="not valid JSON"):
        mii_azure.deploy(broken, local=True)
    corrupt = Path(__import__("shutil").copytree(model_dirs["bert_classifier"], tmp_path / "corrupt-weights"))
    (corrupt / "model.safetensors").write_bytes((corrupt / "model.safetensors").read_bytes()[:200])
    started = time.monotonic()
    with pytest.raises((ModelLoadError, InvalidModelError)) as raised:
        mii_azure.deploy(corrupt, local=True, name="corrupt")
    assert time.monotonic() - started < 60
    assert "corrupt-weights" in raised.value.message
    with pytest.raises(DeploymentNotFoundError):
        mii_azure.get_deployment("corrupt")


def test_two_deployments_side_by_side_and_delete_one(model_dirs, deployments):
    extra = mii_azure.deploy(model_dirs["bert_classifier"], local=True, name="side-by-side")
    try:
        assert extra.query("a good day")["task"] == "text-classification"
        assert deployments["gpt2"].query("DeepSpeed is", max_new_tokens=2)["task"] == "text-generation"
    finally:
        extra.delete()
    with pytest.raises(DeploymentNotFoundError, match="No local deployment named 'side-by-side'"):
        mii_azure.get_deployment("side-by-side")
    assert deployments["gpt2"].query("DeepSpeed is", max_new_tokens=2)["task"] == "text-generation"


def test_stale_records_are_cleaned_up(deployments):
    target = LocalTarget()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = target._read("gpt2").model_copy(update={"name": "ghost", "pid": dead.pid})
    target._write(record)
    assert "ghost" not in [deployment.name for deployment in mii_azure.list_deployments()]
    assert not (target.home / "deployments" / "ghost.json").exists()


def test_sigterm_during_20_in_flight_requests_completes_them_all(model_dirs):
    """Ten whole answers and ten streams in flight when SIGTERM arrives: every one completes."""
    deployment = mii_azure.deploy(model_dirs["gpt2"], local=True, name="drain-test", max_batch_size=4)
    record = LocalTarget()._read("drain-test")
    started = threading.Event()

    def call(index: int):
        started.set()
        if index % 2:
            with deployment.stream(f"request number {index}", max_new_tokens=40) as pieces:
                text = "".join(pieces)
            assert text == pieces.entry["generated_text"]
            return {"responses": [pieces.entry]}
        return deployment.query([f"request number {index}"], max_new_tokens=40)

    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(call, index) for index in range(20)]
        started.wait(5)
        time.sleep(0.5)
        os.killpg(record.pid, signal.SIGTERM)
        answers = [future.result(timeout=120) for future in futures]
    assert all(len(answer["responses"]) == 1 and answer["responses"][0]["num_tokens"] > 0 for answer in answers)
    deadline = time.monotonic() + 30
    while psutil.pid_exists(record.pid) and psutil.Process(record.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(record.pid) or psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(DeploymentNotFoundError):
        mii_azure.get_deployment("drain-test")


def test_a_moved_package_deploys(model_dirs, tmp_path):
    import shutil

    built = mii_azure.package(model_dirs["bert_classifier"], output=tmp_path / "first-place", name="moved-pkg")
    moved = Path(shutil.move(str(built.path), str(tmp_path / "second" / "place")))
    with mii_azure.deploy(moved, local=True) as deployment:
        assert deployment.name == "moved-pkg"
        assert deployment.query("a good day")["task"] == "text-classification"
    # Names are chosen at deploy time: the same package serves under another name, which answers report.
    with mii_azure.deploy(moved, local=True, name="renamed") as renamed:
        assert renamed.name == "renamed" and renamed.query("a good day")["model"] == "renamed"
        assert mii_azure.get_deployment("renamed").scoring_uri == renamed.scoring_uri
    with pytest.raises(ConfigError, match="deployed as it was built"):
        mii_azure.deploy(moved, local=True, max_batch_size=2)


def test_a_tampered_package_is_refused_by_the_server(model_dirs, tmp_path):
    import shutil

    built = mii_azure.package(model_dirs["bert_classifier"], output=tmp_path / "tampered", name="tampered")
    target = built.path / "mii_azure" / "tasks" / "classification.py"
    target.write_text(target.read_text() + "\n# changed after packaging\n")
    with pytest.raises(PackageError, match="does not match its manifest"):
        mii_azure.deploy(built.path, local=True)
    # The packaged score.py checks again at init(), whoever starts the server.
    server = InferenceServerProcess(built.model_dir, entry_script=built.entry_script, log_path=tmp_path / "tampered.log")
    with pytest.raises(ModelLoadError) as raised:
        server.start().wait_ready(timeout_s=120)
    assert "does not match its manifest" in raised.value.message
    assert "mii_azure/tasks/classification.py" in raised.value.message
    shutil.rmtree(built.path)
