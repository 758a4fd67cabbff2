"""``/metrics``: the Prometheus text format, read back with prometheus-client's own parser.

Counters move by exactly what was observed; several worker processes writing into one metrics
folder are summed by whichever renders (live gauges of an ended worker drop out); the batchers and
the continuous-batching scheduler report their model calls, tokens, queue and KV cache.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from mii_azure.runtime.batcher import Batcher
from mii_azure.runtime.metrics import ServingMetrics, serving_metrics
from mii_azure.runtime.replicas import metrics_directory
from mii_azure.tasks.base import Deadline

Samples = dict[tuple[str, frozenset], float]


def _samples(body: bytes) -> Samples:
    """Every sample of a /metrics body, by (sample name, labels)."""
    parsed: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _current() -> Samples:
    body, _ = serving_metrics().render()
    return _samples(body)


def test_the_text_format_parses_back_and_counters_move_by_exactly_what_was_observed():
    metrics = ServingMetrics()  # a registry of its own: nothing else in this process moves it
    for status, seconds in ((200, 0.02), (200, 0.3), (200, 4.0), (503, 0.001)):
        metrics.observe_request("/score", status, seconds)
    metrics.observe_request("/v1/chat/completions", 200, 1.5)
    metrics.observe_request("/v1/chat/completions", 200, 0.7)
    metrics.observe_request("/no/such/route/42", 404, 0.001)  # unbounded paths do not become labels
    metrics.count_generated_tokens(17)
    metrics.count_generated_tokens(5)
    metrics.count_generated_tokens(0)
    for size in (1, 3, 8):
        metrics.observe_batch(size, phase="decode")
    metrics.observe_batch(2, phase="prefill")
    metrics.observe_first_token(0.12)
    metrics.observe_first_token(2.5)
    metrics.set_queue_depth(4)
    metrics.set_kv_cache(300, 4096)
    metrics.set_ready(True)
    metrics.describe_model("my-gpt2", "text-generation")

    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE_LATEST
    samples = _samples(body)
    assert _value(samples, "mii_azure_requests_total", route="/score", status="200") == 3
    assert _value(samples, "mii_azure_requests_total", route="/score", status="503") == 1
    assert _value(samples, "mii_azure_requests_total", route="/v1/chat/completions", status="200") == 2
    assert _value(samples, "mii_azure_requests_total", route="other", status="404") == 1
    requests = {labels for name, labels in samples if name == "mii_azure_requests_total"}
    assert len(requests) == 4
    assert _value(samples, "mii_azure_request_duration_seconds_count", route="/score") == 4
    assert _value(samples, "mii_azure_request_duration_seconds_sum", route="/score") == pytest.approx(4.321)
    assert _value(samples, "mii_azure_request_duration_seconds_bucket", route="/score", le="0.5") == 3
    assert _value(samples, "mii_azure_request_duration_seconds_bucket", route="/score", le="+Inf") == 4
    assert _value(samples, "mii_azure_generated_tokens_total") == 22
    assert _value(samples, "mii_azure_batch_size_count", phase="decode") == 3
    assert _value(samples, "mii_azure_batch_size_sum", phase="decode") == 12
    assert _value(samples, "mii_azure_batch_size_bucket", phase="decode", le="4.0") == 2
    assert _value(samples, "mii_azure_batch_size_count", phase="prefill") == 1
    assert _value(samples, "mii_azure_time_to_first_token_seconds_count") == 2
    assert _value(samples, "mii_azure_time_to_first_token_seconds_bucket", le="0.15") == 1
    assert _value(samples, "mii_azure_queue_depth") == 4
    assert _value(samples, "mii_azure_kv_cache_used_tokens") == 300
    assert _value(samples, "mii_azure_kv_cache_capacity_tokens") == 4096
    assert _value(samples, "mii_azure_model_copies_ready") == 1
    assert _value(samples, "mii_azure_model_info", model="my-gpt2", task="text-generation") == 1


def test_one_instance_per_process_and_the_metrics_folder_of_a_server():
    assert serving_metrics() is serving_metrics()
    assert serving_metrics().multiprocess_dir is None  # in-process: no metrics folder
    assert metrics_directory({}) is None
    assert metrics_directory({"WORKER_COUNT": "1"}) is None
    assert metrics_directory({"PROMETHEUS_MULTIPROC_DIR": "/srv/m"}) == Path("/srv/m")
    assert metrics_directory({"WORKER_COUNT": "3", "MII_AZURE_REPLICA_DIR": "/srv/r"}) == Path("/srv/r/metrics")


_WORKER = textwrap.dedent(
    """
    import sys
    if sys.argv[4] == "imported-first":  # something imported prometheus-client before the folder was known
        import prometheus_client
    from mii_azure.runtime.metrics import serving_metrics
    requests, tokens, queue = (int(value) for value in sys.argv[1:4])
    metrics = serving_metrics()
    assert metrics.multiprocess_dir is not None
    for _ in range(requests):
        metrics.observe_request("/score", 200, 0.05)
    metrics.count_generated_tokens(tokens)
    metrics.observe_batch(requests, phase="decode")
    metrics.set_queue_depth(queue)
    metrics.set_kv_cache(10 * queue, 1000)
    metrics.set_ready(True)
    print("written", flush=True)
    sys.stdin.readline()  # stay alive until told to end
    """
)
_RENDER = "from mii_azure.runtime.metrics import serving_metrics; import sys; sys.stdout.buffer.write(serving_metrics().render()[0])"


def test_workers_of_one_server_are_summed_and_an_ended_worker_leaves_its_counts_not_its_gauges(tmp_path):
    folder = tmp_path / "replicas" / "metrics"
    plain = {name: value for name, value in os.environ.items() if name not in ("PROMETHEUS_MULTIPROC_DIR", "WORKER_COUNT")}
    env = {**plain, "PROMETHEUS_MULTIPROC_DIR": str(folder)}  # as the launcher sets it
    # as under azmlinfsrv without the launcher: the folder of the replica slots, found by the worker
    derived = {**plain, "WORKER_COUNT": "2", "MII_AZURE_REPLICA_DIR": str(tmp_path / "replicas")}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, *arguments], env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for environ, arguments in ((env, ("3", "40", "2", "-")), (derived, ("4", "25", "1", "imported-first")))
    ]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "written"

        def render() -> Samples:
            done = subprocess.run([sys.executable, "-c", _RENDER], env=env, capture_output=True, timeout=60, check=True)
            return _samples(done.stdout)

        both = render()
        assert _value(both, "mii_azure_requests_total", route="/score", status="200") == 7
        assert _value(both, "mii_azure_request_duration_seconds_count", route="/score") == 7
        assert _value(both, "mii_azure_generated_tokens_total") == 65
        assert _value(both, "mii_azure_batch_size_count", phase="decode") == 2
        assert _value(both, "mii_azure_batch_size_sum", phase="decode") == 7
        assert _value(both, "mii_azure_queue_depth") == 3
        assert _value(both, "mii_azure_kv_cache_used_tokens") == 30
        assert _value(both, "mii_azure_kv_cache_capacity_tokens") == 2000
        assert _value(both, "mii_azure_model_copies_ready") == 2
        assert not any("pid" in dict(labels) for _, labels in both), "gauges are summed, not listed per worker"

        first = workers[0]
        first.communicate("\n", timeout=30)
        assert (folder / f"gauge_livesum_{first.pid}.db").exists()
        one = render()  # the renderer drops the ended worker's live gauges (mark_process_dead)
        assert not (folder / f"gauge_livesum_{first.pid}.db").exists()
        assert _value(one, "mii_azure_requests_total", route="/score", status="200") == 7
        assert _value(one, "mii_azure_generated_tokens_total") == 65
        assert _value(one, "mii_azure_queue_depth") == 1
        assert _value(one, "mii_azure_kv_cache_capacity_tokens") == 1000
        assert _value(one, "mii_azure_model_copies_ready") == 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.communicate("\n", timeout=30)


def test_the_launcher_gives_each_server_start_a_fresh_metrics_folder_and_removes_it(monkeypatch, tmp_path):
    from azureml_inference_server_http import amlserver

    spec = importlib.util.spec_from_file_location("mii_azure_launch_under_test", Path(__file__).parents[1] / "mii_azure" / "scoring" / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    stale = tmp_path / "earlier"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(stale))
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(amlserver, "DEFAULT_HOST", amlserver.DEFAULT_HOST)
    seen = []

    def run() -> None:
        folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        seen.append((folder, folder.is_dir() and not any(folder.iterdir())))
        (folder / "counter_2.db").write_bytes(b"")

    monkeypatch.setattr(amlserver, "run", run)
    for _ in range(2):
        launch.main(["--entry_script", "score.py", "--model_dir", str(tmp_path)])
    (first, first_empty), (second, second_empty) = seen
    assert first_empty and second_empty and first != second and stale not in (first, second)
    assert not first.exists() and not second.exists()


def test_request_level_batches_report_their_size_queue_and_generated_tokens():
    def run(inputs, parameters, deadline):
        return [{"generated_text": "x" * len(text), "num_tokens": len(text)} for text in inputs]

    batcher = Batcher(run, check=lambda inputs, parameters: None, can_share=lambda parameters: True, max_batch_size=4, max_wait_ms=20, max_queue=64)
    try:
        before = _current()
        requests = [["ab", "cde"], ["f"], ["ghij", "k", "lm"], ["nopqr"]]
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda inputs: batcher.submit(inputs, None, Deadline(30)), requests))
        after = _current()
    finally:
        batcher.close()
    generated = sum(entry["num_tokens"] for answer in answers for entry in answer)
    assert generated == 18
    grew = lambda name, **labels: _value(after, name, **labels) - _value(before, name, **labels)
    assert grew("mii_azure_generated_tokens_total") == generated
    assert grew("mii_azure_batch_size_count", phase="batch") == batcher.stats.batches
    assert grew("mii_azure_batch_size_sum", phase="batch") == sum(len(inputs) for inputs in requests) == batcher.stats.inputs
    assert _value(after, "mii_azure_queue_depth") == 0


@pytest.mark.serving
def test_continuous_batching_reports_first_tokens_generated_tokens_batches_and_kv_cache(model_dirs):
    from mii_azure.config import ServingSettings
    from mii_azure.hardware import Hardware
    from mii_azure.models import resolve_model
    from mii_azure.planner import PlanOverrides, make_plan
    from mii_azure.runtime.engine import Engine
    from mii_azure.tasks.base import ScoringRequest

    model_dir = model_dirs["gpt2"]
    plan = make_plan(resolve_model(model_dir), Hardware.cpu(cores=2, ram_gb=16, bf16=False), overrides=PlanOverrides(max_batch_size=8))
    engine = Engine.load(model_dir, settings=ServingSettings(), plan=plan)
    try:
        assert engine.scheduling == "continuous", engine.scheduling_reason
        task = type(engine.task)
        work = [
            (["the cat sat", "dogs ran"], {"max_new_tokens": 6}),
            (["birds sang songs"], {"max_new_tokens": 9}),
            (["green trees", "a mat", "of summer"], {"max_new_tokens": 4, "temperature": 0.9, "seed": 2}),
            (["quickly"], {"max_new_tokens": 12}),
        ]
        stats = engine.batcher.stats
        steps, prefills = stats.steps, stats.prefills  # the warm-up input's are counted already
        before = _current()
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(
                pool.map(lambda item: engine.infer(ScoringRequest(item[0], task.parse_parameters(item[1])), Deadline(60)), work)
            )
        after = _current()
        grew = lambda name, **labels: _value(after, name, **labels) - _value(before, name, **labels)
        generated = sum(entry["num_tokens"] for answer in answers for entry in answer)
        sequences = sum(len(inputs) for inputs, _ in work)
        assert generated > 0
        assert grew("mii_azure_generated_tokens_total") == generated
        assert grew("mii_azure_time_to_first_token_seconds_count") == sequences
        assert grew("mii_azure_batch_size_count", phase="decode") == stats.steps - steps > 0
        assert grew("mii_azure_batch_size_count", phase="prefill") == stats.prefills - prefills > 0
        assert grew("mii_azure_batch_size_sum", phase="prefill") == sequences
        assert _value(after, "mii_azure_queue_depth") == 0

        # While one sequence decodes, the running batch holds its reach of the KV cache: read at each
        # decode step (the worker publishes once per step, before the next).
        prompt, new_tokens = "the cat sat on a mat", 40
        reach = len(engine.task.prompt_tokens(prompt)) + new_tokens
        runner = engine.batcher.runner
        seen: list[Samples] = []
        call = "step" if runner.fuses_prefill else "decode"  # the pass of every decode step
        original = getattr(runner, call)

        def decode(*args, **kwargs):
            seen.append(_current())
            return original(*args, **kwargs)

        setattr(runner, call, decode)
        try:
            engine.infer(ScoringRequest([prompt], task.parse_parameters({"max_new_tokens": new_tokens})), Deadline(60))
        finally:
            delattr(runner, call)
        assert len(seen) > 2
        for step in seen[1:]:
            assert _value(step, "mii_azure_kv_cache_used_tokens") == reach
            assert _value(step, "mii_azure_kv_cache_capacity_tokens") == engine.batcher.kv_cache_tokens
            assert _value(step, "mii_azure_queue_depth") == 1
        until = time.monotonic() + 30
        while _value(_current(), "mii_azure_kv_cache_used_tokens") and time.monotonic() < until:
            time.sleep(0.01)  # published at the worker's next turn, once the sequence left
        assert _value(_current(), "mii_azure_kv_cache_used_tokens") == 0
    finally:
        engine.close()


def test_every_route_the_router_serves_is_counted_under_its_own_pattern():
    from mii_azure.runtime.metrics import ROUTES
    from mii_azure.runtime.routes import Router

    assert set(Router.ROUTES) <= ROUTES
