"""Model copies per instance: one inference-server worker per copy, each on its own GPUs (or cores).

azureml-inference-server-http runs ``WORKER_COUNT`` gunicorn worker processes, and each one imports
score.py and calls its ``init()``, so each loads its own :class:`~mii_azure.runtime.engine.Engine`.
A package sets ``WORKER_COUNT`` to its plan's ``replicas`` (Azure ML: ``deployment.yml``; locally:
the harness's ``--worker_count``). Before anything touches CUDA, each worker claims one replica
slot ``i`` of ``0 .. WORKER_COUNT - 1``:

* it takes an exclusive, non-blocking ``fcntl.flock`` on ``slot-{i}.lock`` in the slot directory and
  keeps that file open for the life of the process; the kernel drops the lock when the process dies,
  so a worker that gunicorn restarts claims the slot (and the GPUs) its predecessor had;
* on GPU it sets ``CUDA_VISIBLE_DEVICES`` to its share of the GPUs this process sees: the visible
  GPUs are split in ``WORKER_COUNT`` equal, contiguous shares (the plan's ``tensor_parallel`` GPUs
  per copy when the plan is served as made; an already set ``CUDA_VISIBLE_DEVICES`` is mapped through);
* it gives torch ``cores // WORKER_COUNT`` threads, so the copies do not oversubscribe the cores;
* once the engine has loaded and answered its warm-up input, :meth:`ReplicaSlot.mark_ready` writes
  ``slot-{i}.ready`` (a harness waits for every copy's marker).

The slot directory is ``$MII_AZURE_REPLICA_DIR`` when set, else
``<tempdir>/mii-azure-replicas-<pid of the gunicorn master>`` (the worker's parent: one per server).
The workers' shared metrics files (:mod:`mii_azure.runtime.metrics`) live in the folder
:func:`metrics_directory` names: ``$PROMETHEUS_MULTIPROC_DIR``, else ``metrics/`` in the slot directory.

The split comes from the worker count and the GPUs visible, not from a plan, on purpose: the plan a
copy serves may be re-made on this machine (``Hardware.local()`` asks torch.cuda, which fixes the
visible GPUs of the process), and the GPUs must be chosen before that.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from ..errors import ConfigError

__all__ = [
    "ReplicaSlot",
    "claim_replica",
    "worker_count",
    "replica_directory",
    "replica_cores",
    "metrics_directory",
    "REPLICA_DIR_ENV",
    "WORKER_COUNT_ENV",
    "REPLICA_CORES_ENV",
    "METRICS_DIR_ENV",
    "READY_SUFFIX",
]

logger = logging.getLogger(__name__)

#: Where the slots of one server live (the local harness gives each deployment its own).
REPLICA_DIR_ENV = "MII_AZURE_REPLICA_DIR"
#: The inference server's worker count: one worker per model copy.
WORKER_COUNT_ENV = "WORKER_COUNT"
#: The cores of this copy, for the processes it starts (tensor-parallel ranks on CPU).
REPLICA_CORES_ENV = "MII_AZURE_REPLICA_CORES"
#: prometheus-client's multiprocess folder: where the workers of one server write their metrics.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The inference server's switch that loads the app once in the master, before forking.
_PRELOAD_ENV = "WORKER_PRELOAD"
READY_SUFFIX = ".ready"

#: The slot this process holds, by directory: the open lock file must outlive every reference to it.
_HELD: dict[str, "ReplicaSlot"] = {}


@dataclass
class ReplicaSlot:
    """The replica slot this process holds, and what it was given."""

    index: int
    replicas: int
    directory: Path
    gpus: tuple[str, ...] = ()
    machine_gpus: int = 0
    threads: int = 1
    _lock: Optional[IO[str]] = field(default=None, repr=False)

    @property
    def lock_path(self) -> Path:
        """The file whose lock is the claim."""
        return self.directory / f"slot-{self.index}.lock"

    @property
    def ready_path(self) -> Path:
        """The marker :meth:`mark_ready` writes."""
        return self.directory / f"slot-{self.index}{READY_SUFFIX}"

    def mark_ready(self) -> None:
        """Record that this copy loaded and answered its warm-up input."""
        temporary = self.ready_path.with_name(f".{self.ready_path.name}.{os.getpid()}")
        temporary.write_text(json.dumps({"replica": self.index, "pid": os.getpid(), "gpus": list(self.gpus)}), encoding="utf-8")
        temporary.replace(self.ready_path)
        logger.info("Replica %d of %d is ready (%s)", self.index, self.replicas, self.ready_path)

    def release(self) -> None:
        """Give the slot up (the process exiting does the same)."""
        self.ready_path.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        _HELD.pop(str(self.directory), None)


def worker_count(environ: Optional[Mapping[str, str]] = None) -> int:
    """The inference server's worker count (``WORKER_COUNT``; 1 when unset, as in-process)."""
    environ = os.environ if environ is None else environ
    text = (environ.get(WORKER_COUNT_ENV) or "1").strip()
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(
            f"{WORKER_COUNT_ENV}={text!r} is not a worker count; set it to the plan's replicas (a whole number, 1 or more).",
            variable=WORKER_COUNT_ENV,
            value=text,
        )
    return count


