"""The one exception tree of mii_azure.

Every error the SDK raises derives from :class:`MiiAzureError`. Each error says what failed, why,
and what to do next, and keeps the facts it mentions as attributes (``err.facts`` holds them all),
so that code can react to an error without parsing its message.

Errors a scoring request can get (:class:`RequestError` and its subclasses) carry the HTTP
``status`` and the machine-readable ``code`` of the scoring contract (DESIGN.md section 3). The same
types are raised by a local deployment and by an Azure ML endpoint for the same failure.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "MiiAzureError",
    "ConfigError",
    "TaskMismatchError",
    "ModelNotFoundError",
    "InvalidModelError",
    "ModelLoadError",
    "MissingDependencyError",
    "RequestError",
    "BadRequestError",
    "PayloadTooLargeError",
    "ServiceUnavailableError",
    "RequestTimeoutError",
    "ScoringError",
    "error_for_status",
]


class MiiAzureError(Exception):
    """Root of every error raised by mii_azure.

    Keyword arguments are the facts behind the message; each becomes an attribute.
    """

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.facts = facts
        for key, value in facts.items():
            setattr(self, key, value)


class ConfigError(MiiAzureError):
    """An option, setting or override that cannot work, found before any weight is loaded."""


class TaskMismatchError(ConfigError):
    """The task cannot be inferred from the model, or the task given does not fit the model.

    ``supported_tasks`` lists the tasks that would work with this model.
    """


class ModelNotFoundError(MiiAzureError):
    """A model reference points at nothing this machine can read (no folder, not in the cache)."""


class InvalidModelError(MiiAzureError):
    """A model folder exists but is not a usable model (empty, broken or missing configuration)."""


class ModelLoadError(MiiAzureError):
    """The model's configuration was fine but loading its weights or tokenizer failed."""


class MissingDependencyError(MiiAzureError, ImportError):
    """An optional dependency is needed for this call; ``install`` is the command that adds it."""


class RequestError(MiiAzureError):
    """A scoring request failed; ``status`` and ``code`` are those of the scoring contract."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def to_body(self) -> dict[str, Any]:
        """The JSON error body of the scoring contract."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequestError(RequestError):
    """The request is malformed: bad JSON, missing or unknown fields, wrong types, empty query."""

    status = 400
    code = "bad_request"


class PayloadTooLargeError(RequestError):
    """Too many inputs, an input longer than the model accepts, or a body over the size limit."""

    status = 413
    code = "payload_too_large"


class ServiceUnavailableError(RequestError):
    """The deployment is not ready yet or its queue is full; retry after ``retry_after`` seconds."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0, **facts: Any) -> None:
        super().__init__(message, retry_after=retry_after, **facts)


class RequestTimeoutError(RequestError):
    """The request ran past its timeout."""

    status = 504
    code = "timeout"


class ScoringError(RequestError):
    """An internal fault while scoring; the message says what failed, the server log has the detail."""

    status = 500
    code = "internal_error"


_BY_STATUS: dict[int, type[RequestError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        PayloadTooLargeError,
        ServiceUnavailableError,
        RequestTimeoutError,
        ScoringError,
    )
}


def error_for_status(status: int) -> type[RequestError]:
    """The RequestError subclass for an HTTP status of the scoring contract (500 for unknown ones)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return BadRequestError if 400 <= status < 500 else ScoringError
