"""The OpenAI-compatible API of a deployment (DESIGN.md section 3b), over the scoring service.

Completions and chat completions become one-input generation requests of the engine (one per
choice), embeddings one feature-extraction request: the same engine, batcher and checks as
``/score``. Defaults follow OpenAI's: sampling at temperature 1 unless ``temperature`` is 0 (greedy),
16 new tokens for completions, and for chat as many as the deployment allows after the prompt.
``finish_reason`` is ``length`` when a choice used all its new tokens, else ``stop``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from ...errors import BadRequestError, RequestError
from ...tasks.base import ScoringRequest
from ..chat_template import has_chat_template, render_chat
from ..replies import HttpReply
from ..streaming import SSE_HEADERS
from . import shapes
from .generate import ChoiceSet, OpenAIStreamBody
from .protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse_body

if TYPE_CHECKING:
    from ..service import ScoringService

__all__ = ["OpenAIApi", "ModelNotServedError"]

GENERATION_TASK = "text-generation"
EMBEDDING_TASK = "feature-extraction"
#: ``/info``'s model type by task (Azure AI model inference API).
_MODEL_TYPES = {EMBEDDING_TASK: "embeddings", "text-to-image": "image_generation"}


class ModelNotServedError(RequestError):
    """The request names a model this deployment does not serve (OpenAI's ``model_not_found``)."""

    status: ClassVar[int] = 404
    code: ClassVar[str] = "model_not_found"


class OpenAIApi:
    """Answers the OpenAI routes for one scoring service; methods take decoded bodies and return
    :class:`HttpReply` answers, raising a RequestError (with ``param`` when a field is at fault)."""

    def __init__(self, service: "ScoringService") -> None:
        self.service = service
        self.created = int(time.time())

    @property
    def model_name(self) -> str:
        """The name clients use as ``model``: the deployment's (on Azure, the endpoint's)."""
        return self.service.name

    # --- models and info ---------------------------------------------------------------------
    def list_models(self) -> dict[str, Any]:
        """``GET /v1/models``."""
        return {"object": "list", "data": [shapes.model_card(self.model_name, self.created)]}

    def get_model(self, model_id: str) -> dict[str, Any]:
        """``GET /v1/models/{id}``."""
        self._check_model(model_id)
        return shapes.model_card(self.model_name, self.created)

    def info(self) -> dict[str, Any]:
        """``GET /info`` of the Azure AI model inference API."""
        task = self.service.task_cls.name
        if task == GENERATION_TASK:
            chat = has_chat_template(getattr(self.service.engine.task, "tokenizer", None))
            model_type = "chat_completion" if chat else "text_generation"
        else:
            model_type = _MODEL_TYPES.get(task, task)
        return {"model_name": self.model_name, "model_type": model_type, "model_provider_name": shapes.OWNER}

    # --- generation --------------------------------------------------------------------------
    def completions(self, payload: Any, route: str = "/v1/completions") -> HttpReply:
        """``POST /v1/completions``."""
        _refuse_token_ids(payload, "prompt")
        request: CompletionRequest = parse_body(CompletionRequest, payload, route)
        self._check_task(GENERATION_TASK, route)
        self._check_model(request.model)
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        if not prompts:
            raise BadRequestError("'prompt' is an empty list; send at least one prompt.", param="prompt")
        sets = self._choice_sets(request, prompts, request.max_tokens, "max_tokens")
        if request.stream:
            return self._stream(sets, request, chat=False, echo=request.echo)
        choices = [choice for choice_set in sets for choice in choice_set.run(self.service, echo=request.echo)]
        prompt_tokens = sum(choice_set.prompt_tokens for choice_set in sets)
        return _json(shapes.completion(shapes.new_id("cmpl"), self.model_name, choices, prompt_tokens))

    def chat_completions(self, payload: Any, route: str = "/v1/chat/completions") -> HttpReply:
        """``POST /v1/chat/completions``."""
        request: ChatCompletionRequest = parse_body(ChatCompletionRequest, payload, route)
        self._check_task(GENERATION_TASK, route)
        self._check_model(request.model)
        prompt = render_chat(getattr(self.service.engine.task, "tokenizer", None), request.messages)
        limit_field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        sets = self._choice_sets(request, [prompt], request.token_limit(), limit_field)
        if request.stream:
            return self._stream(sets, request, chat=True)
        choices = sets[0].run(self.service)
        return _json(shapes.chat_completion(shapes.new_id("chatcmpl"), self.model_name, choices, sets[0].prompt_tokens))

    # --- embeddings --------------------------------------------------------------------------
    def embeddings(self, payload: Any, route: str = "/v1/embeddings") -> HttpReply:
        """``POST /v1/embeddings``."""
        _refuse_token_ids(payload, "input")
        request: EmbeddingRequest = parse_body(EmbeddingRequest, payload, route)
        self._check_task(EMBEDDING_TASK, route)
        self._check_model(request.model)
        texts = [request.input] if isinstance(request.input, str) else list(request.input)
        service = self.service
        inputs = service.task_cls.parse_query(texts)
        scoring = ScoringRequest(inputs=inputs, parameters=service.task_cls.parse_parameters({}))
        counts = service.engine.task.check_lengths(inputs, field="input")
        vectors = [entry["embedding"] for entry in service.score_request(scoring)["responses"]]
        if request.dimensions is not None and vectors and request.dimensions != len(vectors[0]):
            raise BadRequestError(
                f"'dimensions'={request.dimensions} is not served: {self.model_name} makes {len(vectors[0])}-dimensional "
                "embeddings; leave dimensions out.",
                param="dimensions",
            )
        return _json(shapes.embeddings(self.model_name, vectors, sum(counts), request.encoding_format))

    # --- helpers -----------------------------------------------------------------------------
    def _check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_name:
            raise ModelNotServedError(
                f"The model '{model}' does not exist here: this deployment serves '{self.model_name}'. "
                f"Send \"model\": \"{self.model_name}\" (or leave it out).",
                param="model",
            )

    def _check_task(self, task: str, route: str) -> None:
        served = self.service.task_cls.name
        if served != task:
            other = {GENERATION_TASK: "/v1/completions or /v1/chat/completions", EMBEDDING_TASK: "/v1/embeddings"}
            hint = f" Use {other[served]}, or /score." if served in other else " Use /score."
            raise BadRequestError(
                f"{route} is served for {task} models; this deployment serves {served}.{hint}",
                task=served,
            )

    def _choice_sets(
        self, request: Any, prompts: list[str], max_tokens: Optional[int], limit_field: str
    ) -> list[ChoiceSet]:
        settings = self.service.settings
        sequences = request.n * len(prompts)
        if sequences > settings.max_inputs_per_request:
            raise BadRequestError(
                f"n={request.n} choices of {len(prompts)} prompt(s) make {sequences} sequences; this deployment "
                f"makes at most {settings.max_inputs_per_request} per request. Lower n or send fewer prompts.",
                param="n",
            )
        task = self.service.engine.task
        sets = []
        for number, prompt in enumerate(prompts):
            prompt_tokens = len(task.prompt_tokens(prompt))
            limit = self._token_limit(prompt_tokens, max_tokens, limit_field)
            parameters = _generation_parameters(request, limit)
            sets.append(
                ChoiceSet.build(
                    self.service, prompt, parameters, n=request.n, prompt_tokens=prompt_tokens, first_index=number * request.n
                )
            )
        return sets

    def _token_limit(self, prompt_tokens: int, asked: Optional[int], field: str) -> int:
        """New tokens for a prompt: ``asked`` when it fits, else a 400; unset, all that fit."""
        allowed = self.service.settings.max_new_tokens_limit
        positions = self.service.engine.facts.max_positions
        cache = getattr(self.service.engine.batcher, "kv_cache_tokens", None)
        room = min(value - prompt_tokens for value in (positions, cache) if value) if (positions or cache) else None
        if asked is None:
            fits = allowed if room is None else min(allowed, room)
            if fits < 1:
                raise BadRequestError(
                    f"The prompt is {prompt_tokens} tokens long and leaves no room for new tokens in this model's "
                    f"context of {positions or cache} tokens. Shorten the messages.",
                    param="messages",
                    openai_code="context_length_exceeded",
                )
            return fits
        if asked > allowed:
            raise BadRequestError(
                f"'{field}' is too large: {asked}. This deployment makes at most {allowed} new tokens per choice.",
                param=field,
            )
        if room is not None and asked > room:
            raise BadRequestError(
                f"This model's maximum context length is {prompt_tokens + room} tokens. However, you requested "
                f"{prompt_tokens + asked} tokens ({prompt_tokens} in the prompt, {asked} in the completion). "
                f"Lower '{field}' or shorten the prompt.",
                param=field,
                openai_code="context_length_exceeded",
            )
        return asked

    def _stream(self, sets: list[ChoiceSet], request: Any, *, chat: bool, echo: bool = False) -> HttpReply:
        streams = []
        try:
            for choice_set in sets:
                streams.append(choice_set.open(self.service))
        except BaseException:
            for group in streams:
                for stream in group:
                    stream.close()
            raise
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        body = OpenAIStreamBody(sets, streams, model=self.model_name, chat=chat, include_usage=include_usage, echo=echo)
        return HttpReply(200, None, dict(SSE_HEADERS), stream=body)


def _generation_parameters(request: Any, max_new_tokens: int) -> dict[str, Any]:
    """The native text-generation parameters of an OpenAI request (OpenAI's default temperature is 1)."""
    parameters: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    temperature = 1.0 if request.temperature is None else request.temperature
    if temperature == 0:
        parameters["do_sample"] = False
    else:
        parameters["do_sample"] = True
        parameters["temperature"] = float(temperature)
        if request.top_p is not None:
            parameters["top_p"] = float(request.top_p)
        if request.top_k is not None:
            parameters["top_k"] = request.top_k
    if request.repetition_penalty is not None:
        parameters["repetition_penalty"] = float(request.repetition_penalty)
    stops = request.stop_list()
    if stops:
        parameters["stop"] = stops
    if request.seed is not None:
        parameters["seed"] = request.seed % 2**63
    return parameters


def _refuse_token_ids(payload: Any, field: str) -> None:
    """Token-id inputs (lists of integers) are not served: say so before validation's noise."""
    if not isinstance(payload, Mapping):
        return
    value = payload.get(field)
    items = value if isinstance(value, list) else []
    if any(isinstance(item, (int, list)) and not isinstance(item, bool) for item in items):
        raise BadRequestError(
            f"'{field}' holds token ids; this deployment takes text only. Send the text itself.", param=field
        )


def _json(body: dict[str, Any]) -> HttpReply:
    return HttpReply(200, body)
