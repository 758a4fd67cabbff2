"""What a cost estimate is for: the workload, and a model given by its numbers alone."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .models import ModelFacts, ModelRef, ModelSource, config_facts

__all__ = ["Workload", "ModelShape"]


class Workload(BaseModel):
    """What the deployment must serve: request shape, request rate and latency target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = Field(512, ge=1, description="Tokens of each prompt (the input of single-pass tasks).")
    new_tokens: int = Field(128, ge=1, description="Tokens generated per request (generation tasks).")
    requests_per_second: float = Field(1.0, gt=0, description="Requests (or images) per second to serve.")
    latency_slo_ms: Optional[float] = Field(
        None,
        gt=0,
        description="Latency target: per generated token for generation, per request for single-pass tasks, "
        "per image for text-to-image. None: no target (the largest batch that fits is used).",
    )
    steps: int = Field(50, ge=1, description="Denoising steps per image (text-to-image).")
    image_size: Optional[int] = Field(None, ge=8, description="Image side in pixels (text-to-image); default: the model's.")

    def describe(self, unit: str) -> str:
        """One line for reports."""
        target = f"{self.latency_slo_ms:g} ms per {unit}" if self.latency_slo_ms else "none"
        if unit == "image":
            size = f"{self.image_size}px, " if self.image_size else ""
            return f"{size}{self.steps} steps, {self.requests_per_second:g} images/s; latency target: {target}"
        shape = (
            f"{self.prompt_tokens} prompt + {self.new_tokens} new tokens"
            if unit == "token"
            else f"{self.prompt_tokens} input tokens"
        )
        return f"{shape}, {self.requests_per_second:g} requests/s; latency target: {target}"


class ModelShape(BaseModel):
    """A decoder-only language model described by its numbers alone (no config file, no weights)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parameters: float = Field(gt=0)
    layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    heads: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    kv_heads: Optional[int] = Field(None, ge=1, description="Key/value heads (grouped-query attention); default: heads.")
    intermediate_size: Optional[int] = Field(None, ge=1)
    max_positions: Optional[int] = Field(None, ge=2, description="Context length; None: no fixed limit.")
    model_type: str = Field("llama", description="Family, for the planner's kernel-injection and int8 choices.")
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    name: str = "custom-model"

    def facts(self) -> ModelFacts:
        """The facts the planner works with."""
        config: dict[str, Any] = {
            "architectures": [f"{self.model_type.replace('_', ' ').title().replace(' ', '')}ForCausalLM"],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads or self.heads,
            "vocab_size": self.vocab_size,
            "torch_dtype": self.dtype,
        }
        if self.intermediate_size:
            config["intermediate_size"] = self.intermediate_size
        if self.max_positions:
            config["max_position_embeddings"] = self.max_positions
        ref = ModelRef(reference=self.name, source=ModelSource.HUB, name=self.name)
        facts = config_facts(ref, config, config_source="model shape given to estimate_cost")
        return facts.model_copy(update={"parameter_count": int(self.parameters), "parameter_count_source": "given"})
