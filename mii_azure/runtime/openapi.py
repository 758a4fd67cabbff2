"""The OpenAPI 3.1 document of a deployment's routes (``GET /openapi.json``), made from the same
request models the routes validate with, so clients and API testers (schemathesis) read what the
server really accepts. Only the routes for the deployment's task are listed, with their error shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

__all__ = ["openapi_document", "OPENAPI_PATH"]

#: Where the document is served.
OPENAPI_PATH = "/openapi.json"
_REF = "#/components/schemas/{model}"

_CONTRACT_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ANY_OBJECT = {"type": "object"}


def openapi_document(*, model: str, task: str, parameters_model: type[BaseModel], requires_key: bool) -> dict[str, Any]:
    """The document for a deployment serving ``task`` as ``model`` (``parameters_model``: the task's
    ``/score`` parameters; ``requires_key``: every route but the probe needs the bearer key)."""
    schemas: dict[str, Any] = {"ContractError": _CONTRACT_ERROR, "OpenAIError": _OPENAI_ERROR}
    parameters = _schema(parameters_model, schemas)
    paths: dict[str, Any] = {
        "/score": {
            "post": _operation(
                "Score inputs (DESIGN.md section 3); the model catalog's input_data shape too",
                _score_request(parameters),
                {"oneOf": [_ANY_OBJECT, {"type": "array"}]},
                "ContractError",
                stream=task == "text-generation",
            )
        },
        "/v1/models": {"get": _operation("The served model", None, _ANY_OBJECT, "OpenAIError")},
        "/v1/models/{id}": {
            "get": {
                **_operation("One model", None, _ANY_OBJECT, "OpenAIError", extra_status=("404",)),
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            }
        },
        "/info": {"get": _operation("Azure AI model inference: model info", None, _ANY_OBJECT, "OpenAIError")},
        "/metrics": {"get": _text_operation("Prometheus metrics")},
    }
    if task == "text-generation":
        completion = _schema(CompletionRequest, schemas)
        chat = _schema(ChatCompletionRequest, schemas)
        for prefix in ("/v1", "", "/models"):
            paths[f"{prefix}/completions"] = {"post": _operation("Completions", completion, _ANY_OBJECT, "OpenAIError", stream=True)}
            paths[f"{prefix}/chat/completions"] = {"post": _operation("Chat completions", chat, _ANY_OBJECT, "OpenAIError", stream=True)}
    if task == "feature-extraction":
        embedding = _schema(EmbeddingRequest, schemas)
        for prefix in ("/v1", "", "/models"):
            paths[f"{prefix}/embeddings"] = {"post": _operation("Embeddings", embedding, _ANY_OBJECT, "OpenAIError")}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"{model} ({task})", "version": "1", "description": "A mii_azure deployment."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if requires_key:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema as a reference, its definitions hoisted into ``components.schemas``."""
    schema = model.model_json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _score_request(parameters: dict[str, Any]) -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "type": "object",
        "anyOf": [{"required": ["query"]}, {"required": ["input_data"]}],
        "properties": {
            "query": {"oneOf": [text, {"type": "array", "items": text}, _ANY_OBJECT, {"type": "array", "items": _ANY_OBJECT}]},
            "parameters": parameters,
            "stream": {"type": "boolean"},
            "input_data": _ANY_OBJECT,
        },
    }


def _operation(
    summary: str, request: Any, answer: dict[str, Any], error: str, *, stream: bool = False, extra_status: tuple[str, ...] = ()
) -> dict[str, Any]:
    content = {"application/json": {"schema": answer}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    errors = {"$ref": f"#/components/schemas/{error}"}
    statuses = ["400", "401", "405", "413", "503", "504", *extra_status] if request is not None else ["401", "405", *extra_status]
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": content}}
        | {status: {"description": "Error", "content": {"application/json": {"schema": errors}}} for status in statuses},
    }
    if request is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": request}}}
    return operation


def _text_operation(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ContractError"}}}},
        },
    }
