"""Tensor parallelism across processes: one process per rank, rank 0 takes requests, the others follow.

Rank 0 is the serving process. It starts ranks 1..N-1 as fresh processes; every rank loads the
model and slices it with DeepSpeed's AutoTP (``deepspeed.init_inference`` with ``tp_size=N``) over a
torch.distributed group (gloo on CPU, NCCL on GPU) on 127.0.0.1. For every batch, rank 0 broadcasts
the inputs, parameters and a random seed, and all ranks run the same ``predict``: the model's
collective operations keep them in step, and rank 0 answers.

Each group picks its own free port (``free_port``), so the copies of a model that one server runs
side by side (one worker each, see :mod:`mii_azure.runtime.replicas`) form independent groups; their
ranks inherit the copy's ``CUDA_VISIBLE_DEVICES`` and core share.

Because every rank must run exactly the same steps, no rank may stop early on its own: deadlines are
enforced by the batcher (the caller gets its 504) rather than inside generation.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
from pathlib import Path
from typing import Any, Optional

from ..config import ServingSettings
from ..errors import ModelLoadError
from ..planner import OptimizationPlan
from ..tasks.base import Deadline, TaskParameters

__all__ = ["TensorParallelGroup", "init_rank"]

logger = logging.getLogger(__name__)

_STOP = None


def init_rank(rank: int, world_size: int, port: int, backend: str) -> None:
    """Join the group of ``world_size`` ranks on 127.0.0.1:``port``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    import deepspeed
    import torch

    if backend == "gloo":
        # The ranks split the cores of their model copy (all of them with one copy per machine).
        from .replicas import replica_cores

        torch.set_num_threads(max(1, replica_cores() // world_size))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    if backend == "gloo":
        # DeepSpeed 0.19 JIT-builds a shared-memory all-reduce kernel for CPU inference; in our tests it
        # crashed the process (segmentation fault) on the first all-reduce. The gloo all-reduce of the
        # process group is correct, and at CPU speeds its cost is small next to the matrix products.
        from deepspeed.comm import comm

        comm.cdb.shm_vector_kernel_level = 0


class TensorParallelGroup:
    """Rank 0's handle on the follower ranks: start them, send them each batch, stop them."""

    def __init__(self, model_dir: Path, plan: OptimizationPlan, settings: ServingSettings) -> None:
        from .ports import free_port

        self.model_dir = Path(model_dir)
        self.plan = plan
        self.settings = settings
        self.world_size = plan.tensor_parallel
        self.backend = "gloo" if plan.hardware.kind == "cpu" else "nccl"
        self.port = free_port()
        self._context = multiprocessing.get_context("spawn")
        self._followers: list[Any] = []

    def start(self) -> None:
        """Start ranks 1..N-1, then join the group as rank 0 (returns once all ranks are in)."""
        for rank in range(1, self.world_size):
            process = self._context.Process(
                target=_follow,
                args=(rank, self.world_size, self.port, self.backend, str(self.model_dir), self.plan.to_dict(), self.settings.model_dump()),
                name=f"mii-azure-rank-{rank}",
                daemon=True,
            )
            process.start()
            self._followers.append(process)
        logger.info("Started %d follower rank(s); joining the %s group as rank 0", self.world_size - 1, self.backend)
        init_rank(0, self.world_size, self.port, self.backend)

    def run(self, predict: Any, inputs: list[Any], parameters: TaskParameters, deadline: Deadline) -> list[Any]:
        """Send the batch to every rank and run it here too; rank 0's entries."""
        import torch
        import torch.distributed as dist

        self._check_followers()
        seed = random.getrandbits(63)
        dist.broadcast_object_list([(inputs, parameters, seed, deadline.remaining())], src=0)
        torch.manual_seed(seed)
        return predict(inputs, parameters, deadline)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Tell the followers to exit and wait for them."""
        import torch.distributed as dist

        if dist.is_initialized() and all(process.is_alive() for process in self._followers):
            dist.broadcast_object_list([_STOP], src=0)
        for process in self._followers:
            process.join(timeout_s)
            if process.is_alive():
                process.kill()
        if dist.is_initialized():
            dist.destroy_process_group()

    def kill(self) -> None:
        """Stop the followers at once (start-up failed)."""
        for process in self._followers:
            if process.is_alive():
                process.kill()
            process.join(5)

    def _check_followers(self) -> None:
        dead = [process.name for process in self._followers if not process.is_alive()]
        if dead:
            raise ModelLoadError(
                f"Tensor-parallel rank process(es) {', '.join(dead)} exited; the deployment cannot serve. "
                "Restart it and check its log for the cause.",
                ranks=dead,
            )


def _follow(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    model_dir: str,
    plan_data: dict[str, Any],
    settings_data: dict[str, Any],
) -> None:
    """A follower rank's main: load the same shard of the model, then run every batch rank 0 sends."""
    import torch
    import torch.distributed as dist

    from ..models import resolve_model
    from ..tasks import get_task
    from ..tasks.base import LoadOptions
    from .optimize import apply_plan

    init_rank(rank, world_size, port, backend)
    plan = OptimizationPlan.from_dict(plan_data)
    settings = ServingSettings(**settings_data)
    folder = Path(model_dir)
    facts = resolve_model(folder)
    options = LoadOptions(device="cuda" if plan.hardware.kind == "gpu" else "cpu", dtype=plan.dtype)
    task_cls = get_task(plan.task)
    task = task_cls.load(folder, facts, settings, options)
    task.enforce_deadline = False
    apply_plan(task, plan, distributed=True, reload=lambda: task_cls.load(folder, facts, settings, options))
    while True:
        message: list[Optional[tuple[Any, ...]]] = [None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is _STOP:
            break
        inputs, parameters, seed, remaining = message[0]
        torch.manual_seed(seed)
        task.predict(inputs, parameters, Deadline(max(remaining, 1.0)))
