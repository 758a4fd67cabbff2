"""The planner: which DeepSpeed-Inference optimizations fit a model on given hardware, and why.

``make_plan(facts, hardware, ...)`` is a pure function of the model's configuration facts, the
hardware's numbers and the user's overrides; ``plan(model, sku=...)`` resolves both first. Nothing
here imports torch, so plans can be made on any machine, before any weight is downloaded.

Memory model, per GPU (all figures in GB of 1e9 bytes):

* weights: parameters x bytes per parameter (2 for fp16/bf16, 1 for int8 plus 2% for scales,
  4 for fp32), divided by the tensor-parallel degree;
* KV cache: 2 (K and V) x layers x KV heads x head size x 2 bytes per token, divided by the
  tensor-parallel degree, for ``max_batch_size`` sequences of ``max_input_tokens + max_new_tokens``;
* workspace: 1 GB (CUDA context, kernels) plus activations of one forward pass over the batch
  (4 x tokens x hidden size x 2 bytes) and the logits of one step (batch x vocabulary x 4 bytes);
* headroom: 10% of the GPU's memory, for fragmentation.

Replicas: a VM serves ``replicas`` model copies, each on its own ``tensor_parallel`` GPUs (one
inference-server worker per copy; see :mod:`mii_azure.runtime.replicas`). On GPU the planner fills
the VM (``gpus // tensor_parallel``) unless ZeRO-Inference offload streams the weights from the
VM's shared host memory or NVMe (then 1), or host memory cannot hold the weights of every copy
while they load. On CPU one copy uses every core (``replicas`` > 1 only on request; the copies
share the host's RAM, so the memory breakdown is then per copy, of its share of the RAM).
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError
from .hardware import GB, Hardware
from .models import ModelFacts, resolve_model, resolve_task

__all__ = ["OptimizationPlan", "MemoryBreakdown", "PlanOverrides", "make_plan", "plan"]

Dtype = Literal["float32", "float16", "bfloat16"]

#: Model types DeepSpeed-Inference has kernel-injection policies for (deepspeed.module_inject.containers).
INJECTION_POLICIES = frozenset(
    {"bert", "roberta", "distilbert", "gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "bloom", "llama", "internlm", "diffusion-pipeline"}
)
#: Policies that exist but are known not to work with the supported transformers versions.
BROKEN_INJECTION = {
    "gpt_neox": "DeepSpeed 0.19's GPT-NeoX policy fails on transformers 5 (GPTNeoXAttention has no hidden_size)",
}
#: Model types DeepSpeed's AutoTP refuses to slice (deepspeed.module_inject.auto_tp: Conv1D and
#: similar layers); they can be tensor-parallel only through kernel injection, on GPUs.
AUTOTP_UNSUPPORTED = frozenset({"gpt2", "deberta", "flaubert", "fsmt", "led", "longformer", "xlm", "xlnet"})
#: Decoder families whose injected kernels run int8 weights.
INT8_FAMILIES = frozenset({"gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "bloom", "llama", "internlm"})
#: Tasks whose shapes can be fixed per batch, so a captured CUDA graph is replayed rather than rebuilt.
STATIC_SHAPE_TASKS = frozenset(
    {"text-classification", "fill-mask", "token-classification", "question-answering", "feature-extraction", "text-to-image"}
)
GENERATION_TASKS = frozenset({"text-generation", "text2text-generation"})

HEADROOM_FRACTION = 0.10
BASE_WORKSPACE_GB = 1.0
MAX_PLANNED_BATCH = 64
CPU_BATCH = 32
DEFAULT_NEW_TOKENS = 256
UNBOUNDED_CONTEXT = 2048
CLIP_PROMPT_TOKENS = 77
# Activation memory of one 512x512 image through a Stable Diffusion UNet in half precision, GB.
DIFFUSION_GB_PER_IMAGE_512 = 1.0
HOST_RAM_USABLE = 0.9

_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}


class PlanOverrides(BaseModel):
    """Choices the user makes instead of the planner; None means "plan it"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: Optional[Dtype] = None
    tensor_parallel: Optional[int] = Field(None, ge=1)
    #: Checked by the planner (not here), so that replicas=0 is a ConfigError naming the nearest working value.
    replicas: Optional[int] = None
    kernel_inject: Optional[bool] = None
    quantization: Optional[Literal["int8", "none"]] = None
    zero_offload: Optional[Literal["cpu", "nvme", "none"]] = None
    cuda_graph: Optional[bool] = None
    max_batch_size: Optional[int] = Field(None, ge=1)
    max_input_tokens: Optional[int] = Field(None, ge=1)
    max_new_tokens: Optional[int] = Field(None, ge=1)


