"""Shared base of the tasks served by a transformers model and its tokenizer."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch

from ..config import ServingSettings
from ..errors import ModelLoadError, PayloadTooLargeError
from ..models import ModelFacts
from .base import LoadOptions, Task

logger = logging.getLogger(__name__)

# Tokenizers without a real limit report a huge model_max_length; above this it means "unknown".
_NO_LIMIT = 1_000_000
# Longest input accepted when neither the model nor the tokenizer states a limit.
UNBOUNDED_INPUT_TOKENS = 8192


class TextModelTask(Task):
    """A task answered by one ``transformers`` model class and a fast tokenizer."""

    #: Name of the ``transformers`` auto class that loads the model for this task.
    auto_class: ClassVar[str]
    #: Which side sequences are padded on when inputs are batched.
    padding_side: ClassVar[str] = "right"

    def __init__(self, facts: ModelFacts, settings: ServingSettings, model: Any, tokenizer: Any) -> None:
        super().__init__(facts, settings)
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_input_tokens = settings.max_input_tokens or self.model_input_limit()
        #: Tokenizer outputs that ``encode`` leaves out because the model's forward pass takes no such
        #: argument (Falcon's tokenizer returns ``token_type_ids``; ``generate`` refuses unused inputs).
        self.unused_tokenizer_inputs = unused_tokenizer_inputs(model, tokenizer)

    @classmethod
    def load(cls, model_dir: Path, facts: ModelFacts, settings: ServingSettings, options: LoadOptions) -> "Task":
        tokenizer = load_tokenizer(model_dir, padding_side=cls.padding_side)
        model = load_transformers_model(cls.auto_class, model_dir, options)
        return cls(facts, settings, model, tokenizer)

    def model_input_limit(self) -> int:
        """Longest input (in tokens, special tokens included) the model itself accepts."""
        limits = [self.facts.max_positions]
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and tokenizer_limit < _NO_LIMIT:
            limits.append(tokenizer_limit)
        known = [limit for limit in limits if limit]
        return min(known) if known else UNBOUNDED_INPUT_TOKENS

    def token_counts(self, texts: list[str], **kwargs: Any) -> list[int]:
        """Tokens each text takes, special tokens included."""
        encoded = self.tokenizer(texts, **kwargs)
        return [len(ids) for ids in encoded["input_ids"]]

    def check_lengths(self, texts: list[str], *, limit: Optional[int] = None, field: str = "query") -> list[int]:
        """Raise PayloadTooLargeError for any text over ``limit`` tokens; return every count."""
        limit = limit or self.max_input_tokens
        counts = self.token_counts(texts)
        for index, count in enumerate(counts):
            if count > limit:
                where = field if len(texts) == 1 else f"{field}[{index}]"
                raise PayloadTooLargeError(
                    f"'{where}' is {count} tokens long; this deployment accepts at most {limit} tokens "
                    f"per input ({self.facts.name}'s limit). Shorten or split the input.",
                    tokens=count,
                    limit=limit,
                    index=index,
                )
        return counts

    def forget_previous_sequences(self) -> None:
        """Clear the KV cache that DeepSpeed's injected layers keep between calls (injection attaches
        ``reset_cache`` to the model), as DeepSpeed's own ``generate`` does before each generation;
        otherwise a one-token prompt would continue the previous batch's sequences."""
        reset = getattr(self.model, "reset_cache", None)
        if callable(reset):
            reset()

    def encode(self, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        """Tokenize and pad ``texts`` into tensors on the model's device, without the model inputs the
        model does not take (extras asked for in ``kwargs``, such as offsets, are kept)."""
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt", **kwargs)
        return {
            key: value.to(self.device) for key, value in encoded.items() if key not in self.unused_tokenizer_inputs
        }


def unused_tokenizer_inputs(model: Any, tokenizer: Any) -> frozenset[str]:
    """The model inputs ``tokenizer`` returns (its ``model_input_names``) that ``model.forward`` names
    no parameter for; none when the signature cannot tell (a wrapper taking only ``*args, **kwargs``)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return frozenset()
    named = {
        name
        for name, parameter in parameters.items()
        if parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    if "input_ids" not in named:
        return frozenset()
    returned = set(getattr(tokenizer, "model_input_names", None) or ()) | {"token_type_ids"}
    return frozenset(returned - named)


def load_tokenizer(model_dir: Path, *, padding_side: str = "right") -> Any:
    """The model's fast tokenizer; ModelLoadError when the folder has none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # transformers raises many types here; the message is what matters
        raise ModelLoadError(
            f"Could not load a tokenizer from {str(model_dir)!r}: {exc}. Save the tokenizer next to the "
            "model with tokenizer.save_pretrained().",
            path=str(model_dir),
        ) from exc
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_transformers_model(auto_class: str, model_dir: Path, options: LoadOptions) -> Any:
    """Load ``model_dir`` with the named auto class, in eval mode on the requested device and dtype."""
    import transformers

    loader = getattr(transformers, auto_class)
    try:
        model = loader.from_pretrained(str(model_dir), dtype=getattr(torch, options.dtype))
    except Exception as exc:
        if "Weights only load failed" in str(exc):  # torch refused a pickle that holds more than tensors
            raise ModelLoadError(
                f"Refused the pickled weights in {str(model_dir)!r}: they hold objects other than tensors, and "
                "unpickling those could run code, so they are only read with torch's weights_only loading. "
                "Save the model as safetensors (model.save_pretrained(folder), the default) from a source you trust.",
                path=str(model_dir),
                auto_class=auto_class,
            ) from None
        raise ModelLoadError(
            f"Could not load the weights in {str(model_dir)!r} with {auto_class}: {exc}",
            path=str(model_dir),
            auto_class=auto_class,
        ) from exc
    return model.to(options.device).eval()
