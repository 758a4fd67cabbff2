"""The OpenAI-compatible API (DESIGN.md section 3b): request fields, answer shapes, and the routes'
handlers over the scoring service."""

from .api import ModelNotServedError, OpenAIApi

__all__ = ["OpenAIApi", "ModelNotServedError"]