class MemoryBreakdown(BaseModel):
    """The memory a plan relies on, per GPU (or, on CPU, of one copy's share of host RAM), in GB."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    capacity_gb: float
    weights_gb: float
    kv_cache_gb: float
    workspace_gb: float
    headroom_gb: float
    offloaded_gb: float = 0.0

    @property
    def used_gb(self) -> float:
        """Everything the plan places in device memory."""
        return self.weights_gb + self.kv_cache_gb + self.workspace_gb + self.headroom_gb

    @property
    def fits(self) -> bool:
        """Whether it all fits the capacity."""
        return self.used_gb <= self.capacity_gb + 1e-9


class OptimizationPlan(BaseModel):
    """What to apply to a model on some hardware, each choice with the reason for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    task: str
    hardware: Hardware
    facts_source: str
    parameter_count: Optional[int]
    dtype: Dtype
    tensor_parallel: int
    replicas: int = Field(
        1, ge=1, description="Model copies per instance (VM), each on its own tensor_parallel GPUs (CPU: its share of the cores)."
    )
    kernel_inject: bool
    quantization: Optional[Literal["int8"]]
    zero_offload: Optional[Literal["cpu", "nvme"]]
    cuda_graph: bool
    max_batch_size: int
    max_input_tokens: int
    max_new_tokens: int
    kv_cache_gb: float = Field(description="KV-cache budget per GPU: the memory left for it after everything else.")
    kv_cache_tokens: int = Field(description="Tokens of KV cache that budget holds (whole model, all sequences).")
    memory: MemoryBreakdown
    reasons: dict[str, str]
    overrides: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``OptimizationPlan.from_dict`` reads it back."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OptimizationPlan":
        """The plan ``to_dict`` wrote."""
        return cls.model_validate(data)

    def to_json(self) -> str:
        """The plan as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def describe(self) -> str:
        """A human-readable summary: the choices, the memory, and why."""
        memory = self.memory
        if self.hardware.kind == "gpu":
            where = "per GPU"
        else:
            where = "host RAM" if self.replicas == 1 else f"host RAM per copy (1/{self.replicas} of it)"
        lines = [
            f"Plan for {self.model} ({self.task}) on {self.hardware.describe()}",
            f"  dtype={self.dtype} tensor_parallel={self.tensor_parallel} replicas={self.replicas} kernel_inject={self.kernel_inject} "
            f"quantization={self.quantization} zero_offload={self.zero_offload} cuda_graph={self.cuda_graph}",
            f"  max_batch_size={self.max_batch_size} max_input_tokens={self.max_input_tokens} "
            f"max_new_tokens={self.max_new_tokens}",
            f"  memory {where}: weights {memory.weights_gb:.1f} + KV cache {memory.kv_cache_gb:.1f} + workspace "
            f"{memory.workspace_gb:.1f} + headroom {memory.headroom_gb:.1f} = {memory.used_gb:.1f} of "
            f"{memory.capacity_gb:.1f} GB" + (f" ({memory.offloaded_gb:.1f} GB offloaded)" if memory.offloaded_gb else ""),
            "  why:",
        ]
        lines += [f"    {choice}: {reason}" for choice, reason in self.reasons.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def plan(
    model: Union[str, ModelFacts],
    *,
    task: Optional[str] = None,
    sku: Optional[str] = None,
    hardware: Optional[Hardware] = None,
    **overrides: Any,
) -> OptimizationPlan:
    """Plan the optimizations for ``model`` on an Azure SKU, given hardware, or this machine.

    ``model`` is a model reference (local folder, cached or well-known hub id, ...) or resolved
    facts. ``sku`` is a catalog name, unique prefix or alias (:mod:`mii_azure.skus`); an alias of
    several sizes (``"ND96"``, ``"A100"``, ...) plans on each and takes the cheapest on which the
    plan fits without int8 or offload the overrides did not ask for (else the cheapest on which it
    fits at all), saying why in ``reasons["sku"]``. A plan is a what-if: sizes a deployment cannot
    use (not on the managed online endpoint list, GPUs the serving image's CUDA cannot build for) are
    planned too; :func:`mii_azure.package` refuses them. ``overrides`` are the fields of
    :class:`PlanOverrides`; an override that cannot work raises ConfigError naming the conflict and
    the nearest setting that would.
    """
    from .sku_choice import choose_sku

    if sku is not None and hardware is not None:
        raise ConfigError("Pass either sku= or hardware=, not both.")
    facts = model if isinstance(model, ModelFacts) else resolve_model(model)
    try:
        choices = PlanOverrides(**overrides)
    except Exception as exc:  # pydantic's ValidationError or an unknown keyword
        raise ConfigError(f"Invalid plan override: {exc}", overrides=overrides) from None
    if sku is not None:
        return choose_sku(facts, sku, task=task, overrides=choices, allow_unlisted=True, cuda_major=None).plan
    return make_plan(facts, hardware or Hardware.local(), task=task, overrides=choices)


def make_plan(
    facts: ModelFacts,
    hardware: Hardware,
    *,
    task: Optional[str] = None,
    overrides: PlanOverrides = PlanOverrides(),
) -> OptimizationPlan:
    """The plan for ``facts`` on ``hardware`` (pure)."""
    task_name = resolve_task(facts, task)
    planner = _CpuPlanner if hardware.kind == "cpu" else _GpuPlanner
    return planner(facts, hardware, task_name, overrides).plan()


class _Planner:
    """Shared state and helpers of one planning run."""

    def __init__(self, facts: ModelFacts, hardware: Hardware, task: str, overrides: PlanOverrides) -> None:
        self.facts = facts
        self.hardware = hardware
        self.task = task
        self.overrides = overrides
        self.reasons: dict[str, str] = {}
        self.generation = task in GENERATION_TASKS
        self.replicas = 1
        self._check_input_override()
        if overrides.replicas is not None and overrides.replicas < 1:
            raise ConfigError(
                f"replicas={overrides.replicas} would serve no model copy; use replicas=1 (or more, where the "
                "hardware holds more copies).",
                conflict="replicas",
                nearest=1,
            )
        context = facts.max_positions or UNBOUNDED_CONTEXT
        if facts.is_diffusion:
            self.max_new_tokens = 0
            self.max_input_tokens = overrides.max_input_tokens or CLIP_PROMPT_TOKENS
        elif task == "text-generation" and facts.max_positions:
            self._fit_prompt_and_continuation(context)
        else:
            self.max_new_tokens = (overrides.max_new_tokens or DEFAULT_NEW_TOKENS) if self.generation else 0
            self.max_input_tokens = overrides.max_input_tokens or context

    @property
    def parameters(self) -> float:
        if not self.facts.parameter_count:
            raise ConfigError(
                f"The parameter count of {self.facts.ref.reference!r} is unknown, so its memory cannot be planned. "
                "Pass a model folder with a complete config.json or its safetensors weights.",
                model=self.facts.ref.reference,
            )
        return float(self.facts.parameter_count)

    @property
    def sequence_tokens(self) -> int:
        return self.max_input_tokens + self.max_new_tokens

    @staticmethod
    def kv_dtype(dtype: str, quantization: Optional[str]) -> str:
        """The KV cache stays in half precision when int8 weights are asked for next to fp32."""
        return "float16" if dtype == "float32" and quantization else dtype

    def kv_bytes_per_token(self, dtype: str) -> float:
        """KV-cache bytes per token for the whole model (0 for encoders and pipelines)."""
        facts = self.facts
        if not self.generation or not (facts.num_layers and facts.hidden_size and facts.num_attention_heads):
            return 0.0
        head_dim = facts.hidden_size / facts.num_attention_heads
        kv_heads = facts.num_kv_heads or facts.num_attention_heads
        stacks = 2 if facts.is_encoder_decoder else 1  # decoder self-attention plus cross-attention
        return 2 * facts.num_layers * kv_heads * head_dim * _BYTES[dtype] * stacks

    def workspace_gb(self, batch: int, dtype: str, tensor_parallel: int = 1) -> float:
        if self.facts.is_diffusion:
            side = (self.facts.max_positions or 64) * 8  # latent sample size x the VAE's factor of 8
            return BASE_WORKSPACE_GB + batch * DIFFUSION_GB_PER_IMAGE_512 * (side / 512) ** 2
        hidden = self.facts.hidden_size or 0
        activations = 4 * batch * self.sequence_tokens * hidden * _BYTES[dtype] / tensor_parallel
        logits = batch * (self.facts.vocab_size or 0) * 4 if self.generation else 0
        return BASE_WORKSPACE_GB + (activations + logits) / GB

    def weights_gb(self, dtype: str, quantization: Optional[str]) -> float:
        per_parameter = 1.02 if quantization == "int8" else _BYTES[dtype]
        return self.parameters * per_parameter / GB

    def override_note(self, name: str) -> str:
        return f"{name} was set by the caller"

    def _fit_prompt_and_continuation(self, positions: int) -> None:
        """Prompt and continuation share a decoder's positions."""
        given_input, given_new = self.overrides.max_input_tokens, self.overrides.max_new_tokens
        if given_new is not None and given_new >= positions:
            raise ConfigError(
                f"max_new_tokens={given_new} leaves no room for a prompt in the {positions} positions of "
                f"{self.facts.name}; use max_new_tokens={positions // 4} (or at most {positions - 1}).",
                conflict="max_new_tokens",
                nearest=positions // 4,
            )
        if given_input is not None and given_new is not None and given_input + given_new > positions:
            raise ConfigError(
                f"max_input_tokens={given_input} plus max_new_tokens={given_new} exceed the {positions} positions "
                f"of {self.facts.name}; use max_input_tokens={positions - given_new}.",
                conflict="max_input_tokens",
                nearest=positions - given_new,
            )
        if given_input is not None:
            self.max_input_tokens = given_input
            self.max_new_tokens = given_new or min(DEFAULT_NEW_TOKENS, positions - given_input)
        else:
            self.max_new_tokens = given_new or min(DEFAULT_NEW_TOKENS, positions // 4)
            self.max_input_tokens = positions - self.max_new_tokens

    def _check_input_override(self) -> None:
        limit = CLIP_PROMPT_TOKENS if self.facts.is_diffusion else self.facts.max_positions
        given = self.overrides.max_input_tokens
        if given and limit and given > limit and self.facts.is_diffusion:
            raise ConfigError(
                f"max_input_tokens={given} is more than the CLIP text encoder of {self.facts.name} reads "
                f"({limit} tokens); use max_input_tokens={limit} or less.",
                conflict="max_input_tokens",
                nearest=limit,
            )
        if given and limit and given > limit:
            nearest = limit - 1 if self.task == "text-generation" else limit
            raise ConfigError(
                f"max_input_tokens={given} is more than {self.facts.name} attends over ({limit} positions); "
                f"use max_input_tokens={nearest} or less.",
                conflict="max_input_tokens",
                nearest=nearest,
                limit=limit,
            )
        if given and limit and given >= limit and self.task == "text-generation":
            raise ConfigError(
                f"max_input_tokens={given} leaves no position for a new token in {self.facts.name}'s {limit}; "
                f"use max_input_tokens={limit - 1} or less.",
                conflict="max_input_tokens",
                nearest=limit - 1,
            )

    def common_reasons(self) -> None:
        self.reasons["model facts"] = (
            f"{self.facts.parameter_count:,} parameters ({self.facts.parameter_count_source}); "
            f"configuration from the {self.facts.config_source}."
        )
        if self.generation:
            self.reasons["sequence"] = (
                f"KV cache sized for {self.max_input_tokens} input + {self.max_new_tokens} new tokens per sequence."
            )

    def finish(self, *, memory: MemoryBreakdown, kv_bytes_per_token: float, **choices: Any) -> OptimizationPlan:
        """The plan, its KV-cache budget being what ``memory`` leaves after weights, workspace, headroom."""
        free = max(0.0, memory.capacity_gb - memory.weights_gb - memory.workspace_gb - memory.headroom_gb)
        choices["kv_cache_gb"] = round(free, 3)
        choices["kv_cache_tokens"] = int(free * GB / kv_bytes_per_token) if kv_bytes_per_token else 0
        given = tuple(name for name, value in self.overrides.model_dump().items() if value is not None)
        return OptimizationPlan(
            model=self.facts.ref.reference,
            task=self.task,
            hardware=self.hardware,
            facts_source=self.facts.config_source,
            parameter_count=self.facts.parameter_count,
            max_input_tokens=self.max_input_tokens,
            max_new_tokens=self.max_new_tokens,
            reasons=self.reasons,
            overrides=given,
            memory=memory,
            **choices,
        )


class _CpuPlanner(_Planner):
    """CPU serving: no DeepSpeed kernels; the fastest dtype that keeps the model correct."""

    def plan(self) -> OptimizationPlan:
        overrides, hardware = self.overrides, self.hardware
        for name, value, fix in (
            ("kernel_inject", overrides.kernel_inject, "kernel_inject=False"),
            ("cuda_graph", overrides.cuda_graph, "cuda_graph=False"),
            ("zero_offload", overrides.zero_offload not in (None, "none"), "zero_offload=None"),
        ):
            if value:
                raise ConfigError(
                    f"{name} needs GPUs, and {hardware.describe()} has none; use {fix} or pick a GPU sku=.",
                    conflict=name,
                )
        self.common_reasons()
        if overrides.dtype:
            self.reasons["dtype"] = self.override_note("dtype") + "."
        dtype = overrides.dtype or self._cpu_dtype()
        quantization = self._cpu_quantization()
        if not hardware.ram_gb:
            raise ConfigError(
                f"The RAM of {hardware.name} is unknown, so memory cannot be planned; describe the machine with "
                "Hardware.cpu(cores=..., ram_gb=...).",
                conflict="hardware",
            )
        tensor_parallel = self._cpu_tensor_parallel()
        self.replicas = self._cpu_replicas(tensor_parallel)
        fitting = CPU_BATCH
        while fitting > 1 and not self._host_memory(dtype, quantization, fitting).fits:
            fitting //= 2
        self._check_cpu_copies_fit(dtype, quantization)
        batch = overrides.max_batch_size or fitting
        memory = self._host_memory(dtype, quantization, batch)
        if not memory.fits and overrides.max_batch_size and self._host_memory(dtype, quantization, fitting).fits:
            raise ConfigError(
                f"max_batch_size={batch} needs about {memory.used_gb:.1f} GB of RAM, and {hardware.describe()} has "
                f"{memory.capacity_gb:.1f} GB usable; use max_batch_size={fitting}.",
                conflict="max_batch_size",
                nearest=fitting,
            )
        if not memory.fits:
            raise ConfigError(
                f"{self.facts.name} needs about {memory.used_gb:.1f} GB of RAM in {dtype} at batch {batch}, and "
                f"{hardware.describe()} has {memory.capacity_gb:.1f} GB usable; use quantization='int8' or a GPU sku=.",
                needed_gb=memory.used_gb,
                capacity_gb=memory.capacity_gb,
            )
        self.reasons["kernel_inject"] = (
            self.override_note("kernel_inject") + ": no kernel injection."
            if overrides.kernel_inject is False
            else "off: DeepSpeed-Inference's injected kernels are CUDA kernels."
        )
        self.reasons["cuda_graph"] = (
            self.override_note("cuda_graph") + ": no CUDA graphs."
            if overrides.cuda_graph is False
            else "off: CUDA graphs need a GPU."
        )
        self.reasons["zero_offload"] = "none: the weights already live in host memory."
        self.reasons["max_batch_size"] = (
            self.override_note("max_batch_size") + "."
            if overrides.max_batch_size
            else f"{batch}: batching amortizes each pass over the weights (CPU throughput grows up to batch "
            f"{CPU_BATCH})" + ("." if batch == CPU_BATCH else "; smaller so that the KV cache fits in RAM.")
        )
        return self.finish(
            dtype=dtype,
            tensor_parallel=tensor_parallel,
            replicas=self.replicas,
            kernel_inject=False,
            quantization=quantization,
            zero_offload=None,
            cuda_graph=False,
            max_batch_size=batch,
            memory=memory,
            kv_bytes_per_token=self.kv_bytes_per_token(dtype),
        )

    def _cpu_replicas(self, tensor_parallel: int) -> int:
        """One copy using every core, unless the caller asks for more (each gets cores // replicas threads)."""
        given = self.overrides.replicas
        cores = self.hardware.cpu_cores
        if given is None:
            self.reasons["replicas"] = (
                "1: one copy using every core is fastest on a CPU; more copies would split the same cores and "
                "memory bandwidth, and each would read its own weights."
            )
            return 1
        most = max(1, cores // tensor_parallel)
        if given > most:
            needed = f"{given} copies of {tensor_parallel} process{'es' if tensor_parallel > 1 else ''} need {given * tensor_parallel} cores"
            raise ConfigError(
                f"replicas={given}: {needed}, more than the {cores} cores of {self.hardware.name}; use replicas={most}.",
                conflict="replicas",
                nearest=most,
                cores=cores,
            )
        self.reasons["replicas"] = self.override_note("replicas") + (
            f": {given} copies, each with {cores // given} of the {cores} cores and 1/{given} of the host RAM."
            if given > 1
            else "."
        )
        return given

    def _check_cpu_copies_fit(self, dtype: str, quantization: Optional[str]) -> None:
        """ConfigError naming the most copies that fit, when the asked-for copies do not fit the RAM at batch 1."""
        if self.replicas == 1 or self._host_memory(dtype, quantization, 1).fits:
            return
        asked = self.replicas
        nearest = 1
        for copies in range(asked - 1, 0, -1):
            self.replicas = copies
            if self._host_memory(dtype, quantization, 1).fits:
                nearest = copies
                break
        self.replicas = asked
        memory = self._host_memory(dtype, quantization, 1)
        raise ConfigError(
            f"replicas={asked} copies of {self.facts.name} need about {asked * (memory.used_gb - memory.headroom_gb):.1f} GB "
            f"of RAM at batch 1, and {self.hardware.describe()} has {asked * memory.capacity_gb:.1f} GB usable; "
            f"use replicas={nearest}.",
            conflict="replicas",
            nearest=nearest,
        )

    def _cpu_tensor_parallel(self) -> int:
        given = self.overrides.tensor_parallel
        if given is None or given == 1:
            self.reasons["tensor_parallel"] = (
                self.override_note("tensor_parallel") + "." if given else
                "1: one CPU process serves the model; slicing it across processes only splits the same cores."
            )
            return 1
        if self.facts.model_type in AUTOTP_UNSUPPORTED or self.facts.is_diffusion:
            raise ConfigError(
                f"tensor_parallel={given} on CPU slices the model with DeepSpeed's AutoTP, which cannot slice "
                f"{self.facts.architecture}; use tensor_parallel=1.",
                conflict="tensor_parallel",
                nearest=1,
            )
        heads = self.facts.num_attention_heads or 1
        cores = self.hardware.cpu_cores
        if given > cores or heads % given:
            valid = [degree for degree in range(1, cores + 1) if heads % degree == 0]
            raise ConfigError(
                f"tensor_parallel={given} on {self.hardware.describe()} must divide the {heads} attention heads and "
                f"not exceed the {cores} cores; use tensor_parallel={max(valid)}.",
                conflict="tensor_parallel",
                nearest=max(valid),
            )
        self.reasons["tensor_parallel"] = (
            self.override_note("tensor_parallel") + f": AutoTP slices the model across {given} CPU processes (gloo)."
        )
        return given

    def _host_memory(self, dtype: str, quantization: Optional[str], batch: int) -> MemoryBreakdown:
        """One copy's memory in its share of the usable host RAM (all of it with one copy)."""
        capacity = (self.hardware.ram_gb or 0.0) * HOST_RAM_USABLE / self.replicas
        return MemoryBreakdown(
            capacity_gb=capacity,
            weights_gb=self.weights_gb(dtype, quantization),
            kv_cache_gb=self.kv_bytes_per_token(dtype) * batch * self.sequence_tokens / GB,
            workspace_gb=self.workspace_gb(batch, dtype),
            headroom_gb=capacity * HEADROOM_FRACTION,
        )

    def _cpu_dtype(self) -> str:
        if self.facts.is_diffusion:
            self.reasons["dtype"] = "float32: diffusion pipelines are run in full precision on CPU (the VAE degrades in bf16)."
            return "float32"
        if not self.generation:
            self.reasons["dtype"] = (
                f"float32: {self.task} is one compute-light pass per input, and its scores and vectors are "
                "compared with fp32 references, so halving precision would cost accuracy for little speed."
            )
            return "float32"
        if self.hardware.bf16:
            self.reasons["dtype"] = (
                "bfloat16: decoding reads every weight once per token, this CPU has native bf16 instructions "
                "(AVX-512 BF16/AMX) that halve those bytes, and bf16 keeps fp32's range."
            )
            return "bfloat16"
        self.reasons["dtype"] = "float32: this CPU has no native bf16 arithmetic, so lower precision would be emulated and slower."
        return "float32"

    def _cpu_quantization(self) -> Optional[str]:
        if self.overrides.quantization != "int8":
            self.reasons["quantization"] = "none: int8 dynamic quantization only on request on CPU (it changes outputs)."
            return None
        if self.facts.model_type == "gpt2" or self.facts.is_diffusion:
            raise ConfigError(
                f"quantization='int8' on CPU quantizes nn.Linear layers, and {self.facts.architecture} keeps its "
                "weights elsewhere (GPT-2's Conv1D, diffusion convolutions); use quantization=None.",
                conflict="quantization",
            )
        self.reasons["quantization"] = self.override_note("quantization") + ": torch dynamic int8 quantization of nn.Linear."
        return "int8"


class _GpuPlanner(_Planner):
    """GPU serving with DeepSpeed-Inference."""

    def plan(self) -> OptimizationPlan:
        self.common_reasons()
        dtype = self._gpu_dtype()
        kernel_inject = self._kernel_inject()
        quantization_options = self._quantization_options()
        fitted = self._fit(dtype, quantization_options)
        if fitted is None:
            return self._offload_plan(dtype, kernel_inject)
        quantization, tensor_parallel = fitted
        replicas = self._gpu_replicas(dtype, tensor_parallel)
        batch = self._batch(dtype, quantization, tensor_parallel)
        memory = self._memory(dtype, quantization, tensor_parallel, batch)
        cuda_graph = self._cuda_graph(tensor_parallel, offload=None)
        return self.finish(
            dtype=dtype,
            tensor_parallel=tensor_parallel,
            replicas=replicas,
            kernel_inject=kernel_inject,
            quantization=quantization,
            zero_offload=None,
            cuda_graph=cuda_graph,
            max_batch_size=batch,
            memory=memory,
            kv_bytes_per_token=self.kv_bytes_per_token(self.kv_dtype(dtype, quantization)) / tensor_parallel,
        )

    # --- choices ---------------------------------------------------------------------------
    def _gpu_replicas(self, dtype: str, tensor_parallel: int) -> int:
        """Copies of ``tensor_parallel`` GPUs each: as many as the GPUs hold, unless host memory cannot
        stage the weights of every copy while they load (they load at once, one server worker each)."""
        gpus = self.hardware.gpus
        most = gpus // tensor_parallel
        given = self.overrides.replicas
        tp_text = f"{tensor_parallel} GPU{'s' if tensor_parallel > 1 else ''}"
        if given is not None and given > most:
            raise ConfigError(
                f"replicas={given} copies of {tp_text} each need {given * tensor_parallel} GPUs, and {self.hardware.name} "
                f"has {gpus}; use replicas={most}.",
                conflict="replicas",
                nearest=most,
            )
        staged = self.weights_gb(dtype, None)  # a copy's checkpoint passes through host memory as it loads
        ram = (self.hardware.ram_gb or 0.0) * HOST_RAM_USABLE
        held = max(1, min(most, int(ram // staged))) if ram and staged else most
        if given is not None:
            if given > held:
                raise ConfigError(
                    f"replicas={given} copies each load {staged:.0f} GB of {dtype} weights through host memory at "
                    f"the same time, and {self.hardware.name} has {ram:.0f} GB usable; use replicas={held}.",
                    conflict="replicas",
                    nearest=held,
                )
            idle = gpus - given * tensor_parallel
            self.reasons["replicas"] = self.override_note("replicas") + (
                f": {given} cop{'ies' if given > 1 else 'y'} of {tp_text} each"
                + (f"; {idle} of the {gpus} GPUs stay idle." if idle else ".")
            )
            return given
        if held < most:
            self.reasons["replicas"] = (
                f"{held}: the {gpus} GPUs would hold {most} copies, but each copy loads {staged:.0f} GB of weights "
                f"through host memory and {self.hardware.name} has {ram:.0f} GB usable."
            )
        elif most == 1 and gpus == 1:
            self.reasons["replicas"] = "1: the instance has one GPU, which holds one copy."
        elif most == 1:
            self.reasons["replicas"] = f"1: tensor parallelism spreads the one copy over all {gpus} GPUs."
        else:
            self.reasons["replicas"] = (
                f"{most}: the {gpus} GPUs hold {most} copies of {tp_text} each; every copy (one server worker) "
                "batches its own requests, so throughput grows with the copies and no GPU stays idle."
            )
        return held

    def _gpu_dtype(self) -> str:
        chosen = self.overrides.dtype
        if chosen == "bfloat16" and not self.hardware.bf16:
            raise ConfigError(
                f"dtype='bfloat16' is not supported by the {self.hardware.gpu_model} GPUs of {self.hardware.name}; "
                "use dtype='float16'.",
                conflict="dtype",
            )
        if chosen:
            self.reasons["dtype"] = self.override_note("dtype") + "."
            return chosen
        if self.facts.dtype == "bfloat16" and self.hardware.bf16:
            self.reasons["dtype"] = "bfloat16: the model was trained in bf16 and these GPUs run it natively."
            return "bfloat16"
        if self.facts.dtype == "bfloat16":
            self.reasons["dtype"] = (
                f"float16: the model was trained in bf16, but the {self.hardware.gpu_model} has no bf16 tensor "
                "cores; fp16 is the closest native half precision."
            )
        else:
            self.reasons["dtype"] = (
                f"float16: half precision halves memory and bandwidth against fp32, and the model "
                f"({self.facts.dtype}) was not trained in bf16"
                + ("." if self.hardware.bf16 else f"; the {self.hardware.gpu_model} has no bf16 tensor cores anyway.")
            )
        return "float16"

    def _kernel_inject(self) -> bool:
        model_type = self.facts.model_type or ""
        has_policy = model_type in INJECTION_POLICIES and model_type not in BROKEN_INJECTION
        if self.overrides.kernel_inject is not None:
            if self.overrides.kernel_inject and not has_policy:
                why = BROKEN_INJECTION.get(model_type, f"DeepSpeed-Inference has no injection policy for {model_type}")
                raise ConfigError(
                    f"kernel_inject=True cannot work for {self.facts.architecture}: {why}; use kernel_inject=False "
                    "(AutoTP tensor slicing still applies).",
                    conflict="kernel_inject",
                )
            self.reasons["kernel_inject"] = self.override_note("kernel_inject") + "."
            return self.overrides.kernel_inject
        if has_policy:
            what = "UNet, VAE and CLIP text encoder" if self.facts.is_diffusion else f"{model_type} transformer layers"
            self.reasons["kernel_inject"] = f"on: DeepSpeed-Inference has fused kernels for {what}."
            return True
        if model_type in BROKEN_INJECTION:
            self.reasons["kernel_inject"] = f"off: {BROKEN_INJECTION[model_type]}; AutoTP tensor slicing is used instead."
        else:
            self.reasons["kernel_inject"] = f"off: no injection policy for {model_type}; AutoTP tensor slicing is used instead."
        return False

    def _quantization_options(self) -> list[Optional[str]]:
        asked = self.overrides.quantization
        int8_ok = (self.facts.model_type or "") in INT8_FAMILIES
        if asked == "int8" and not int8_ok:
            raise ConfigError(
                f"quantization='int8' is not supported for {self.facts.architecture} by DeepSpeed-Inference "
                f"(int8 kernels exist for {', '.join(sorted(INT8_FAMILIES))}); use quantization=None.",
                conflict="quantization",
            )
        if asked == "int8":
            return ["int8"]
        if asked == "none" or not int8_ok:
            return [None]
        return [None, "int8"]

    def _tensor_parallel_options(self) -> list[int]:
        heads = self.facts.num_attention_heads or 1
        gpus = self.hardware.gpus
        given = self.overrides.tensor_parallel
        valid = [degree for degree in range(1, gpus + 1) if heads % degree == 0 and gpus % degree == 0]
        if given is None:
            return valid
        if given > gpus:
            raise ConfigError(
                f"tensor_parallel={given} exceeds the {gpus} GPU{'s' if gpus > 1 else ''} of {self.hardware.name}; "
                f"use tensor_parallel={max(valid)} or a SKU with more GPUs.",
                conflict="tensor_parallel",
                nearest=max(valid),
            )
        if heads % given or gpus % given:
            nearest = min(valid, key=lambda degree: (abs(degree - given), -degree))
            what = (
                f"the {heads} attention heads of {self.facts.name}"
                if heads % given
                else f"the {gpus} GPUs of {self.hardware.name} (each replica uses the same number of GPUs)"
            )
            raise ConfigError(
                f"tensor_parallel={given} does not divide {what}; use tensor_parallel={nearest}.",
                conflict="tensor_parallel",
                nearest=nearest,
            )
        return [given]

    def _fit(self, dtype: str, quantizations: list[Optional[str]]) -> Optional[tuple[Optional[str], int]]:
        """The first (quantization, tensor_parallel) whose weights, KV cache for one sequence,
        workspace and headroom fit each GPU; None if none does."""
        options = self._tensor_parallel_options()
        offload_asked = self.overrides.zero_offload not in (None, "none")
        offload_compatible = self.overrides.tensor_parallel in (None, 1) and self.overrides.quantization in (None, "none")
        if offload_asked:
            if not offload_compatible:
                raise ConfigError(
                    "ZeRO-Inference offload streams half-precision weights to one GPU per replica; with "
                    f"zero_offload={self.overrides.zero_offload!r} use tensor_parallel=1 and quantization=None.",
                    conflict="zero_offload",
                )
            return None
        for quantization in quantizations:
            for degree in options:
                if self._memory(dtype, quantization, degree, batch=1).fits:
                    self._explain_fit(dtype, quantization, degree)
                    return quantization, degree
        if self.overrides.zero_offload == "none" or not offload_compatible:
            self._explain_override_misfit(dtype, quantizations, options)
        return None

    def _explain_fit(self, dtype: str, quantization: Optional[str], degree: int) -> None:
        capacity = self.hardware.gpu_memory_gb
        fp_weights = self.weights_gb(dtype, None)
        if quantization == "int8":
            self.reasons["quantization"] = (
                self.override_note("quantization") + "."
                if self.overrides.quantization == "int8"
                else f"int8: {fp_weights:.0f} GB of {dtype} weights do not fit {self.hardware.gpus}x {capacity:g} GB "
                f"with KV cache and headroom; int8 weights ({self.weights_gb(dtype, 'int8'):.0f} GB) do."
            )
        else:
            self.reasons["quantization"] = f"none: {dtype} weights fit, so no accuracy is traded for memory."
        if self.overrides.quantization == "none":
            self.reasons["quantization"] = self.override_note("quantization") + f": {dtype} weights, not quantized."
        if self.overrides.tensor_parallel is not None:
            self.reasons["tensor_parallel"] = self.override_note("tensor_parallel") + "."
        elif degree == 1:
            self.reasons["tensor_parallel"] = "1: the model fits one GPU, so no GPU-to-GPU communication is needed."
        else:
            self.reasons["tensor_parallel"] = (
                f"{degree}: the smallest degree that divides the {self.facts.num_attention_heads} heads and holds "
                f"{self.weights_gb(dtype, quantization) / degree:.1f} GB of weights per {capacity:g} GB GPU with "
                "KV cache, workspace and headroom."
            )
        self.reasons["zero_offload"] = (
            self.override_note("zero_offload") + ": the weights stay in GPU memory."
            if self.overrides.zero_offload == "none"
            else "none: the weights fit in GPU memory."
        )

    def _explain_override_misfit(self, dtype: str, quantizations: list[Optional[str]], options: list[int]) -> None:
        quantization = quantizations[-1]
        degree = options[-1]
        memory = self._memory(dtype, quantization, degree, batch=1)
        nearest = self._nearest_fitting(dtype)
        raise ConfigError(
            f"With tensor_parallel={degree} and quantization={quantization!r}, {self.facts.name} needs "
            f"{memory.used_gb:.1f} GB per GPU and {self.hardware.name} has {memory.capacity_gb:g} GB; "
            f"{nearest}.",
            conflict="memory",
            needed_gb=memory.used_gb,
            capacity_gb=memory.capacity_gb,
        )

    def _nearest_fitting(self, dtype: str) -> str:
        heads = self.facts.num_attention_heads or 1
        gpus = self.hardware.gpus
        for quantization in ([None, "int8"] if (self.facts.model_type or "") in INT8_FAMILIES else [None]):
            for degree in range(1, gpus + 1):
                if heads % degree == 0 and gpus % degree == 0 and self._memory(dtype, quantization, degree, 1).fits:
                    return f"use tensor_parallel={degree}, quantization={quantization!r} (or leave both to the planner)"
        if self.overrides.zero_offload == "none":
            return "allow zero_offload (it streams the weights from host memory or NVMe) or pick a SKU with more GPU memory"
        return "leave tensor_parallel and quantization to the planner (it offloads with ZeRO-Inference) or pick a larger SKU"

    def _batch(self, dtype: str, quantization: Optional[str], tensor_parallel: int) -> int:
        if self.overrides.max_batch_size:
            memory = self._memory(dtype, quantization, tensor_parallel, self.overrides.max_batch_size)
            if not memory.fits:
                fitting = self._largest_fitting_batch(dtype, quantization, tensor_parallel)
                raise ConfigError(
                    f"max_batch_size={self.overrides.max_batch_size} needs {memory.used_gb:.1f} GB per GPU for its KV "
                    f"cache and activations, more than the {memory.capacity_gb:g} GB there; use max_batch_size={fitting}.",
                    conflict="max_batch_size",
                    nearest=fitting,
                )
            self.reasons["max_batch_size"] = self.override_note("max_batch_size") + "."
            return self.overrides.max_batch_size
        batch = self._largest_fitting_batch(dtype, quantization, tensor_parallel)
        what = "KV cache" if self.generation else "activations"
        self.reasons["max_batch_size"] = (
            f"{batch}: the largest power of two (up to {MAX_PLANNED_BATCH}) whose {what} for full-length inputs "
            "fit next to the weights."
        )
        return batch

    def _largest_fitting_batch(self, dtype: str, quantization: Optional[str], tensor_parallel: int) -> int:
        batch = 1
        while batch * 2 <= MAX_PLANNED_BATCH and self._memory(dtype, quantization, tensor_parallel, batch * 2).fits:
            batch *= 2
        return batch

    def _cuda_graph(self, tensor_parallel: int, offload: Optional[str]) -> bool:
        given = self.overrides.cuda_graph
        if given:
            if offload:
                raise ConfigError(
                    "cuda_graph=True cannot be combined with ZeRO-Inference offload (weights stream in during "
                    "the pass); use cuda_graph=False, or a SKU where the model fits in GPU memory.",
                    conflict="cuda_graph",
                )
            if tensor_parallel > 1:
                raise ConfigError(
                    f"cuda_graph=True is not supported by DeepSpeed-Inference with tensor_parallel={tensor_parallel}; "
                    "use cuda_graph=False, or tensor_parallel=1 on a GPU that holds the model.",
                    conflict="cuda_graph",
                )
            if self.task not in STATIC_SHAPE_TASKS:
                raise ConfigError(
                    f"cuda_graph=True needs fixed shapes per call, and {self.task} changes shape with every new "
                    "token (its KV cache grows); use cuda_graph=False.",
                    conflict="cuda_graph",
                )
        if given is not None:
            self.reasons["cuda_graph"] = self.override_note("cuda_graph") + "."
            return given
        if offload:
            self.reasons["cuda_graph"] = "off: offloaded weights stream in during each pass, which a graph cannot capture."
        elif tensor_parallel > 1:
            self.reasons["cuda_graph"] = "off: DeepSpeed-Inference does not capture CUDA graphs with tensor parallelism."
        elif self.task not in STATIC_SHAPE_TASKS:
            self.reasons["cuda_graph"] = "off: generation changes shapes every step (growing KV cache), so a graph would be re-captured."
        else:
            self.reasons["cuda_graph"] = (
                f"on: {self.task} calls are padded to shape buckets (batch in powers of two, inputs in "
                "64-token steps) and each bucket's captured graph is replayed, which removes the kernel-launch "
                "overhead that dominates at small batches."
            )
            return True
        return False

    def _offload_plan(self, dtype: str, kernel_inject: bool) -> OptimizationPlan:
        """ZeRO-Inference: weights in host memory (or NVMe), streamed to one GPU layer by layer."""
        weights = self.weights_gb(dtype, None)
        ram = self.hardware.ram_gb or 0.0
        asked = self.overrides.zero_offload
        target = asked if asked in ("cpu", "nvme") else ("cpu" if weights <= ram * HOST_RAM_USABLE else "nvme")
        if self.overrides.zero_offload == "none":
            self._explain_override_misfit(dtype, [None], self._tensor_parallel_options())
        if self.overrides.replicas is not None and self.overrides.replicas > 1:
            why = "as asked" if asked in ("cpu", "nvme") else f"because its weights do not fit {self.hardware.name}'s GPUs"
            raise ConfigError(
                f"replicas={self.overrides.replicas}: {self.facts.name} is served with ZeRO-Inference offload ({why}), "
                f"which streams the weights from the host memory or NVMe the whole VM shares, so it serves one copy "
                "per VM; use replicas=1.",
                conflict="replicas",
                nearest=1,
            )
        if asked == "cpu" and weights > ram * HOST_RAM_USABLE:
            raise ConfigError(
                f"zero_offload='cpu' needs {weights:.0f} GB of host memory for the weights and {self.hardware.name} "
                f"has {ram * HOST_RAM_USABLE:.0f} GB usable; use zero_offload='nvme'.",
                conflict="zero_offload",
            )
        layers = self.facts.num_layers or 1
        layer_gb = weights / layers
        capacity = self.hardware.gpu_memory_gb
        batch = 1
        memory = self._offload_memory(dtype, layer_gb, weights, batch)
        if not memory.fits:
            raise ConfigError(
                f"{self.facts.name} cannot fit {self.hardware.name} even with ZeRO-Inference offload: one layer "
                f"({layer_gb:.1f} GB) with KV cache and workspace needs {memory.used_gb:.1f} GB of a {capacity:g} GB GPU. "
                "Pick a SKU with more GPU memory.",
                conflict="memory",
            )
        while batch * 2 <= MAX_PLANNED_BATCH and self._offload_memory(dtype, layer_gb, weights, batch * 2).fits:
            batch *= 2
        fitting = batch
        if self.overrides.max_batch_size:
            batch = self.overrides.max_batch_size
            memory = self._offload_memory(dtype, layer_gb, weights, batch)
            if not memory.fits:
                raise ConfigError(
                    f"max_batch_size={batch} does not fit next to the streamed layers on {self.hardware.name}; "
                    f"use max_batch_size={fitting}.",
                    conflict="max_batch_size",
                    nearest=fitting,
                )
        memory = self._offload_memory(dtype, layer_gb, weights, batch)
        int8_weights = self.weights_gb(dtype, "int8")
        self.reasons["quantization"] = (
            "none: ZeRO-Inference streams fp16 weights; "
            + (
                f"even int8 ({int8_weights:.0f} GB) does not fit {self.hardware.gpus}x {capacity:g} GB."
                if (self.facts.model_type or "") in INT8_FAMILIES
                else f"{weights:.0f} GB of weights do not fit {self.hardware.gpus}x {capacity:g} GB."
            )
        )
        self.reasons["tensor_parallel"] = "1: with offload one GPU streams the whole model layer by layer from the host."
        self.reasons["replicas"] = (
            self.override_note("replicas") + "."
            if self.overrides.replicas == 1
            else "1: ZeRO-Inference streams the weights from host memory or NVMe, which the whole VM shares, so "
            "more copies would split that bandwidth (and need more host memory) instead of adding throughput."
        )
        host = f"host memory has {ram:.0f} GB" if ram else "the catalog does not give this SKU's host memory"
        where = "host memory" if target == "cpu" else f"local NVMe (it needs {weights:.0f} GB; {host})"
        self.reasons["zero_offload"] = (
            self.override_note("zero_offload") + f": weights kept in {where}."
            if asked in ("cpu", "nvme")
            else f"{target}: the weights do not fit in GPU memory, so ZeRO-Inference keeps them in {where} and "
            "streams them layer by layer; expect throughput bound by PCIe."
        )
        self.reasons["max_batch_size"] = (
            self.override_note("max_batch_size") + "."
            if self.overrides.max_batch_size
            else f"{batch}: large batches amortize each layer's transfer; the largest power of two whose KV cache fits."
        )
        cuda_graph = self._cuda_graph(1, offload=target)
        return self.finish(
            dtype=dtype,
            tensor_parallel=1,
            replicas=1,
            kernel_inject=kernel_inject,
            quantization=None,
            zero_offload=target,
            cuda_graph=cuda_graph,
            max_batch_size=batch,
            memory=memory,
            kv_bytes_per_token=self.kv_bytes_per_token(dtype),
        )

    # --- memory ----------------------------------------------------------------------------
    def _memory(self, dtype: str, quantization: Optional[str], tensor_parallel: int, batch: int) -> MemoryBreakdown:
        capacity = self.hardware.gpu_memory_gb
        kv_dtype = self.kv_dtype(dtype, quantization)
        return MemoryBreakdown(
            capacity_gb=capacity,
            weights_gb=self.weights_gb(dtype, quantization) / tensor_parallel,
            kv_cache_gb=self.kv_bytes_per_token(kv_dtype) * batch * self.sequence_tokens / tensor_parallel / GB,
            workspace_gb=self.workspace_gb(batch, dtype, tensor_parallel),
            headroom_gb=capacity * HEADROOM_FRACTION,
        )

    def _offload_memory(self, dtype: str, layer_gb: float, weights_gb: float, batch: int) -> MemoryBreakdown:
        capacity = self.hardware.gpu_memory_gb
        resident = 2 * layer_gb  # the layer computing and the next one arriving
        return MemoryBreakdown(
            capacity_gb=capacity,
            weights_gb=resident,
            kv_cache_gb=self.kv_bytes_per_token(dtype) * batch * self.sequence_tokens / GB,
            workspace_gb=self.workspace_gb(batch, dtype),
            headroom_gb=capacity * HEADROOM_FRACTION,
            offloaded_gb=weights_gb - resident,
        )
