"""Apply an OptimizationPlan to a loaded task, and record what was actually applied.

On CPU: the planned dtype is applied at load time; int8 means torch dynamic quantization of the
``nn.Linear`` layers. On GPU: ``deepspeed.init_inference`` with the planned dtype, tensor
parallelism and kernel injection, then CUDA graphs per shape bucket for static-shape tasks
(:mod:`mii_azure.runtime.cuda_graphs`). Anything that falls back (an injection policy that
fails on this transformers version, say) is recorded with its reason, never silently.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError, MissingDependencyError, ModelLoadError
from ..planner import OptimizationPlan
from ..tasks.base import Task
from .cuda_graphs import GraphedModule, ShapeBuckets

if TYPE_CHECKING:
    from .zero_inference import ZeroInference

__all__ = ["AppliedPlan", "apply_plan", "install_cuda_graphs", "graph_failures"]

logger = logging.getLogger(__name__)


class AppliedPlan(BaseModel):
    """What the engine really runs with, next to the plan it was asked to apply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: str
    quantization: Optional[str]
    deepspeed: bool
    kernel_inject: bool
    tensor_parallel: int
    cuda_graph: bool
    zero_offload: Optional[str]
    fallbacks: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: every choice as applied, then anything that fell back and why."""
        line = (
            f"dtype={self.dtype} quantization={self.quantization} deepspeed={self.deepspeed} "
            f"kernel_inject={self.kernel_inject} tensor_parallel={self.tensor_parallel} "
            f"cuda_graph={self.cuda_graph} zero_offload={self.zero_offload}"
        )
        return line + "".join(f"; fell back: {fallback}" for fallback in self.fallbacks)


def apply_plan(
    task: Task,
    plan: OptimizationPlan,
    *,
    distributed: bool = False,
    zero: Optional["ZeroInference"] = None,
    reload: Optional[Callable[[], Task]] = None,
) -> AppliedPlan:
    """Optimize ``task``'s model in place as ``plan`` says; the record of what was applied.

    ``reload`` loads the task afresh: when kernel injection fails after DeepSpeed replaced some
    layers, the model is reloaded from it before falling back (without it, that is a ModelLoadError).

    With ``tensor_parallel > 1`` every rank calls this after joining its process group
    (``distributed=True``; see :mod:`mii_azure.runtime.parallel`). A ZeRO-Inference plan needs the
    :class:`ZeroInference` that was entered before the model loaded.
    """
    if plan.zero_offload:
        if zero is None:
            raise ConfigError(
                f"zero_offload={plan.zero_offload!r} needs the model loaded partitioned; load it with "
                "Engine.load, which prepares ZeRO-Inference first.",
                conflict="zero_offload",
            )
        zero.apply(task)
        return AppliedPlan(
            dtype=plan.dtype,
            quantization=None,
            deepspeed=True,
            kernel_inject=False,
            tensor_parallel=1,
            cuda_graph=False,
            zero_offload=plan.zero_offload,
            fallbacks=(
                ("kernel injection is not combined with ZeRO-Inference; the layers run as transformers defines them",)
                if plan.kernel_inject
                else ()
            ),
        )
    if plan.tensor_parallel > 1 and not distributed:
        raise ConfigError(
            f"tensor_parallel={plan.tensor_parallel} needs one process per rank in a process group; load the "
            "model with Engine.load, which starts them.",
            conflict="tensor_parallel",
        )
    if plan.hardware.kind == "cpu":
        return _apply_on_cpu(task, plan)
    return _apply_on_gpu(task, plan, reload)


def _apply_on_cpu(task: Task, plan: OptimizationPlan) -> AppliedPlan:
    if plan.tensor_parallel > 1:
        import deepspeed
        import torch

        if plan.quantization:
            raise ConfigError(
                "int8 and tensor_parallel > 1 cannot be combined on CPU; use one of them.", conflict="quantization"
            )
        engine = deepspeed.init_inference(
            _model_of(task),
            dtype=getattr(torch, plan.dtype),
            tensor_parallel={"tp_size": plan.tensor_parallel},
            replace_with_kernel_inject=False,
        )
        _set_model(task, engine.module)
        return AppliedPlan(
            dtype=plan.dtype,
            quantization=None,
            deepspeed=True,
            kernel_inject=False,
            tensor_parallel=plan.tensor_parallel,
            cuda_graph=False,
            zero_offload=None,
        )
    if plan.quantization == "int8":
        import torch

        model = _model_of(task)
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        _set_model(task, quantized)
    return AppliedPlan(
        dtype=plan.dtype,
        quantization=plan.quantization,
        deepspeed=False,
        kernel_inject=False,
        tensor_parallel=1,
        cuda_graph=False,
        zero_offload=None,
    )


def _apply_on_gpu(task: Task, plan: OptimizationPlan, reload: Optional[Callable[[], Task]]) -> AppliedPlan:
    try:
        import deepspeed
    except ImportError as exc:
        raise MissingDependencyError(
            "GPU plans are applied with DeepSpeed-Inference: DS_BUILD_OPS=0 pip install --no-build-isolation "
            "'mii-azure[deepspeed]'.",
            package="deepspeed",
            install="pip install 'mii-azure[deepspeed]'",
        ) from exc
    import torch

    dtype = torch.int8 if plan.quantization == "int8" else getattr(torch, plan.dtype)
    fallbacks: list[str] = []
    kernel_inject = plan.kernel_inject
    max_tokens = _max_tokens(task, plan)
    model = _model_of(task)
    try:
        engine = _init_inference(deepspeed, model, plan, dtype, kernel_inject, max_tokens)
    except Exception as exc:  # an injection policy that does not match this transformers version
        if not kernel_inject:
            raise
        reason = f"kernel injection failed ({type(exc).__name__}: {exc})"
        logger.warning("Kernel injection failed, falling back to AutoTP: %s", exc)
        if _replaced_by_deepspeed(model):
            model = _reloaded_model(task, reason, reload)
            reason += "; the partly injected model was reloaded"
        fallbacks.append(reason + "; fell back to AutoTP without it")
        kernel_inject = False
        engine = _init_inference(deepspeed, model, plan, dtype, kernel_inject, max_tokens)
    _set_model(task, engine.module if hasattr(engine, "module") else engine)
    if kernel_inject:
        _allocate_injected_workspace(task, plan)
    cuda_graph = False
    if plan.cuda_graph:
        try:
            install_cuda_graphs(task, plan)
            cuda_graph = True
        except Exception as exc:  # an eager call at the largest bucket failed: serve without graphs
            fallbacks.append(f"CUDA graphs not installed ({type(exc).__name__}: {exc}); calls run eagerly")
            logger.warning("CUDA graphs not installed: %s", exc)
    return AppliedPlan(
        dtype=plan.dtype,
        quantization=plan.quantization,
        deepspeed=True,
        kernel_inject=kernel_inject,
        tensor_parallel=plan.tensor_parallel,
        cuda_graph=cuda_graph,
        zero_offload=None,
        fallbacks=tuple(fallbacks),
    )


def _init_inference(
    deepspeed: Any, model: Any, plan: OptimizationPlan, dtype: Any, kernel_inject: bool, max_tokens: int
) -> Any:
    # DeepSpeed's own enable_cuda_graph records one graph at the first call's shape and copies every
    # later call into it; CUDA graphs are installed per shape bucket instead (install_cuda_graphs).
    return deepspeed.init_inference(
        model,
        dtype=dtype,
        tensor_parallel={"tp_size": plan.tensor_parallel},
        replace_with_kernel_inject=kernel_inject,
        enable_cuda_graph=False,
        max_tokens=max_tokens,
    )


def _max_tokens(task: Task, plan: OptimizationPlan) -> int:
    """Longest sequence (prompt and new tokens) the injected kernels keep KV cache for. DeepSpeed's
    default is 1024 and only its own ``generate`` checks it; the tasks check the model's limit."""
    return task.facts.max_positions or plan.max_input_tokens + max(plan.max_new_tokens, task.settings.max_new_tokens_limit)


