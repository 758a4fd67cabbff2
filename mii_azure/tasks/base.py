"""What every task shares: request parsing, parameter validation, and the Task interface.

A request (DESIGN.md section 3) is a JSON object ``{"query": ..., "parameters": {...}}``. The legacy
DeepSpeed-MII shape is accepted too: generation keywords at the top level beside ``query``, and
``question``/``context`` at the top level for question-answering.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import ServingSettings
from ..errors import BadRequestError, PayloadTooLargeError, RequestTimeoutError
from ..models import ModelFacts

__all__ = [
    "Task",
    "TaskParameters",
    "ScoringRequest",
    "LoadOptions",
    "Deadline",
    "parse_text_query",
    "check_input_count",
    "json_type",
]


class TaskParameters(BaseModel):
    """Base of every task's parameter model: strict types, unknown names refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


@dataclass(frozen=True)
class ScoringRequest:
    """A validated request: its inputs in order and its parameters."""

    inputs: list[Any]
    parameters: TaskParameters


@dataclass(frozen=True)
class LoadOptions:
    """How to load a task's model: the torch device and dtype names."""

    device: str = "cpu"
    dtype: str = "float32"


class Deadline:
    """The moment a request runs out of time."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._end = time.monotonic() + timeout_s

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - time.monotonic())

    def check(self) -> None:
        """Raise RequestTimeoutError if the deadline has passed."""
        if self.remaining() <= 0:
            raise RequestTimeoutError(
                f"The request ran past its timeout of {self.timeout_s:g} s. Send fewer or shorter inputs, "
                "or raise the deployment's request timeout.",
                timeout_s=self.timeout_s,
            )


class Task(ABC):
    """One served task: request validation, the model call, and the response entries.

    Class-level methods are pure (no model needed); an instance holds the loaded model.
    """

    name: ClassVar[str]
    parameters_model: ClassVar[type[TaskParameters]]
    #: Names of the OIP-v2 input tensors, each of shape [N] (DESIGN.md section 4).
    input_names: ClassVar[tuple[str, ...]] = ("query",)

    def __init__(self, facts: ModelFacts, settings: ServingSettings) -> None:
        self.facts = facts
        self.settings = settings
        #: Whether the model call itself stops at the request's deadline. Off under tensor
        #: parallelism, where every rank must run the same steps (the batcher still answers 504).
        self.enforce_deadline = True

    # --- pure request handling -------------------------------------------------------------
    @classmethod
    def parse_query(cls, query: Any) -> list[Any]:
        """Validate the ``query`` field and return the list of inputs."""
        return parse_text_query(query)

    @classmethod
    def inputs_from_tensors(cls, tensors: Mapping[str, Sequence[str]]) -> list[Any]:
        """Inputs from decoded OIP-v2 BYTES tensors (one list of strings per input name)."""
        if "query" not in tensors:
            raise BadRequestError(
                f"{cls.name} needs an input tensor named 'query' (BYTES, shape [N]); got "
                f"{', '.join(map(repr, tensors)) or 'none'}."
            )
        return cls.parse_query(list(tensors["query"]))

    @classmethod
    def parse_request(cls, payload: Any, settings: ServingSettings) -> ScoringRequest:
        """Validate a decoded JSON request body; raises BadRequestError / PayloadTooLargeError."""
        if not isinstance(payload, dict):
            raise BadRequestError(
                f"The request body must be a JSON object such as {cls.example_request()}, "
                f"not a JSON {json_type(payload)}.",
            )
        body = dict(payload)
        parameters = body.pop("parameters", None)
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise BadRequestError(
                f"'parameters' must be a JSON object of {cls.name} parameters, not a JSON {json_type(parameters)}."
            )
        parameters = dict(parameters)
        query = cls._pop_query(body)
        for key, value in body.items():  # legacy DeepSpeed-MII: keywords beside the query
            if key in parameters and not _same_json_value(parameters[key], value):
                raise BadRequestError(
                    f"Parameter {key!r} is given twice, at the top level and in 'parameters', with "
                    "different values; give it once, inside 'parameters'."
                )
            parameters[key] = value
        request = ScoringRequest(inputs=cls.parse_query(query), parameters=cls.parse_parameters(parameters))
        check_input_count(request, settings)
        return request

    @classmethod
    def parse_parameters(cls, parameters: Mapping[str, Any]) -> TaskParameters:
        """Validate parameters against the task's explicit list."""
        accepted = sorted(cls.parameters_model.model_fields)
        unknown = sorted(set(parameters) - set(accepted))
        if unknown:
            listed = ", ".join(accepted) if accepted else "none"
            raise BadRequestError(
                f"Unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"for {cls.name}. Accepted parameters: {listed}.",
                unknown=unknown,
                accepted=accepted,
            )
        try:
            return cls.parameters_model(**parameters)
        except ValidationError as exc:
            raise BadRequestError(_describe_validation(exc), parameters=dict(parameters)) from None

    @classmethod
    def example_request(cls) -> str:
        """A short valid request, quoted in error messages."""
        return '{"query": ["some text"], "parameters": {}}'

    @classmethod
    def _pop_query(cls, body: dict[str, Any]) -> Any:
        if "query" not in body:
            raise BadRequestError(f"The request has no 'query' field. Send a body such as {cls.example_request()}.")
        return body.pop("query")

    # --- the model -------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load(cls, model_dir: Path, facts: ModelFacts, settings: ServingSettings, options: LoadOptions) -> "Task":
        """Load the model and whatever else the task needs from ``model_dir``."""

    @property
    @abstractmethod
    def sample_inputs(self) -> list[Any]:
        """A small valid input, answered once before the deployment reports ready."""

    def check(self, inputs: list[Any], parameters: TaskParameters) -> None:
        """Checks that need the tokenizer (input lengths); raises a RequestError."""

    def shares_batches(self, parameters: TaskParameters) -> bool:
        """Whether a request with these parameters may run in one batch with other requests."""
        return True

    @abstractmethod
    def predict(self, inputs: list[Any], parameters: TaskParameters, deadline: Deadline) -> list[Any]:
        """One response entry (DESIGN.md section 3) per input, in order."""


