"""feature-extraction: one embedding vector per input text.

Entry: ``{"embedding": [float, ...]}``. Pooling follows the model's own sentence-transformers
configuration when the folder has one (``modules.json`` with a Pooling module, and a Normalize
module for unit-length vectors); a plain transformers model is mean-pooled without normalization,
as sentence-transformers itself does for such models. Its ``max_seq_length`` becomes the input limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import Field

from ..config import ServingSettings
from ..errors import InvalidModelError
from ..models import ModelFacts
from .base import Deadline, LoadOptions, Task, TaskParameters
from ._text import TextModelTask, load_tokenizer, load_transformers_model

__all__ = ["FeatureExtraction", "Pooling"]

# sentence-transformers Pooling config keys, by the mode they switch on.
_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
    "mean": "pooling_mode_mean_tokens",
}


@dataclass(frozen=True)
class Pooling:
    """How token vectors become one sentence vector."""

    mode: str = "mean"
    normalize: bool = False
    max_seq_length: Optional[int] = None

    @classmethod
    def from_folder(cls, folder: Path) -> "Pooling":
        """Read a sentence-transformers configuration; the default when there is none."""
        modules_file = folder / "modules.json"
        if not modules_file.is_file():
            return cls()
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
            mode, normalize = "mean", False
            for module in modules:
                kind = str(module.get("type", ""))
                if kind.endswith("Pooling"):
                    mode = _pooling_mode(json.loads((folder / module["path"] / "config.json").read_text()))
                elif kind.endswith("Normalize"):
                    normalize = True
            bert_config = folder / "sentence_bert_config.json"
            max_length = json.loads(bert_config.read_text()).get("max_seq_length") if bert_config.is_file() else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidModelError(
                f"The sentence-transformers configuration in {str(folder)!r} cannot be read ({exc}); "
                "re-save the model with SentenceTransformer.save().",
                path=str(folder),
            ) from None
        return cls(mode=mode, normalize=normalize, max_seq_length=max_length if isinstance(max_length, int) else None)

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "cls":
            pooled = hidden[:, 0]
        elif self.mode == "lasttoken":
            last = attention_mask.sum(dim=1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        elif self.mode == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        elif self.mode == "weightedmean":
            weights = mask * torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)[None, :, None]
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        else:
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            pooled = summed / (counts.sqrt() if self.mode == "mean_sqrt_len" else counts)
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled


def _pooling_mode(config: dict[str, Any]) -> str:
    for mode, key in _POOLING_KEYS.items():
        if config.get(key):
            return mode
    raise ValueError(f"none of the supported pooling modes {sorted(_POOLING_KEYS)} is switched on")


class FeatureExtractionParameters(TaskParameters):
    """``normalize``: force unit-length vectors on or off (default: as the model is configured)."""

    normalize: Optional[bool] = Field(None)


class FeatureExtraction(TextModelTask):
    """Embed texts as vectors for search, clustering and similarity."""

    name = "feature-extraction"
    parameters_model = FeatureExtractionParameters
    auto_class = "AutoModel"

    def __init__(self, facts: ModelFacts, settings: ServingSettings, model: Any, tokenizer: Any, pooling: Pooling) -> None:
        self.pooling = pooling
        super().__init__(facts, settings, model, tokenizer)

    @classmethod
    def load(cls, model_dir: Path, facts: ModelFacts, settings: ServingSettings, options: LoadOptions) -> Task:
        pooling = Pooling.from_folder(model_dir)
        tokenizer = load_tokenizer(model_dir)
        model = load_transformers_model(cls.auto_class, model_dir, options)
        return cls(facts, settings, model, tokenizer, pooling)

    def model_input_limit(self) -> int:
        limit = super().model_input_limit()
        return min(limit, self.pooling.max_seq_length) if self.pooling.max_seq_length else limit

    @property
    def sample_inputs(self) -> list[Any]:
        return ["Hello world"]

    def check(self, inputs: list[str], parameters: TaskParameters) -> None:
        self.check_lengths(inputs)

    def predict(self, inputs: list[str], parameters: FeatureExtractionParameters, deadline: Deadline) -> list[Any]:  # type: ignore[override]
        encoded = self.encode(inputs)
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state.float()
        pooling = self.pooling
        if parameters.normalize is not None and parameters.normalize != pooling.normalize:
            pooling = Pooling(pooling.mode, parameters.normalize, pooling.max_seq_length)
        vectors = pooling(hidden, encoded["attention_mask"])
        return [{"embedding": vector} for vector in vectors.tolist()]
