"""text-to-image: a diffusers pipeline (Stable Diffusion family) draws each prompt.

Entry: ``{"image_png_base64": str, "width": int, "height": int}``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import Field

from ..config import ServingSettings
from ..errors import BadRequestError, MissingDependencyError, ModelLoadError, PayloadTooLargeError
from ..models import ModelFacts
from .base import Deadline, LoadOptions, Task, TaskParameters

__all__ = ["TextToImage"]


class TextToImageParameters(TaskParameters):
    """Sampling settings of the diffusion pipeline; height and width default to the model's own size."""

    num_inference_steps: int = Field(30, ge=1, le=500)
    guidance_scale: float = Field(7.5, ge=0, le=100)
    height: Optional[int] = Field(None, ge=8)
    width: Optional[int] = Field(None, ge=8)
    negative_prompt: Optional[str] = None
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)


class TextToImage(Task):
    """Generate an image from a text prompt."""

    name = "text-to-image"
    parameters_model = TextToImageParameters

    def __init__(self, facts: ModelFacts, settings: ServingSettings, pipeline: Any) -> None:
        super().__init__(facts, settings)
        self.pipeline = pipeline
        self.tokenizer = pipeline.tokenizer
        self.default_side = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)

    @classmethod
    def example_request(cls) -> str:
        return '{"query": ["a photo of an astronaut"], "parameters": {"num_inference_steps": 30}}'

    @classmethod
    def load(cls, model_dir: Path, facts: ModelFacts, settings: ServingSettings, options: LoadOptions) -> Task:
        try:
            from diffusers import DiffusionPipeline
        except ImportError as exc:
            raise MissingDependencyError(
                "Serving text-to-image needs diffusers: pip install 'mii-azure[diffusers]'.",
                package="diffusers",
                install="pip install 'mii-azure[diffusers]'",
            ) from exc
        try:
            pipeline = DiffusionPipeline.from_pretrained(str(model_dir), **_dtype_argument(options.dtype))
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load the diffusers pipeline in {str(model_dir)!r}: {exc}", path=str(model_dir)
            ) from exc
        pipeline = pipeline.to(options.device)
        pipeline.set_progress_bar_config(disable=True)
        return cls(facts, settings, pipeline)

    @property
    def sample_inputs(self) -> list[Any]:
        return ["a red circle"]

    def shares_batches(self, parameters: TextToImageParameters) -> bool:  # type: ignore[override]
        # A seeded image must start from the same noise as it would alone.
        return parameters.seed is None

    def check(self, inputs: list[str], parameters: TextToImageParameters) -> None:  # type: ignore[override]
        for side in ("height", "width"):
            value = getattr(parameters, side)
            if value is None:
                continue
            if value % 8:
                raise BadRequestError(f"Invalid parameter {side!r}: {value} is not a multiple of 8.")
            if value > self.settings.max_image_side:
                raise BadRequestError(
                    f"Invalid parameter {side!r}: {value} is more than this deployment allows "
                    f"({self.settings.max_image_side} pixels)."
                )
        limit = self.tokenizer.model_max_length
        prompts = inputs + ([parameters.negative_prompt] if parameters.negative_prompt else [])
        for index, ids in enumerate(self.tokenizer(prompts)["input_ids"]):
            if len(ids) > limit:
                where = "negative_prompt" if index == len(inputs) else f"query[{index}]"
                raise PayloadTooLargeError(
                    f"'{where}' is {len(ids)} tokens long; the text encoder reads at most {limit}. Shorten it.",
                    tokens=len(ids),
                    limit=limit,
                )

    def predict(self, inputs: list[str], parameters: TextToImageParameters, deadline: Deadline) -> list[Any]:  # type: ignore[override]
        generator = None
        if parameters.seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(parameters.seed)

        def stop_when_late(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if self.enforce_deadline:
                deadline.check()
            return callback_kwargs

        with torch.inference_mode():
            images = self.pipeline(
                prompt=inputs,
                negative_prompt=[parameters.negative_prompt] * len(inputs) if parameters.negative_prompt else None,
                num_inference_steps=parameters.num_inference_steps,
                guidance_scale=parameters.guidance_scale,
                height=parameters.height or self.default_side,
                width=parameters.width or self.default_side,
                generator=generator,
                callback_on_step_end=stop_when_late,
                output_type="pil",
            ).images
        return [_encode_png(image) for image in images]


def _dtype_argument(dtype: str) -> dict[str, Any]:
    """diffusers 0.42 renamed ``torch_dtype`` to ``dtype``; older releases know only the former."""
    import diffusers
    from packaging.version import Version

    name = "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"
    return {name: getattr(torch, dtype)}


def _encode_png(image: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {
        "image_png_base64": base64.b64encode(buffer.getvalue()).decode("ascii"),
        "width": image.width,
        "height": image.height,
    }