def _allocate_injected_workspace(task: Task, plan: OptimizationPlan) -> None:
    """Run the injected model once at the largest batch. DeepSpeed sizes its workspace and KV cache
    for the batch of the first call and never grows them; a warm-up of one input would leave every
    bigger batch writing past them."""
    import torch

    from ..tasks._text import TextModelTask

    if not isinstance(task, TextModelTask):
        return
    batch = task.settings.batch_limit(plan.max_batch_size)
    ids = torch.full((batch, 1), task.tokenizer.pad_token_id or 0, dtype=torch.long, device=task.device)
    with torch.inference_mode():
        task.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    task.forget_previous_sequences()


def _replaced_by_deepspeed(model: Any) -> bool:
    modules = model.modules() if hasattr(model, "modules") else [
        module for component in getattr(model, "components", {}).values() if hasattr(component, "modules") for module in component.modules()
    ]
    return any(type(module).__module__.startswith("deepspeed.") for module in modules)


def _reloaded_model(task: Task, reason: str, reload: Optional[Callable[[], Task]]) -> Any:
    """The task's model loaded afresh, the partly injected one released first."""
    if reload is None:
        raise ModelLoadError(
            f"{reason}, after DeepSpeed had replaced some of the model's layers; load the model with "
            "Engine.load (which reloads it and falls back), or plan it with kernel_inject=False.",
        )
    import gc

    import torch

    _set_model(task, None)
    gc.collect()
    torch.cuda.empty_cache()
    fresh = _model_of(reload())
    _set_model(task, fresh)
    return fresh


