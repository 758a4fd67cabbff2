"""The speed model behind cost estimates: seconds per prefill, per decode step and per denoising step.

Pure arithmetic over a plan and a machine's published (or measured) numbers; no torch, no network.
Each step costs the sum of four terms, per tensor-parallel rank:

* memory: bytes read (weights, plus the KV cache of every sequence in the batch) over the
  device's memory bandwidth x the bandwidth efficiency;
* compute: FLOPs (2 per weight per token, plus attention over the context) over the device's peak
  FLOPs x the FLOPs efficiency;
* communication: with tensor parallelism, 2 all-reduces per layer of batch x tokens x hidden x 2
  bytes, each costing 2 (tp - 1) / tp of its bytes over the GPU-to-GPU link (ring all-reduce);
* offload: with ZeRO-Inference, every weight crosses PCIe once per forward pass (host to GPU at
  the effective rate of the SKU's PCIe generation, or at NVMe read speed when offloaded to NVMe).

The memory and compute terms are added rather than overlapped (a roofline would take their max).
On DeepSpeed-Inference's published BLOOM-176B figures the sum, fitted at batches 1 and 128,
matches batches 8 to 64 within 3% where the max under-predicts them by up to 27%
(``data/calibration.json``, ``roofline_max_errors``); on this project's CPU a max would make a
batch-8 decode step no longer than a batch-1 step, and the measured one is 1.3-1.6x longer.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from .errors import ConfigError
from .hardware import Hardware
from .models import ModelFacts
from .planner import OptimizationPlan

__all__ = [
    "Efficiency",
    "Machine",
    "ServedModel",
    "Timing",
    "decode_step",
    "prefill",
    "unet_step",
    "HOST_LINK_GB_S",
    "NVME_READ_GB_S",
    "UNET_POSITION_FRACTION",
]

BYTES_PER_PARAMETER = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "int8": 1.02}  # int8: +2% scales, as planned
#: Effective host-to-GPU copy rate per GPU by PCIe generation, GB/s: about 78% of the x16 link
#: (16 / 32 / 64 GB/s); 25 GB/s is the usual effective figure of pinned copies over PCIe 4.
HOST_LINK_GB_S = {3: 12.5, 4: 25.0, 5: 50.0}
#: PCIe generation of the host link of each GPU model of the catalog (NVIDIA data sheets).
_PCIE_GENERATION = {"T4": 3, "V100": 3, "A10": 4, "A100": 4, "H100": 5, "H200": 5}
#: Sequential read of the local NVMe that ZeRO-Inference streams from, GB/s (order of magnitude of
#: one Azure local NVMe disk; an assumption, stated in every estimate that uses it).
NVME_READ_GB_S = 3.0
#: FLOPs of one Stable Diffusion v1.5 UNet forward pass at a 64x64 latent, counted with
#: torch.utils.flop_counter on its architecture (benchmarks/unet_flops_count.py): 677.2 GFLOPs for
#: 859.5M parameters, i.e. 2 x parameters x latent positions x 0.0962. A UNet applies its deeper
#: (larger) blocks at 1/4, 1/16 and 1/64 of the positions, so only ~10% of "every weight at every
#: position" is spent.
UNET_POSITION_FRACTION = 0.0962


class Efficiency(BaseModel):
    """Fractions of peak bandwidth and FLOPs reached, and where they come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bandwidth: float
    flops: float
    calibrated: bool = False
    basis: str = ""


PEAK = Efficiency(bandwidth=1.0, flops=1.0, basis="peak (no efficiency applied)")


