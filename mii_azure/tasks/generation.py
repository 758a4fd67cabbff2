"""text-generation (decoder-only) and text2text-generation (encoder-decoder).

Entry: ``{"generated_text": str, "num_tokens": int}``. ``num_tokens`` counts the tokens the model
generated for that input, up to and including a stop sequence, without end-of-text or padding.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from pydantic import Field, field_validator

from ..errors import BadRequestError
from .base import Deadline, TaskParameters
from ._text import TextModelTask

__all__ = ["TextGeneration", "Text2TextGeneration", "GenerationParameters", "TextGenerationParameters"]


class GenerationParameters(TaskParameters):
    """Generation keywords accepted by both generation tasks.

    Sampling is on when ``do_sample`` is true, or when it is left unset and any of ``temperature``,
    ``top_p`` or ``top_k`` is given; otherwise decoding is greedy.
    """

    max_new_tokens: int = Field(32, ge=1)
    temperature: Optional[float] = Field(None, gt=0, le=100)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    do_sample: Optional[bool] = None
    repetition_penalty: float = Field(1.0, gt=0, le=100)
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    stop: Optional[Union[str, list[str]]] = None

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: Optional[Union[str, list[str]]]) -> Optional[Union[str, list[str]]]:
        for item in [value] if isinstance(value, str) else value or []:
            if not item:
                raise ValueError("stop sequences must be non-empty strings")
        return value

    @property
    def sampling(self) -> bool:
        """Whether tokens are sampled rather than chosen greedily."""
        if self.do_sample is not None:
            return self.do_sample
        return any(value is not None for value in (self.temperature, self.top_p, self.top_k))

    @property
    def stop_sequences(self) -> list[str]:
        """The stop sequences as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class TextGenerationParameters(GenerationParameters):
    """text-generation adds ``return_full_text`` (prompt + continuation)."""

    return_full_text: bool = False