def install_cuda_graphs(task: Task, plan: OptimizationPlan) -> GraphedModule:
    """Wrap the module a static-shape task calls in a :class:`GraphedModule`: the diffusion UNet
    (run once per denoising step), or a text task's whole model. Returns the wrapper."""
    import torch

    from ..tasks._text import TextModelTask
    from ..tasks.text_to_image import TextToImage

    max_batch = task.settings.batch_limit(plan.max_batch_size)
    if isinstance(task, TextToImage):
        # Classifier-free guidance runs the conditional and unconditional rows in one UNet call.
        graphed = GraphedModule(task.pipeline.unet, ShapeBuckets.up_to(2 * max_batch), pad_sequences=False)
        task.pipeline.unet = graphed
        return graphed
    if not isinstance(task, TextModelTask):
        raise ConfigError(f"CUDA graphs are not supported for {task.name}: its shapes change with every step.", conflict="cuda_graph")
    pad_token_id = task.tokenizer.pad_token_id or 0
    graphed = GraphedModule(task.model, ShapeBuckets.up_to(max_batch, task.max_input_tokens), pad_token_id=pad_token_id)
    ids = torch.full((1, 1), pad_token_id, dtype=torch.long, device=task.device)
    graphed.prepare(input_ids=ids, attention_mask=torch.ones_like(ids))
    task.model = graphed
    return graphed


def graph_failures(task: Task) -> list[str]:
    """Why CUDA graphs of ``task`` were turned off after a capture failed (empty while they work)."""
    candidates = [getattr(task, "model", None), getattr(getattr(task, "pipeline", None), "unet", None)]
    return [module.failure for module in candidates if isinstance(module, GraphedModule) and module.failure]


def _model_of(task: Task) -> Any:
    model = getattr(task, "model", None) or getattr(task, "pipeline", None)
    if model is None:
        raise ConfigError(f"The {task.name} task holds no model to optimize.")
    return model


def _set_model(task: Task, model: Any) -> None:
    if hasattr(task, "model"):
        task.model = model  # type: ignore[attr-defined]
    else:
        task.pipeline = model  # type: ignore[attr-defined]