class Machine(BaseModel):
    """Per-device rates of the hardware one model copy runs on, in bytes/s and FLOPs/s."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    bandwidth: float
    peak_flops: float
    link: float = 0.0
    host_link: float = 0.0
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, hardware: Hardware, dtype: str) -> "Machine":
        """The rates of ``hardware`` for a model served in ``dtype``."""
        if hardware.kind == "cpu":
            if not (hardware.cpu_bandwidth_gb_s and hardware.cpu_peak_gflops):
                raise ConfigError(
                    f"Cannot estimate speed on {hardware.describe()}: its memory bandwidth and peak FLOPs are "
                    "unknown. Describe it with Hardware.cpu(cores=..., ram_gb=..., bandwidth_gb_s=<measured read "
                    "GB/s>, peak_gflops=<cores x GHz x FLOPs per cycle>).",
                    conflict="hardware",
                    hardware=hardware.name,
                )
            return cls(name=hardware.name, bandwidth=hardware.cpu_bandwidth_gb_s * 1e9, peak_flops=hardware.cpu_peak_gflops * 1e9)
        if not (hardware.gpu_bandwidth_gb_s and hardware.gpu_fp16_tflops):
            raise ConfigError(
                f"Cannot estimate speed on {hardware.name}: its GPU memory bandwidth and FP16 TFLOPS are unknown; "
                "give gpu_bandwidth_gb_s= and gpu_fp16_tflops= in its Hardware.",
                conflict="hardware",
                hardware=hardware.name,
            )
        notes = []
        peak = hardware.gpu_fp16_tflops * 1e12
        if dtype == "float32":
            peak /= 2
            notes.append("float32 on GPU: half the FP16 tensor peak assumed (the TF32 rate of A100/H100)")
        generation = next((gen for model, gen in _PCIE_GENERATION.items() if (hardware.gpu_model or "").startswith(model)), None)
        if generation is None:
            generation = 4
            notes.append(f"PCIe generation of {hardware.gpu_model} unknown: PCIe 4 assumed for offload")
        return cls(
            name=hardware.name,
            bandwidth=hardware.gpu_bandwidth_gb_s * 1e9,
            peak_flops=peak,
            link=hardware.interconnect_gb_s * 1e9,
            host_link=HOST_LINK_GB_S[generation] * 1e9,
            notes=tuple(notes),
        )


class ServedModel(BaseModel):
    """The numbers of a model as a plan serves it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parameters: float
    head_parameters: float = 0.0
    layers: int = 1
    hidden_size: int = 0
    kv_bytes_per_token: float = 0.0
    weight_bytes: float
    tensor_parallel: int = 1
    offload: Optional[str] = None

    @property
    def body_parameters(self) -> float:
        """Weights applied to every token (all but the output head)."""
        return self.parameters - self.head_parameters

    @classmethod
    def of(cls, facts: ModelFacts, plan: OptimizationPlan) -> "ServedModel":
        """The served model of ``plan``."""
        parameters = float(plan.parameter_count or facts.parameter_count or 0)
        weight_format = "int8" if plan.quantization == "int8" else plan.dtype
        kv_dtype = "float16" if plan.dtype == "float32" and plan.quantization else plan.dtype
        return cls(
            parameters=parameters,
            head_parameters=float((facts.vocab_size or 0) * (facts.hidden_size or 0)) if not facts.is_diffusion else 0.0,
            layers=facts.num_layers or 1,
            hidden_size=facts.hidden_size or 0,
            kv_bytes_per_token=kv_bytes_per_token(facts, kv_dtype) if plan.max_new_tokens else 0.0,
            weight_bytes=parameters * BYTES_PER_PARAMETER[weight_format],
            tensor_parallel=plan.tensor_parallel,
            offload=plan.zero_offload,
        )


class Timing(BaseModel):
    """Seconds of one step, by term (efficiencies applied)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_s: float
    compute_s: float
    communication_s: float = 0.0
    offload_s: float = 0.0

    @property
    def total_s(self) -> float:
        """The step's time: the four terms added."""
        return self.memory_s + self.compute_s + self.communication_s + self.offload_s

    def __add__(self, other: "Timing") -> "Timing":
        return Timing(
            memory_s=self.memory_s + other.memory_s,
            compute_s=self.compute_s + other.compute_s,
            communication_s=self.communication_s + other.communication_s,
            offload_s=self.offload_s + other.offload_s,
        )

    def scaled(self, factor: float) -> "Timing":
        """Every term times ``factor`` (``factor`` steps of this one)."""
        return Timing(
            memory_s=self.memory_s * factor,
            compute_s=self.compute_s * factor,
            communication_s=self.communication_s * factor,
            offload_s=self.offload_s * factor,
        )


