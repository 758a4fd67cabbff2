"""Azure's exceptions, translated once, here, into the SDK's own (``raise ... from``).

Every call into azure-ai-ml runs inside :func:`azure_errors`, which names the operation; callers
never see an ``azure.core`` exception. Messages carry the facts Azure gave (status, error code,
its message) but never a credential, a key or a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...errors import (
    AuthenticationError,
    AzureServiceError,
    ConfigError,
    DeploymentNotFoundError,
    MiiAzureError,
    QuotaExceededError,
)

__all__ = ["azure_errors", "translate", "LOGIN_HINT"]

LOGIN_HINT = (
    "Sign in with `az login` (or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service "
    "principal), or pass credential= / ml_client= built with a credential that works for this workspace."
)
# Bearer tokens, SAS signatures and account keys that an Azure message might echo.
_SECRETS = re.compile(r"(Bearer\s+)[\w.\-~+/=]+|(sig=)[^&\s]+|(AccountKey=)[^;\s]+", re.IGNORECASE)


@contextmanager
def azure_errors(operation: str, **facts: Any) -> Iterator[None]:
    """Run the block, turning any Azure exception into the SDK's error for ``operation``."""
    try:
        yield
    except MiiAzureError:
        raise
    except Exception as exc:
        translated = translate(exc, operation, **facts)
        if translated is None:
            raise
        raise translated from exc


def translate(exc: BaseException, operation: str, **facts: Any) -> "MiiAzureError | None":
    """The SDK error for an exception raised by azure-ai-ml / azure-core, or None for a foreign one."""
    from azure.core import exceptions as core

    message = scrub(_azure_message(exc))
    if isinstance(exc, core.ClientAuthenticationError):
        return AuthenticationError(
            f"Azure did not accept the credential while trying to {operation}: {message}. {LOGIN_HINT}",
            operation=operation,
            **facts,
        )
    if isinstance(exc, core.HttpResponseError):
        status = exc.status_code
        code = getattr(getattr(exc, "error", None), "code", None)
        known = {"operation": operation, "status_code": status, "azure_code": code, **facts}
        if status == 401:
            return AuthenticationError(f"Azure refused the credential while trying to {operation}: {message}. {LOGIN_HINT}", **known)
        if status == 403:
            return AuthenticationError(
                f"Azure says this identity may not {operation}: {message}. Ask for a role with write access to the "
                "workspace (for example 'AzureML Data Scientist') or use another credential.",
                **known,
            )
        if status == 404:
            return DeploymentNotFoundError(f"Could not {operation}: Azure says it does not exist ({message}).", **known)
        if code and "quota" in str(code).lower():
            return QuotaExceededError(f"Could not {operation}: {message}. Request more quota for the VM family in the Azure portal.", **known)
        if status in (400, 409, 422):
            return ConfigError(f"Azure refused to {operation}: {message}", **known)
        return AzureServiceError(f"Azure failed to {operation} (HTTP {status}): {message}. Try again later.", **known)
    if isinstance(exc, core.ServiceRequestError):
        return AzureServiceError(
            f"Could not reach Azure to {operation}: {message}. Check the network and proxy settings.",
            operation=operation,
            **facts,
        )
    if isinstance(exc, core.AzureError):
        return AzureServiceError(f"Azure failed to {operation}: {message}", operation=operation, **facts)
    if type(exc).__module__.startswith("azure.ai.ml"):  # the SDK's ValidationException and friends
        return ConfigError(f"Could not {operation}: {message}", operation=operation, **facts)
    return None


def scrub(text: str) -> str:
    """``text`` with bearer tokens, SAS signatures and account keys replaced by ``***``."""
    return _SECRETS.sub(lambda match: (match.group(1) or match.group(2) or match.group(3)) + "***", text)


def _azure_message(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc) or type(exc).__name__
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return " ".join(lines[:3])[:600]
