"""Model copies per instance: replica slots claimed by real processes, and a 2-copy local deployment.

The slot tests run each claimant as its own Python process (as gunicorn workers are) and hold the
slot until the test lets go; the end-to-end test deploys a tiny GPT-2 with ``replicas=2`` on this
CPU through the real inference server (two workers) and checks that both copies answer, over HTTP
and gRPC, exactly what one copy answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import mii_azure
from mii_azure.errors import ConfigError
from mii_azure.runtime.replicas import REPLICA_DIR_ENV, claim_replica, replica_directory, worker_count

CLAIMANT = r"""
import json, os, sys
from pathlib import Path
from mii_azure.errors import ConfigError
from mii_azure.runtime.replicas import claim_replica
try:
    slot = claim_replica(int(sys.argv[2]), directory=Path(sys.argv[1]))
except ConfigError as error:
    facts = {name: error.facts.get(name) for name in ("directory", "holders")}
    print(json.dumps({"error": error.message, **facts}), flush=True)
    sys.exit(3)
import torch
print(json.dumps({
    "index": slot.index, "pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "threads": torch.get_num_threads(), "cores": os.environ["MII_AZURE_REPLICA_CORES"],
}), flush=True)
sys.stdin.read()  # hold the slot until the test closes stdin (or kills this process)
"""


class Claimant:
    """One process that claims a slot and holds it."""

    def __init__(self, directory: Path, replicas: int, cuda_visible: str | None = None) -> None:
        env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
        if cuda_visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLAIMANT, str(directory), str(replicas)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def result(self) -> dict:
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read()
        return json.loads(line)

    def release(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def claimants():
    started: list[Claimant] = []

    def start(*args, **kwargs) -> Claimant:
        claimant = Claimant(*args, **kwargs)
        started.append(claimant)
        return claimant

    yield start
    for claimant in started:
        if claimant.process.poll() is None:
            claimant.kill()


def test_processes_claim_distinct_slots_and_their_share_of_the_gpus(tmp_path, claimants):
    # CUDA_VISIBLE_DEVICES already narrows the GPUs: the copies split what this process sees, in order.
    first, second = (claimants(tmp_path, 2, cuda_visible="3,5,6,7") for _ in range(2))
    results = sorted((first.result(), second.result()), key=lambda result: result["index"])
    assert [result["index"] for result in results] == [0, 1]
    assert [result["cuda"] for result in results] == ["3,5", "6,7"]
    cores = len(os.sched_getaffinity(0))
    for result in results:
        assert result["threads"] == int(result["cores"]) == max(1, cores // 2)
    assert (tmp_path / "slot-0.lock").read_text().strip() in {str(result["pid"]) for result in results}


def test_no_free_slot_is_a_clear_error_naming_the_folder(tmp_path, claimants):
    holder = claimants(tmp_path, 1, cuda_visible="")
    held = holder.result()
    refused = claimants(tmp_path, 1, cuda_visible="")
    error = refused.result()
    assert refused.process.wait(timeout=30) == 3
    assert error["directory"] == str(tmp_path) and str(tmp_path) in error["error"]
    assert error["holders"] == [str(held["pid"])] and "WORKER_COUNT=1" in error["error"]


def test_a_slot_is_freed_when_its_process_dies(tmp_path, claimants):
    first, second = claimants(tmp_path, 2, cuda_visible="0,1"), claimants(tmp_path, 2, cuda_visible="0,1")
    by_index = {claimant.result()["index"]: claimant for claimant in (first, second)}
    by_index[0].kill()  # as a worker gunicorn restarts: killed, not shut down
    restarted = claimants(tmp_path, 2, cuda_visible="0,1").result()
    assert (restarted["index"], restarted["cuda"]) == (0, "0")
    by_index[1].release()
    after = claimants(tmp_path, 2, cuda_visible="0,1").result()
    assert (after["index"], after["cuda"]) == (1, "1")


def test_more_copies_than_gpus_are_refused(tmp_path, claimants):
    error = claimants(tmp_path, 3, cuda_visible="0,1").result()
    assert "3 model copies" in error["error"] and "sees 2" in error["error"]


def test_claims_are_idempotent_in_a_process_and_mark_ready(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: nothing to narrow
    threads = __import__("torch").get_num_threads()
    try:
        slot = claim_replica(2, directory=tmp_path)
        assert claim_replica(2, directory=tmp_path) is slot
        assert slot.index == 0 and slot.gpus == () and not slot.ready_path.exists()
        slot.mark_ready()
        assert json.loads(slot.ready_path.read_text())["pid"] == os.getpid()
        slot.release()
        assert not slot.ready_path.exists()
    finally:
        __import__("torch").set_num_threads(threads)
        os.environ.pop("MII_AZURE_REPLICA_CORES", None)  # set by the claim, not by monkeypatch


def test_slot_folder_and_worker_count_come_from_the_server(tmp_path, monkeypatch):
    assert replica_directory({}).name == f"mii-azure-replicas-{os.getppid()}"
    assert replica_directory({REPLICA_DIR_ENV: str(tmp_path)}) == tmp_path
    assert worker_count({}) == 1 and worker_count({"WORKER_COUNT": "4"}) == 4
    with pytest.raises(ConfigError, match="WORKER_COUNT='zero'"):
        worker_count({"WORKER_COUNT": "zero"})
    with pytest.raises(ConfigError, match="unset WORKER_PRELOAD"):
        claim_replica(2, directory=tmp_path / "preload", environ={"WORKER_PRELOAD": "true"})


# --------------------------------------------------------------------------- end to end: 2 copies on this CPU

PROMPTS = ["DeepSpeed is", "the cat sat on", "dogs ran past quickly", "birds sang songs", "a mat", "green trees in summer"]


@pytest.mark.serving
@pytest.mark.harness
def test_two_copies_behind_one_local_deployment_answer_like_one(model_dirs):
    import tritonclient.grpc as grpcclient

    from mii_azure.runtime.engine import Engine
    from mii_azure.runtime.service import ScoringService

    # fp32: greedy decoding is exactly reproducible whatever batch a request lands in.
    deployment = mii_azure.deploy(model_dirs["gpt2"], local=True, name="gpt2-two-copies", replicas=2, dtype="float32")
    try:
        plan = deployment.plan
        assert (plan.replicas, plan.tensor_parallel, plan.overrides) == (2, 1, ("dtype", "replicas"))
        logs = deployment.logs(400)
        assert "Claimed replica slot 0 of 2" in logs and "Claimed replica slot 1 of 2" in logs

        # What one copy answers: the same plan, loaded once in this process.
        single = ScoringService(Engine.load(model_dirs["gpt2"], plan=plan))
        requests = [{"query": [prompt], "parameters": {"max_new_tokens": 4}} for prompt in PROMPTS]
        expected = [single.score(request)["responses"] for request in requests]
        single.engine.close()

        seen: set[int] = set()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=12) as pool:
            for _ in range(10):  # at most 10 rounds of 12 concurrent requests
                calls = [(index % len(requests)) for index in range(12)]
                answers = list(pool.map(lambda index: (index, deployment.query(requests[index])), calls))
                for index, answer in answers:
                    assert answer["responses"] == expected[index]
                    seen.add(answer["replica"])
                if seen == {0, 1} or time.monotonic() - started > 60:
                    break
        assert seen == {0, 1}, f"only replica(s) {sorted(seen)} answered over HTTP"

        # gRPC: both workers listen on the one port; each new connection goes to either of them.
        grpc_seen: set[int] = set()
        tensor_input = grpcclient.InferInput("query", [1], "BYTES")
        for attempt in range(32):
            tensor_input.set_data_from_numpy(np.array([PROMPTS[attempt % len(PROMPTS)].encode()], dtype=object))
            # A private subchannel pool: a new TCP connection per client, as separate clients make.
            client = grpcclient.InferenceServerClient(
                deployment.grpc_target, channel_args=[("grpc.use_local_subchannel_pool", 1)]
            )
            try:
                result = client.infer(deployment.name, [tensor_input], parameters={"max_new_tokens": 4})
            finally:
                client.close()
            entries = [json.loads(item) for item in result.as_numpy("responses")]
            assert entries == expected[attempt % len(PROMPTS)]
            grpc_seen.add(result.get_response().parameters["replica"].int64_param)
            if grpc_seen == {0, 1}:
                break
        assert grpc_seen == {0, 1}, f"only replica(s) {sorted(grpc_seen)} answered over gRPC"
    finally:
        deployment.delete()
    assert not (Path(os.environ["MII_AZURE_HOME"]) / "replicas" / "gpt2-two-copies").exists()
