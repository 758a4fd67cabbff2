"""Serving metrics for ``/metrics`` in the Prometheus text format, summed over the server's workers.

One :class:`ServingMetrics` per process (:func:`serving_metrics`) records what the routes, the
batchers and the scheduler see: requests by route and status, request latency, time to first
token, generated tokens, batch sizes, queue depth, KV-cache use and whether this model copy serves.
:meth:`ServingMetrics.render` answers ``/metrics``.

The inference server runs ``WORKER_COUNT`` gunicorn workers and any of them may answer a scrape, so
with a metrics folder every worker writes its numbers to its own files there (prometheus-client's
multiprocess mode) and the one that answers reads every worker's files: counters and histograms are
summed over all workers (a restarted worker's predecessor's counts included), gauges over the live
ones. The folder (:func:`~mii_azure.runtime.replicas.metrics_directory`) is
``$PROMETHEUS_MULTIPROC_DIR`` (the launcher, ``scoring/launch.py``, makes a fresh one per server
start), else ``metrics/`` in the replica slot folder when ``WORKER_COUNT`` > 1 (``azmlinfsrv`` on
Azure ML, one folder per gunicorn master); with neither, as in-process, a plain registry.
prometheus-client picks its multiprocess mode when it is imported, so this module imports it only
when the first :class:`ServingMetrics` is made, after setting the variable. A worker that died
leaves gauge files behind: whoever renders first drops those of processes that no longer exist
(``multiprocess.mark_process_dead``), so nothing depends on a hook in the gunicorn master
(``azmlinfsrv`` offers a scoring script none).

Every call is a few microseconds (a lock and a write to a memory-mapped file); the scheduler calls
them once per step, not once per token. Label values come from fixed sets: routes from
:data:`ROUTES` (anything else is ``"other"``), statuses as strings, batch phases from
:data:`BATCH_PHASES`.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, MissingDependencyError
from .replicas import METRICS_DIR_ENV, metrics_directory

__all__ = [
    "BATCH_PHASES",
    "BATCH_SIZE_BUCKETS",
    "FIRST_TOKEN_SECONDS_BUCKETS",
    "MULTIPROC_DIR_ENV",
    "PROMETHEUS_INSTALL",
    "REQUEST_SECONDS_BUCKETS",
    "ROUTES",
    "ServingMetrics",
    "forget_dead_processes",
    "serving_metrics",
]

logger = logging.getLogger(__name__)

#: prometheus-client's switch to multiprocess mode: the folder every worker writes its files to.
MULTIPROC_DIR_ENV = METRICS_DIR_ENV
#: The command that adds prometheus-client (part of the ``serve`` extra).
PROMETHEUS_INSTALL = "pip install 'prometheus-client>=0.20,<1'"

#: The route patterns requests are counted under (DESIGN.md sections 3, 3b and the server's probes).
ROUTES = frozenset(
    {
        "/",
        "/score",
        "/swagger.json",
        "/metrics",
        "/openapi.json",
        "/info",
        "/v1/models",
        "/v1/models/{id}",
        *(
            prefix + path
            for prefix in ("/v1", "", "/models")
            for path in ("/completions", "/chat/completions", "/embeddings")
        ),
        "/models/info",
    }
)
#: What one model call is: a prefill pass or a decode step of continuous batching, or a whole batch
#: of request-level batching.
BATCH_PHASES = ("prefill", "decode", "batch")

#: Request latency: milliseconds for encoders, up to Azure ML's 180 s request limit and the
#: server's 300 s worker timeout for long generations.
REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0)
#: Time to first token: tens of milliseconds on a GPU, seconds for a long prompt behind a queue.
FIRST_TOKEN_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
#: Rows in one model call: powers of two up to the largest batch sizes the planner makes.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_OTHER_ROUTE = "other"
_INSTANCE: Optional["ServingMetrics"] = None
_INSTANCE_LOCK = threading.Lock()


def serving_metrics() -> "ServingMetrics":
    """The process's one :class:`ServingMetrics`, made on first use (in multiprocess mode when the
    metrics folder says so; see the module's docstring)."""
    global _INSTANCE
    if _INSTANCE is None:
        with _INSTANCE_LOCK:
            if _INSTANCE is None:
                _INSTANCE = _make()
    return _INSTANCE