class _GenerationTask(TextModelTask):

    @property
    def sample_inputs(self) -> list[Any]:
        return ["Hello"]

    def new_tokens_limit(self, prompt_tokens: int) -> Optional[int]:
        """Most new tokens the model can add after a prompt of this length (None: no fixed limit)."""
        return None

    def shares_batches(self, parameters: GenerationParameters) -> bool:  # type: ignore[override]
        # A seeded sample must draw the same random numbers as it would alone.
        return not (parameters.sampling and parameters.seed is not None)

    def check(self, inputs: list[str], parameters: GenerationParameters) -> None:  # type: ignore[override]
        limit = self.settings.max_new_tokens_limit
        if parameters.max_new_tokens > limit:
            raise BadRequestError(
                f"Invalid parameter 'max_new_tokens': {parameters.max_new_tokens} is more than this "
                f"deployment allows ({limit}). Ask for at most {limit} new tokens.",
                max_new_tokens=parameters.max_new_tokens,
                limit=limit,
            )
        counts = self.check_lengths(inputs)
        for index, count in enumerate(counts):
            room = self.new_tokens_limit(count)
            if room is not None and parameters.max_new_tokens > room:
                raise BadRequestError(
                    f"Invalid parameter 'max_new_tokens': input {index} has {count} tokens and "
                    f"{self.facts.name} attends over at most {self.facts.max_positions} positions, so at "
                    f"most {room} new tokens fit; lower max_new_tokens to {room} or shorten the input.",
                    max_new_tokens=parameters.max_new_tokens,
                    limit=room,
                    index=index,
                )

    def generate_kwargs(self, parameters: GenerationParameters, deadline: Deadline) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": parameters.max_new_tokens,
            "do_sample": parameters.sampling,
            "repetition_penalty": parameters.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if self.enforce_deadline:
            kwargs["max_time"] = max(deadline.remaining(), 0.001)
        if parameters.sampling:
            kwargs["temperature"] = parameters.temperature if parameters.temperature is not None else 1.0
            kwargs["top_p"] = parameters.top_p if parameters.top_p is not None else 1.0
            kwargs["top_k"] = parameters.top_k if parameters.top_k is not None else 50
        if parameters.stop_sequences:
            kwargs["stop_strings"] = parameters.stop_sequences
            kwargs["tokenizer"] = self.tokenizer
        return kwargs

    def decode(self, token_rows: torch.Tensor, parameters: GenerationParameters) -> list[tuple[str, int]]:
        """Text and generated-token count of each row of new tokens, cut at end-of-text or a stop."""
        end_of_text = self.end_of_text_ids()
        results = []
        for row in token_rows.tolist():
            tokens = []
            for token in row:  # padding only ever follows end-of-text
                if token in end_of_text:
                    break
                tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            text = _cut_at_stop(text, parameters.stop_sequences)
            results.append((text, len(tokens)))
        return results

    def end_of_text_ids(self) -> set[int]:
        """Token ids that end a generated sequence (a model may have several)."""
        configured = self.model.generation_config.eos_token_id
        ids = set(configured) if isinstance(configured, list) else {configured}
        ids.add(self.tokenizer.eos_token_id)
        return {token for token in ids if token is not None}

    def run_generate(
        self, inputs: list[str], parameters: GenerationParameters, deadline: Deadline
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded prompts and the raw ``generate`` output for them."""
        encoded = self.encode(inputs)
        if parameters.seed is not None:
            torch.manual_seed(parameters.seed)
        self.forget_previous_sequences()
        with torch.inference_mode():
            output = self.model.generate(**encoded, **self.generate_kwargs(parameters, deadline))
        if self.enforce_deadline:
            deadline.check()
        return encoded["input_ids"], output


class TextGeneration(_GenerationTask):
    """Continue a prompt with a decoder-only language model."""

    name = "text-generation"
    parameters_model = TextGenerationParameters
    auto_class = "AutoModelForCausalLM"
    padding_side = "left"

    @classmethod
    def example_request(cls) -> str:
        return '{"query": ["DeepSpeed is"], "parameters": {"max_new_tokens": 32}}'

    def model_input_limit(self) -> int:
        # A prompt must leave room for at least one new token.
        return super().model_input_limit() - (1 if self.facts.max_positions else 0)

    def new_tokens_limit(self, prompt_tokens: int) -> Optional[int]:
        if not self.facts.max_positions:
            return None
        return self.facts.max_positions - prompt_tokens

    def prompt_tokens(self, text: str) -> list[int]:
        """The token ids of one prompt, as ``generate`` would see them (special tokens included)."""
        return list(self.tokenizer(text)["input_ids"])

    def predict(self, inputs: list[str], parameters: TextGenerationParameters, deadline: Deadline) -> list[Any]:  # type: ignore[override]
        input_ids, output = self.run_generate(inputs, parameters, deadline)
        decoded = self.decode(output[:, input_ids.shape[1] :], parameters)
        return [
            {"generated_text": prompt + text if parameters.return_full_text else text, "num_tokens": count}
            for prompt, (text, count) in zip(inputs, decoded)
        ]


class Text2TextGeneration(_GenerationTask):
    """Transform an input text with an encoder-decoder model (T5, BART...)."""

    name = "text2text-generation"
    parameters_model = GenerationParameters
    auto_class = "AutoModelForSeq2SeqLM"

    @classmethod
    def example_request(cls) -> str:
        return '{"query": ["translate English to German: Hello"], "parameters": {"max_new_tokens": 32}}'

    def predict(self, inputs: list[str], parameters: GenerationParameters, deadline: Deadline) -> list[Any]:  # type: ignore[override]
        _, output = self.run_generate(inputs, parameters, deadline)
        # Encoder-decoder output starts with the decoder start token, which the model did not generate.
        decoded = self.decode(output[:, 1:], parameters)
        return [{"generated_text": text, "num_tokens": count} for text, count in decoded]


def _cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to the first stop sequence (which is not included)."""
    cut = len(text)
    for stop in stops:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]
