"""Chat messages rendered into one prompt with the tokenizer's own chat template.

Used by the OpenAI chat route and the model catalog's chat shape on ``/score``. Messages are
``{"role": str, "content": str | [{"type": "text", "text": str}, ...]}``; only text content is
served, and a model whose tokenizer has no chat template gets a 400 that says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BadRequestError
from ..tasks.base import json_type

__all__ = ["render_chat", "has_chat_template", "ROLES"]

#: Roles a chat template is given; ``developer`` (newer OpenAI clients) is the system role.
ROLES = ("system", "developer", "user", "assistant")


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer: Any, messages: Any, *, field: str = "messages") -> str:
    """The prompt the model's chat template makes of ``messages``, ready for the assistant's turn.

    Raises BadRequestError for messages of the wrong shape, non-text content, or a template that
    refuses them (many refuse roles out of order); ``field`` names the request field in messages.
    """
    if not has_chat_template(tokenizer):
        raise BadRequestError(
            "This model's tokenizer has no chat template, so chat messages cannot be turned into a prompt. "
            "Send a plain prompt (/v1/completions, or /score with 'query'), or serve a model whose "
            "tokenizer_config.json has a 'chat_template'.",
            param=field,
        )
    plain = [_plain_message(message, index, field) for index, message in enumerate(_message_list(messages, field))]
    try:
        prompt = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja's TemplateError (raise_exception in the template) and kin
        raise BadRequestError(
            f"The model's chat template refused these messages: {exc}. Check the roles and their order.",
            param=field,
        ) from None
    if not isinstance(prompt, str):
        raise BadRequestError("The model's chat template did not produce text.", param=field)
    return prompt


def _message_list(messages: Any, field: str) -> Sequence[Any]:
    if not isinstance(messages, list) or not messages:
        raise BadRequestError(
            f"'{field}' must be a non-empty list of messages such as "
            '[{"role": "user", "content": "Hello"}].',
            param=field,
        )
    return messages


def _plain_message(message: Any, index: int, field: str) -> dict[str, str]:
    where = f"{field}[{index}]"
    if not isinstance(message, Mapping):
        raise BadRequestError(
            f"'{where}' must be an object with 'role' and 'content', not a JSON {json_type(message)}.", param=where
        )
    role = message.get("role")
    if role not in ROLES:
        shown = f"{role!r}" if isinstance(role, str) else f"a JSON {json_type(role)}"
        tools = " Tool calls are not served by this deployment." if role in ("tool", "function") else ""
        raise BadRequestError(
            f"'{where}.role' is {shown}; use one of {', '.join(ROLES)}.{tools}", param=f"{where}.role"
        )
    unknown = sorted(set(message) - {"role", "content", "name"})
    if unknown:
        raise BadRequestError(
            f"'{where}' has field(s) {', '.join(map(repr, unknown))} this deployment does not serve; "
            "a message carries 'role', 'content' and optionally 'name'.",
            param=f"{where}.{unknown[0]}",
        )
    plain = {"role": "system" if role == "developer" else role, "content": _text_content(message.get("content"), where)}
    name = message.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise BadRequestError(f"'{where}.name' must be a string.", param=f"{where}.name")
        plain["name"] = name
    return plain


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for number, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, Mapping) else json_type(part)
                raise BadRequestError(
                    f"'{where}.content[{number}]' is {kind!r} content; this deployment serves text only "
                    '({"type": "text", "text": "..."}).',
                    param=f"{where}.content",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequestError(
        f"'{where}.content' must be a string or a list of text parts, not a JSON {json_type(content)}.",
        param=f"{where}.content",
    )