class ServingMetrics:
    """The serving metrics of one process; ``multiprocess_dir`` is the folder every worker writes
    its numbers to (None: this process only, in a registry of its own)."""

    def __init__(self, *, multiprocess_dir: Optional[Path] = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            _use_multiprocess_files(multiprocess_dir)  # before prometheus-client is imported, if it can be
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._registry = CollectorRegistry(auto_describe=True)
        registry = self._registry
        self._requests = Counter(
            "mii_azure_requests", "Requests answered, by route pattern and HTTP status.", ["route", "status"], registry=registry
        )
        self._request_seconds = Histogram(
            "mii_azure_request_duration_seconds",
            "Time from a request's arrival to its answer's end (a stream's last event), by route pattern.",
            ["route"],
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=registry,
        )
        self._first_token_seconds = Histogram(
            "mii_azure_time_to_first_token_seconds",
            "Time from a generation's submission to its first generated token, per sequence (continuous batching).",
            buckets=FIRST_TOKEN_SECONDS_BUCKETS,
            registry=registry,
        )
        self._generated_tokens = Counter(
            "mii_azure_generated_tokens", "Tokens generated (end-of-text not counted).", registry=registry
        )
        self._batch_size = Histogram(
            "mii_azure_batch_size",
            "Rows in one model call: a prefill pass or decode step (continuous batching), or a whole batch.",
            ["phase"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self._queue_depth = Gauge(
            "mii_azure_queue_depth",
            "Requests waiting for an answer from the model copies' batchers (queued or running; the queue limit applies to them).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._kv_used = Gauge(
            "mii_azure_kv_cache_used_tokens",
            "KV-cache tokens the running batches hold (rows times the longest reach), summed over model copies.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._kv_capacity = Gauge(
            "mii_azure_kv_cache_capacity_tokens",
            "KV-cache tokens the model copies may hold (their kv_cache_tokens), summed.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._ready = Gauge(
            "mii_azure_model_copies_ready",
            "Model copies that loaded and answered their warm-up input.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._model_info = Gauge(
            "mii_azure_model_info",
            "The deployment this server serves (value 1), by deployment name and task.",
            ["model", "task"],
            multiprocess_mode="livemax",
            registry=registry,
        )

    # --- what is observed --------------------------------------------------------------------
    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """One answered request: its route pattern (e.g. ``"/score"``), HTTP status and duration."""
        route = route if route in ROUTES else _OTHER_ROUTE
        self._requests.labels(route, str(int(status))).inc()
        self._request_seconds.labels(route).observe(max(0.0, seconds))

    def observe_first_token(self, seconds: float) -> None:
        """One sequence's time from its request's submission to its first generated token."""
        self._first_token_seconds.observe(max(0.0, seconds))

    def count_generated_tokens(self, count: int) -> None:
        """``count`` more tokens generated."""
        if count > 0:
            self._generated_tokens.inc(count)

    def observe_batch(self, size: int, *, phase: str = "batch") -> None:
        """Rows in one model call; ``phase`` is one of :data:`BATCH_PHASES`."""
        self._batch_size.labels(phase if phase in BATCH_PHASES else "batch").observe(size)

    def set_queue_depth(self, waiting: int) -> None:
        """Requests this copy's batcher holds now (queued or running)."""
        self._queue_depth.set(waiting)

    def set_kv_cache(self, used_tokens: int, capacity_tokens: int) -> None:
        """This copy's KV-cache use now, in tokens, against what it may hold."""
        self._kv_used.set(used_tokens)
        self._kv_capacity.set(capacity_tokens)

    def set_ready(self, ready: bool) -> None:
        """Whether this model copy serves (loaded and answered its warm-up input)."""
        self._ready.set(1 if ready else 0)

    def describe_model(self, model: str, task: str) -> None:
        """Name the deployment and task this process serves (``mii_azure_model_info``; call once)."""
        self._model_info.labels(model, task).set(1)

    # --- /metrics ----------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The ``/metrics`` body in the Prometheus text format and its Content-Type: every worker's
        numbers in multiprocess mode, this process's otherwise."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess_dir is None:
            return generate_latest(self._registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        forget_dead_processes(self.multiprocess_dir)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Unavailable(ServingMetrics):
    """Stands in when prometheus-client is missing: serving goes on, ``/metrics`` says what to install."""

    def __init__(self) -> None:
        self.multiprocess_dir = None

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        return None

    def observe_first_token(self, seconds: float) -> None:
        return None

    def count_generated_tokens(self, count: int) -> None:
        return None

    def observe_batch(self, size: int, *, phase: str = "batch") -> None:
        return None

    def set_queue_depth(self, waiting: int) -> None:
        return None

    def set_kv_cache(self, used_tokens: int, capacity_tokens: int) -> None:
        return None

    def set_ready(self, ready: bool) -> None:
        return None

    def describe_model(self, model: str, task: str) -> None:
        return None

    def render(self) -> tuple[bytes, str]:
        raise MissingDependencyError(
            f"/metrics needs prometheus-client, which this environment lacks; install it with: {PROMETHEUS_INSTALL}",
            install=PROMETHEUS_INSTALL,
        )


def forget_dead_processes(directory: Path) -> list[int]:
    """Drop the live-gauge files of processes that no longer exist (a worker gunicorn replaced);
    their counters and histograms stay in the sums. Returns the pids dropped."""
    from prometheus_client.multiprocess import mark_process_dead

    dropped = []
    for path in glob.glob(os.path.join(str(directory), "gauge_live*_*.db")):
        pid_text = os.path.basename(path)[: -len(".db")].rsplit("_", 1)[-1]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid != os.getpid() and not _process_exists(pid) and pid not in dropped:
            try:
                mark_process_dead(pid, str(directory))
            except FileNotFoundError:  # another worker dropped them first
                pass
            dropped.append(pid)
    if dropped:
        logger.info("Metrics: dropped the live gauges of ended worker process(es) %s", ", ".join(map(str, dropped)))
    return dropped


def _make() -> ServingMetrics:
    try:
        directory = metrics_directory()
    except ConfigError:  # a bad WORKER_COUNT is reported where the replica slot is claimed
        directory = None
    if importlib.util.find_spec("prometheus_client") is None:
        logger.warning("prometheus-client is not installed: no serving metrics (%s)", PROMETHEUS_INSTALL)
        return _Unavailable()
    return ServingMetrics(multiprocess_dir=directory)


def _use_multiprocess_files(directory: Path) -> None:
    """Point prometheus-client's values at ``directory`` (its files are named by pid): the variable
    first, then the import, which picks the multiprocess value class when it sees the variable."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_DIR_ENV] = str(directory)
    from prometheus_client import values
    from prometheus_client.multiprocess import mark_process_dead

    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus-client chooses its value class when first imported; something imported it before
        # the folder was known, so choose again (its own choice, now with the variable set).
        values.ValueClass = values.get_value_class()
    mark_process_dead(os.getpid(), str(directory))  # live gauges an earlier process with this pid left


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
