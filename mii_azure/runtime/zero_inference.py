"""ZeRO-Inference: serve a model larger than GPU memory by streaming its weights from host memory or NVMe.

DeepSpeed ZeRO stage 3 partitions the parameters and, with ``offload_param``, keeps them in CPU memory
(or on NVMe) between uses; each layer's weights are gathered onto the GPU just before it runs. The
model must be *loaded* under a ``HfDeepSpeedConfig`` so that transformers builds it partitioned
instead of materializing it whole, which is why :class:`ZeroInference` is entered before the task
loads its model, and applied after.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ..config import ServingSettings
from ..errors import ConfigError
from ..planner import OptimizationPlan
from ..tasks.base import Task

__all__ = ["ZeroInference", "NVME_PATH_ENV", "DEFAULT_NVME_PATH"]

#: Where NVMe offload writes its swap files (the local NVMe temp disk of Azure GPU VMs is at /mnt).
NVME_PATH_ENV = "MII_AZURE_NVME_PATH"
DEFAULT_NVME_PATH = "/mnt/mii_azure_zero"


class ZeroInference:
    """The DeepSpeed configuration of a ZeRO-Inference plan, from model loading to serving."""

    def __init__(self, plan: OptimizationPlan, settings: ServingSettings) -> None:
        if not plan.zero_offload:
            raise ConfigError("ZeroInference needs a plan with zero_offload set.", conflict="zero_offload")
        if plan.tensor_parallel != 1 or plan.quantization:
            raise ConfigError(
                "ZeRO-Inference streams half-precision weights to one GPU per replica; plan it with "
                "tensor_parallel=1 and quantization=None.",
                conflict="zero_offload",
            )
        self.plan = plan
        self.settings = settings
        self.config = self._config()
        self._hf_config: Optional[Any] = None

    def _config(self) -> dict[str, Any]:
        offload: dict[str, Any] = {"device": self.plan.zero_offload, "pin_memory": _cuda_available()}
        if self.plan.zero_offload == "nvme":
            offload["nvme_path"] = os.environ.get(NVME_PATH_ENV, DEFAULT_NVME_PATH)
        return {
            "train_micro_batch_size_per_gpu": 1,
            "fp16": {"enabled": self.plan.dtype == "float16"},
            "bf16": {"enabled": self.plan.dtype == "bfloat16"},
            "zero_optimization": {"stage": 3, "offload_param": offload},
        }

    def before_loading(self) -> None:
        """Join a one-rank process group and make transformers build the model partitioned."""
        import torch.distributed as dist
        from transformers.integrations import HfDeepSpeedConfig

        from .ports import free_port
        from .parallel import init_rank

        if not dist.is_initialized():
            init_rank(0, 1, free_port(), "nccl" if _cuda_available() else "gloo")
        self._hf_config = HfDeepSpeedConfig(self.config)  # must stay alive while the model loads

    def apply(self, task: Task) -> None:
        """Wrap the task's (partitioned) model in a ZeRO stage-3 engine that streams its weights."""
        import deepspeed

        model = getattr(task, "model", None)
        if model is None:
            raise ConfigError(
                f"ZeRO-Inference serves transformers models; the {task.name} task has none. Pick a SKU where "
                "the model fits in GPU memory.",
                conflict="zero_offload",
            )
        engine = deepspeed.initialize(model=model, config_params=self.config)[0]
        engine.module.eval()
        task.model = engine.module  # type: ignore[attr-defined]
        task.device = engine.device  # type: ignore[attr-defined]


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
