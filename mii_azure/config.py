"""Settings models shared by the SDK and the serving runtime.

Pure pydantic: this module imports neither torch nor azure, so planning and packaging tools can
use it on any machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

__all__ = ["ServingSettings", "SETTINGS_ENV_PREFIX", "HUB_MODEL_ENV"]

SETTINGS_ENV_PREFIX = "MII_AZURE_"
#: A hub id a deployment's scoring script fetches at start-up instead of a registered model.
HUB_MODEL_ENV = "MII_AZURE_HUB_MODEL"
#: The API key a local deployment requires (``Authorization: Bearer <key>``); set in the serving
#: process's environment only, never written to a package or record. Never set on Azure ML, where the
#: endpoint's own authentication guards every route.
API_KEY_ENV = "MII_AZURE_API_KEY"


class ServingSettings(BaseModel):
    """Limits and defaults of one deployment's scoring endpoint.

    Every field can also be set through an environment variable named ``MII_AZURE_<FIELD>`` in upper
    case (``MII_AZURE_MAX_INPUTS_PER_REQUEST=8``), which is how a deployment passes them to the
    scoring script.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment_name: Optional[str] = Field(
        None, description="Name reported in every response; defaults to the model folder's name."
    )
    task: Optional[str] = Field(None, description="Task override; inferred from the model when unset.")
    max_inputs_per_request: int = Field(32, ge=1, le=4096, description="Most inputs one request may carry.")
    max_input_tokens: Optional[int] = Field(
        None, ge=1, description="Longest input in tokens; defaults to what the model itself accepts."
    )
    max_new_tokens_limit: int = Field(2048, ge=1, description="Largest max_new_tokens a request may ask for.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_image_side: int = Field(1024, ge=8, description="Largest height or width of a generated image.")
    request_timeout_s: float = Field(120.0, gt=0, description="A request running longer gets a 504.")
    max_batch_size: Optional[int] = Field(
        None, ge=1, description="Most inputs run together in one batch; defaults to the optimization plan's."
    )
    max_wait_ms: float = Field(
        100.0,
        ge=0,
        le=10_000,
        description="Longest a batch waits for more requests to join (the wait adapts below it: 5% of recent batch times).",
    )
    max_queue: int = Field(256, ge=1, description="Requests waiting beyond this get a 503 with Retry-After.")
    continuous_batching: bool = Field(
        True,
        description="Text generation schedules per decode step (sequences join and leave between steps); "
        "false batches whole requests, each batch running until its longest sequence ends.",
    )
    kv_cache_tokens: Optional[int] = Field(
        None,
        ge=1,
        description="KV-cache budget of continuous batching, in tokens (rows x longest sequence); defaults to the plan's.",
    )
    prefill_chunk_tokens: int = Field(
        256,
        ge=16,
        description="A longer prompt's prefill runs in chunks of this many tokens, between other sequences' decode steps.",
    )

    def batch_limit(self, planned: int) -> int:
        """The most inputs per batch: this setting when given, else the plan's ``planned`` batch."""
        return self.max_batch_size or planned

    @classmethod
    def from_env(
        cls,
        environ: Optional[Mapping[str, str]] = None,
        *,
        defaults: Optional[Mapping[str, Any]] = None,
        **overrides: Any,
    ) -> "ServingSettings":
        """Settings from ``defaults`` (a package's), then ``MII_AZURE_*`` variables, then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {key: value for key, value in (defaults or {}).items() if value is not None}
        for field in cls.model_fields:
            variable = SETTINGS_ENV_PREFIX + field.upper()
            if variable in environ and environ[variable] != "":
                values[field] = environ[variable]  # pydantic converts the text to the field's type
        values.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{SETTINGS_ENV_PREFIX}{'.'.join(map(str, err['loc'])).upper()}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"Invalid serving settings: {problems}.", problems=problems) from None