def check_input_count(request: ScoringRequest, settings: ServingSettings) -> None:
    """PayloadTooLargeError when a request carries more inputs than the deployment accepts."""
    count = len(request.inputs)
    if count > settings.max_inputs_per_request:
        raise PayloadTooLargeError(
            f"The request has {count} inputs; this deployment accepts at most "
            f"{settings.max_inputs_per_request} per request. Split it into several requests.",
            inputs=count,
            limit=settings.max_inputs_per_request,
        )


def parse_text_query(query: Any, *, field: str = "query") -> list[str]:
    """A string or a non-empty list of non-empty strings, as a list."""
    items = [query] if isinstance(query, str) else query
    if not isinstance(items, list):
        raise BadRequestError(f"'{field}' must be a string or a list of strings, not a JSON {json_type(query)}.")
    if not items:
        raise BadRequestError(f"'{field}' is empty; send at least one input.")
    for index, item in enumerate(items):
        where = field if isinstance(query, str) else f"{field}[{index}]"
        if not isinstance(item, str):
            raise BadRequestError(f"'{where}' must be a string, not a JSON {json_type(item)}.")
        if not item.strip():
            raise BadRequestError(f"'{where}' is an empty string; every input needs some text.")
    return list(items)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _same_json_value(first: Any, second: Any) -> bool:
    """Equal and of the same JSON type (Python's 1 == 1.0 == True must not hide a type error)."""
    return type(first) is type(second) and first == second


def _describe_validation(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "parameters"
        got = error.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        problems.append(f"parameter {name!r}: {error['msg'].lower()}{shown}")
    return "Invalid " + "; ".join(problems) + "."
