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
    "SkuNotAvailableError",
    "SkuDoesNotFitError",
    "WorkspaceNotConfiguredError",
    "QuotaExceededError",
    "DeploymentNotFoundError",
    "DeploymentFailedError",
    "AzureServiceError",
    "ModelNotFoundError",
    "InvalidModelError",
    "ModelLoadError",
    "MissingDependencyError",
    "PackagingError",
    "RequestError",
    "BadRequestError",
    "PayloadTooLargeError",
    "ServiceUnavailableError",
    "TooManyRequestsError",
    "RequestTimeoutError",
    "ScoringError",
    "AuthenticationError",
    "EndpointNotFoundError",
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


class SkuNotAvailableError(ConfigError):
    """The VM size asked for cannot be used: unknown, retired, not on the managed online endpoint list,
    GPUs the serving image's CUDA cannot build for, or an alias matching several sizes where one is needed.

    ``reason`` says which (``"unknown"``, ``"retired"``, ``"not_listed"``, ``"cuda"``, ``"ambiguous"``);
    ``alternatives`` names the nearest workable sizes, cheapest first, each with its ``usd_per_hour``.
    """


class SkuDoesNotFitError(ConfigError):
    """The model, with the choices given, plans on none of the sizes a name resolves to.

    ``conflict`` is the planner's (``"memory"``, ``"tensor_parallel"``, ...); ``alternatives`` names
    sizes on which it does plan, cheapest first, each with its ``usd_per_hour``.
    """


class WorkspaceNotConfiguredError(ConfigError):
    """No Azure ML workspace was given and none could be found (no ml_client, no ids, no config.json)."""


class QuotaExceededError(ConfigError):
    """The workspace's region does not offer the VM size, or its family's vCPU quota cannot cover the
    deployment; ``family``, ``needed`` and ``limit`` say by how much."""


class DeploymentNotFoundError(MiiAzureError):
    """No deployment (local) or endpoint/deployment (Azure ML) has that name."""


class DeploymentFailedError(MiiAzureError):
    """A deployment failed to provision or never became ready; ``logs`` holds the tail of its log and
    ``kept`` says whether it was left in place (and bills) or deleted."""


class AzureServiceError(MiiAzureError):
    """Azure ML refused or failed an operation for a reason not covered by a more specific error;
    ``status_code`` and ``operation`` say which."""


class ModelNotFoundError(MiiAzureError):
    """A model reference points at nothing this machine can read (no folder, not in the cache)."""


class InvalidModelError(MiiAzureError):
    """A model folder exists but is not a usable model (empty, broken or missing configuration)."""


class ModelLoadError(MiiAzureError):
    """The model's configuration was fine but loading its weights or tokenizer failed."""


class PackagingError(MiiAzureError, OSError):
    """Writing a package failed (a full disk, a permission, a folder that went away); nothing was left
    half-written: the destination is as it was before. ``path`` is where it was being written."""


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


class TooManyRequestsError(ServiceUnavailableError):
    """The endpoint refused the request for now (HTTP 429): too many requests pending, or over its rate
    limit. Nothing was run; retry after ``retry_after`` seconds, or send fewer requests at once."""

    status = 429
    code = "too_many_requests"


class RequestTimeoutError(RequestError):
    """The request ran past its timeout."""

    status = 504
    code = "timeout"


class ScoringError(RequestError):
    """An internal fault while scoring; the message says what failed, the server log has the detail."""

    status = 500
    code = "internal_error"


class AuthenticationError(RequestError):
    """The endpoint refused the key or token sent with the request (HTTP 401 or 403).

    The message says how to get a fresh one; the key itself is never part of an error.
    """

    status = 401
    code = "unauthorized"


class EndpointNotFoundError(RequestError, DeploymentNotFoundError):
    """Nothing at the scoring URI takes requests (HTTP 404): no such endpoint or deployment, or no
    deployment receiving traffic. ``endpoint`` and ``azure_deployment`` name what was asked for (when
    the handle is for an Azure ML endpoint), ``scoring_uri`` where. A query's
    :class:`DeploymentNotFoundError`: ``except DeploymentNotFoundError`` catches it too."""

    status = 404
    code = "not_found"


# The statuses of the scoring contract (DESIGN.md section 3). Statuses only an endpoint's front sends
# (401/403, 404, 408, 424, 429) are translated by the Deployment handle, which knows the endpoint.
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