def replica_directory(environ: Optional[Mapping[str, str]] = None) -> Path:
    """``$MII_AZURE_REPLICA_DIR``, else a folder named after the gunicorn master (this worker's parent)."""
    environ = os.environ if environ is None else environ
    given = environ.get(REPLICA_DIR_ENV)
    if given:
        return Path(given).expanduser()
    return Path(tempfile.gettempdir()) / f"mii-azure-replicas-{os.getppid()}"


def metrics_directory(environ: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """Where this server's workers write their metrics files: ``$PROMETHEUS_MULTIPROC_DIR`` (the
    launcher makes a fresh one per start), else ``metrics/`` in the replica slot directory when the
    server runs several workers, else None (one process: its metrics stay in memory)."""
    environ = os.environ if environ is None else environ
    given = environ.get(METRICS_DIR_ENV)
    if given:
        return Path(given).expanduser()
    if worker_count(environ) > 1:
        return replica_directory(environ) / "metrics"
    return None


def replica_cores(environ: Optional[Mapping[str, str]] = None) -> int:
    """The cores this copy may use: what its slot was given, else every core of the process."""
    environ = os.environ if environ is None else environ
    given = environ.get(REPLICA_CORES_ENV)
    if given and given.isdigit() and int(given) > 0:
        return int(given)
    return _cores()


def claim_replica(
    replicas: int,
    *,
    directory: Optional[Path] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> ReplicaSlot:
    """Claim a free slot of ``replicas`` for this process and take its share of the GPUs and cores.

    ``environ`` (default ``os.environ``) is read for the slot directory and the server's settings;
    this process's own environment gets ``CUDA_VISIBLE_DEVICES`` (GPUs) and
    ``MII_AZURE_REPLICA_CORES``, and torch its thread count. Idempotent within a process.
    ConfigError when no slot is free, when CUDA is already initialized here, or when the GPUs
    cannot be shared out.
    """
    environ = os.environ if environ is None else environ
    folder = Path(directory) if directory is not None else replica_directory(environ)
    held = _HELD.get(str(folder))
    if held is not None:
        return held
    if replicas < 1:
        raise ConfigError(f"replicas={replicas} leaves no slot to claim; use 1 or more.", replicas=replicas)
    if (environ.get(_PRELOAD_ENV) or "").lower() == "true":
        raise ConfigError(
            f"{_PRELOAD_ENV}=true loads the model once in the inference server's master process, but each of the "
            f"{replicas} workers must load its own copy on its own GPUs; unset {_PRELOAD_ENV}.",
            variable=_PRELOAD_ENV,
        )
    _refuse_initialized_cuda()
    visible = _visible_gpus(os.environ)
    if visible and len(visible) < replicas:
        raise ConfigError(
            f"{replicas} model copies cannot each have their own GPU: this process sees {len(visible)} "
            f"({', '.join(visible)}). Set {WORKER_COUNT_ENV} to at most {len(visible)} (the plan's replicas for "
            "this machine).",
            replicas=replicas,
            gpus=len(visible),
        )
    folder.mkdir(parents=True, exist_ok=True)
    index, lock = _take_free_slot(folder, replicas)
    share = len(visible) // replicas
    gpus = tuple(visible[index * share : (index + 1) * share])
    threads = max(1, _cores() // replicas)
    if visible:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    os.environ[REPLICA_CORES_ENV] = str(threads)
    _set_torch_threads(threads)
    slot = ReplicaSlot(
        index=index, replicas=replicas, directory=folder, gpus=gpus, machine_gpus=len(visible), threads=threads, _lock=lock
    )
    _HELD[str(folder)] = slot
    logger.info(
        "Claimed replica slot %d of %d in %s: %s, %d CPU thread(s)",
        index,
        replicas,
        folder,
        f"GPU(s) {','.join(gpus)}" if gpus else "no GPU",
        threads,
    )
    return slot


def _take_free_slot(folder: Path, replicas: int) -> tuple[int, IO[str]]:
    import fcntl  # POSIX only, as the inference server's gunicorn workers are

    holders = []
    for index in range(replicas):
        path = folder / f"slot-{index}.lock"
        handle = open(path, "a+", encoding="utf-8")  # not truncated: the holder's pid stays readable
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holders.append(_holder(path))
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        (folder / f"slot-{index}{READY_SUFFIX}").unlink(missing_ok=True)  # a predecessor's marker
        return index, handle
    raise ConfigError(
        f"Every one of the {replicas} replica slots in {str(folder)!r} is held by another process "
        f"(pids {', '.join(holders)}), so this worker has no GPUs or cores of its own. Run as many workers as "
        f"{WORKER_COUNT_ENV}={replicas} says, and give each server its own {REPLICA_DIR_ENV}.",
        directory=str(folder),
        replicas=replicas,
        holders=holders,
    )


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


def _visible_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries, found without initializing CUDA."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item.strip() for item in listed.split(",") if item.strip()]
    try:
        import torch
    except ImportError:
        return []
    # Counted through NVML before CUDA is initialized, so CUDA_VISIBLE_DEVICES still takes effect.
    return [str(index) for index in range(torch.cuda.device_count())]


def _refuse_initialized_cuda() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise ConfigError(
            "CUDA was initialized in this process before its replica slot was claimed, so its GPUs can no longer "
            "be chosen; claim the slot first (ScoringService.from_environment does) and run one copy per worker.",
        )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _set_torch_threads(threads: int) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)