def kv_bytes_per_token(facts: ModelFacts, dtype: str) -> float:
    """KV-cache bytes per token of the whole model, as the planner counts them."""
    if not (facts.num_layers and facts.hidden_size and facts.num_attention_heads):
        return 0.0
    head_dim = facts.hidden_size / facts.num_attention_heads
    kv_heads = facts.num_kv_heads or facts.num_attention_heads
    stacks = 2 if facts.is_encoder_decoder else 1
    return 2 * facts.num_layers * kv_heads * head_dim * BYTES_PER_PARAMETER[dtype] * stacks


def decode_step(model: ServedModel, machine: Machine, efficiency: Efficiency, *, batch: int, context: float) -> Timing:
    """One generated token for each of ``batch`` sequences that attend over ``context`` tokens."""
    tp = model.tensor_parallel
    read = model.weight_bytes + model.kv_bytes_per_token * batch * context
    flops = 2 * model.parameters * batch + 4 * model.layers * model.hidden_size * context * batch
    return Timing(
        memory_s=read / tp / (machine.bandwidth * efficiency.bandwidth),
        compute_s=flops / tp / (machine.peak_flops * efficiency.flops),
        communication_s=_all_reduce_s(model, machine, batch),
        offload_s=_offload_s(model, machine),
    )


def prefill(model: ServedModel, machine: Machine, efficiency: Efficiency, *, batch: int, prompt_tokens: int) -> Timing:
    """The forward pass over ``batch`` prompts of ``prompt_tokens`` (the time to the first token).

    The output head runs for the last position of each prompt only (as ``generate`` does)."""
    tp = model.tensor_parallel
    tokens = batch * prompt_tokens
    attention = 2 * model.layers * model.hidden_size * prompt_tokens**2 * batch  # causal QK^T and AV
    flops = 2 * model.body_parameters * tokens + 2 * model.head_parameters * batch + attention
    return Timing(
        memory_s=model.weight_bytes / tp / (machine.bandwidth * efficiency.bandwidth),
        compute_s=flops / tp / (machine.peak_flops * efficiency.flops),
        communication_s=_all_reduce_s(model, machine, tokens),
        offload_s=_offload_s(model, machine),
    )


def unet_step(
    unet_parameters: float, weight_bytes: float, machine: Machine, efficiency: Efficiency, *, batch: int, latent_tokens: int
) -> Timing:
    """One denoising step for ``batch`` images: the UNet over the latent, twice (classifier-free guidance)."""
    flops = 2 * unet_parameters * latent_tokens * UNET_POSITION_FRACTION * 2 * batch
    return Timing(
        memory_s=weight_bytes / (machine.bandwidth * efficiency.bandwidth),
        compute_s=flops / (machine.peak_flops * efficiency.flops),
    )


def _all_reduce_s(model: ServedModel, machine: Machine, tokens: int) -> float:
    tp = model.tensor_parallel
    if tp == 1:
        return 0.0
    if not machine.link:
        raise ConfigError(
            f"tensor_parallel={tp} on {machine.name}, whose GPU-to-GPU bandwidth is unknown; give interconnect_gb_s.",
            conflict="hardware",
        )
    message = tokens * model.hidden_size * 2  # fp16 activations
    return 2 * model.layers * message * 2 * (tp - 1) / tp / machine.link


def _offload_s(model: ServedModel, machine: Machine) -> float:
    if model.offload is None:
        return 0.0
    rate = machine.host_link if model.offload == "cpu" else min(machine.host_link, NVME_READ_GB_S * 1e9)
    return model.weight_bytes / rate
