"""Pure tests of the class-level request validation of every task (no model is loaded).

Covers ``Task.parse_request`` / ``parse_parameters`` / ``parse_query`` / ``inputs_from_tensors``,
``example_request``, the error types of the scoring contract and ``ServingSettings.from_env``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from mii_azure.config import ServingSettings
from mii_azure.errors import (
    BadRequestError,
    ConfigError,
    MiiAzureError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    ScoringError,
    ServiceUnavailableError,
    TaskMismatchError,
    error_for_status,
)
from mii_azure.models import TASKS
from mii_azure.tasks import get_task

SETTINGS = ServingSettings()
QA = "question-answering"
TEXT_TASKS = [name for name in TASKS if name != QA]
GENERATION_TASKS = ["text-generation", "text2text-generation"]

# One valid single query and a valid 3-input list query per task.
ONE_QUERY: dict[str, Any] = {name: "Hello world" for name in TEXT_TASKS}
ONE_QUERY[QA] = {"question": "Who wrote it?", "context": "Ada wrote it."}

# A parameter every task accepts (also at the top level), a valid value and a different valid value.
LEGACY_PARAMETER: dict[str, tuple[str, Any, Any]] = {
    "text-generation": ("max_new_tokens", 8, 9),
    "text2text-generation": ("max_new_tokens", 8, 9),
    "text-classification": ("top_k", 2, 3),
    "token-classification": ("ignore_labels", ["O", "MISC"], ["O"]),
    "fill-mask": ("top_k", 3, 4),
    "question-answering": ("max_answer_length", 10, 11),
    "feature-extraction": ("normalize", True, False),
    "text-to-image": ("num_inference_steps", 5, 6),
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "text-generation": {
        "max_new_tokens": 32,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "do_sample": None,
        "repetition_penalty": 1.0,
        "seed": None,
        "stop": None,
        "return_full_text": False,
    },
    "text2text-generation": {
        "max_new_tokens": 32,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "do_sample": None,
        "repetition_penalty": 1.0,
        "seed": None,
        "stop": None,
    },
    "text-classification": {"top_k": 1},
    "token-classification": {"ignore_labels": ["O"]},
    "fill-mask": {"top_k": 5},
    "question-answering": {"max_answer_length": 30},
    "feature-extraction": {"normalize": None},
    "text-to-image": {
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "height": None,
        "width": None,
        "negative_prompt": None,
        "seed": None,
    },
}


def parse(task: str, payload: Any, settings: ServingSettings = SETTINGS):
    return get_task(task).parse_request(payload, settings)


def bad_request(task: str, payload: Any, *fragments: str) -> BadRequestError:
    """Parse ``payload``, expect a 400, and check that the message contains every fragment."""
    with pytest.raises(BadRequestError) as info:
        parse(task, payload)
    err = info.value
    assert err.status == 400
    assert err.code == "bad_request"
    for fragment in fragments:
        assert fragment in err.message, f"{fragment!r} not in {err.message!r}"
    assert err.to_body() == {"error": {"code": "bad_request", "message": err.message}}
    return err


def many(task: str, count: int) -> list[Any]:
    if task == QA:
        return [{"question": f"Question {i}?", "context": f"Context {i}."} for i in range(count)]
    return [f"text {i}" for i in range(count)]


# --- valid shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_string_query_is_one_input(task: str) -> None:
    request = parse(task, {"query": "Hello world"})
    assert request.inputs == ["Hello world"]


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_list_query_keeps_inputs_in_order(task: str) -> None:
    request = parse(task, {"query": ["b first", "a second", "c third"], "parameters": {}})
    assert request.inputs == ["b first", "a second", "c third"]


@pytest.mark.parametrize("task", TASKS)
def test_parameters_default_when_absent_empty_or_null(task: str) -> None:
    for payload in (
        {"query": ONE_QUERY[task]},
        {"query": ONE_QUERY[task], "parameters": {}},
        {"query": ONE_QUERY[task], "parameters": None},
    ):
        request = parse(task, payload)
        assert request.parameters.model_dump() == DEFAULTS[task]
        assert type(request.parameters) is get_task(task).parameters_model


@pytest.mark.parametrize("task", TASKS)
def test_parameters_are_frozen(task: str) -> None:
    parameters = parse(task, {"query": ONE_QUERY[task]}).parameters
    name = next(iter(DEFAULTS[task]))
    with pytest.raises(ValidationError):
        setattr(parameters, name, DEFAULTS[task][name])


@pytest.mark.parametrize("task", TASKS)
def test_given_parameter_is_used(task: str) -> None:
    key, value, _ = LEGACY_PARAMETER[task]
    request = parse(task, {"query": ONE_QUERY[task], "parameters": {key: value}})
    assert getattr(request.parameters, key) == value


@pytest.mark.parametrize("task", TASKS)
def test_legacy_top_level_parameter_is_merged(task: str) -> None:
    key, value, _ = LEGACY_PARAMETER[task]
    request = parse(task, {"query": ONE_QUERY[task], key: value})
    assert getattr(request.parameters, key) == value
    # Beside other parameters given the new way.
    request = parse(task, {"query": ONE_QUERY[task], key: value, "parameters": {}})
    assert getattr(request.parameters, key) == value


@pytest.mark.parametrize("task", TASKS)
def test_same_key_twice_with_same_value_is_accepted(task: str) -> None:
    key, value, _ = LEGACY_PARAMETER[task]
    request = parse(task, {"query": ONE_QUERY[task], key: value, "parameters": {key: copy.deepcopy(value)}})
    assert getattr(request.parameters, key) == value


@pytest.mark.parametrize("task", TASKS)
def test_same_key_twice_with_different_values_is_refused(task: str) -> None:
    key, value, other = LEGACY_PARAMETER[task]
    bad_request(task, {"query": ONE_QUERY[task], key: value, "parameters": {key: other}}, repr(key), "twice")


def test_legacy_generation_request_with_several_keywords() -> None:
    request = parse(
        "text-generation",
        {"query": ["DeepSpeed is", "Azure is"], "max_new_tokens": 16, "do_sample": True, "top_p": 0.9},
    )
    assert request.inputs == ["DeepSpeed is", "Azure is"]
    assert request.parameters.max_new_tokens == 16
    assert request.parameters.top_p == 0.9
    assert request.parameters.sampling is True


@pytest.mark.parametrize("task", TASKS)
def test_example_request_is_a_valid_request(task: str) -> None:
    example = get_task(task).example_request()
    payload = json.loads(example)
    request = parse(task, payload)
    assert len(request.inputs) >= 1


def test_get_task_unknown_name() -> None:
    with pytest.raises(TaskMismatchError) as info:
        get_task("summarization")
    assert "summarization" in info.value.message
    assert info.value.supported_tasks == TASKS


# --- generation parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("task", GENERATION_TASKS)
@pytest.mark.parametrize(
    "parameters, sampling",
    [
        ({}, False),
        ({"max_new_tokens": 5, "seed": 3, "repetition_penalty": 1.2}, False),
        ({"do_sample": True}, True),
        ({"do_sample": False}, False),
        ({"temperature": 0.7}, True),
        ({"top_p": 0.9}, True),
        ({"top_k": 40}, True),
        ({"top_k": 0}, True),
        ({"temperature": 0.7, "do_sample": False}, False),
        ({"top_p": 0.5, "top_k": 10, "do_sample": False}, False),
        ({"temperature": 0.7, "do_sample": True}, True),
    ],
)
def test_sampling_property(task: str, parameters: dict[str, Any], sampling: bool) -> None:
    assert parse(task, {"query": "x", "parameters": parameters}).parameters.sampling is sampling


@pytest.mark.parametrize("task", GENERATION_TASKS)
@pytest.mark.parametrize(
    "stop, sequences",
    [
        (None, []),
        ("\n", ["\n"]),
        ("END", ["END"]),
        (["END", "###"], ["END", "###"]),
        ([], []),
    ],
)
def test_stop_sequences(task: str, stop: Any, sequences: list[str]) -> None:
    request = parse(task, {"query": "x", "parameters": {"stop": stop}})
    assert request.parameters.stop_sequences == sequences


@pytest.mark.parametrize("task", GENERATION_TASKS)
@pytest.mark.parametrize("stop", ["", [""], ["END", ""]])
def test_empty_stop_sequence_is_refused(task: str, stop: Any) -> None:
    bad_request(task, {"query": "x", "parameters": {"stop": stop}}, "'stop'", "non-empty")


@pytest.mark.parametrize("task", GENERATION_TASKS)
@pytest.mark.parametrize("stop", [1, ["END", 2], {"a": "b"}, True])
def test_non_string_stop_is_refused(task: str, stop: Any) -> None:
    bad_request(task, {"query": "x", "parameters": {"stop": stop}}, "stop")


def test_text_generation_accepts_return_full_text() -> None:
    assert parse("text-generation", {"query": "x"}).parameters.return_full_text is False
    request = parse("text-generation", {"query": "x", "parameters": {"return_full_text": True}})
    assert request.parameters.return_full_text is True
    request = parse("text-generation", {"query": "x", "return_full_text": True})  # legacy shape
    assert request.parameters.return_full_text is True


def test_text2text_generation_rejects_return_full_text_as_unknown() -> None:
    err = bad_request(
        "text2text-generation",
        {"query": "x", "parameters": {"return_full_text": True}},
        "Unknown parameter 'return_full_text'",
        "text2text-generation",
        "Accepted parameters:",
    )
    assert "return_full_text" not in err.accepted
    assert "max_new_tokens" in err.accepted
    bad_request("text2text-generation", {"query": "x", "return_full_text": True}, "'return_full_text'")


# --- body, query and parameters errors ---------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(
    "payload, kind",
    [(["Hello"], "array"), ("Hello", "string"), (3, "number"), (2.5, "number"), (None, "null"), (True, "boolean")],
)
def test_body_must_be_an_object(task: str, payload: Any, kind: str) -> None:
    err = bad_request(task, payload, "JSON object", f"not a JSON {kind}")
    assert get_task(task).example_request() in err.message


@pytest.mark.parametrize("task", TASKS)
def test_missing_query(task: str) -> None:
    bad_request(task, {}, "no 'query' field")
    bad_request(task, {"parameters": {}}, "no 'query' field")
    bad_request(task, {"inputs": ONE_QUERY[task]}, "no 'query' field")


@pytest.mark.parametrize("task", TASKS)
def test_empty_list_query(task: str) -> None:
    bad_request(task, {"query": []}, "'query' is empty")


@pytest.mark.parametrize("task", TEXT_TASKS)
@pytest.mark.parametrize("text", ["", " ", "\n\t "])
def test_empty_or_blank_string_query(task: str, text: str) -> None:
    bad_request(task, {"query": text}, "'query' is an empty string")
    bad_request(task, {"query": ["fine", text]}, "'query[1]' is an empty string")


@pytest.mark.parametrize("task", TEXT_TASKS)
@pytest.mark.parametrize(
    "item, kind", [(3, "number"), (None, "null"), (True, "boolean"), (["nested"], "array"), ({"a": 1}, "object")]
)
def test_non_string_item_is_named_by_index(task: str, item: Any, kind: str) -> None:
    bad_request(task, {"query": ["fine", "also fine", item]}, "'query[2]' must be a string", f"JSON {kind}")
    bad_request(task, {"query": [item]}, "'query[0]'")


@pytest.mark.parametrize("task", TEXT_TASKS)
@pytest.mark.parametrize("query, kind", [(3, "number"), (None, "null"), (True, "boolean"), ({"a": "b"}, "object")])
def test_query_of_wrong_type(task: str, query: Any, kind: str) -> None:
    bad_request(task, {"query": query}, "'query' must be a string or a list of strings", f"JSON {kind}")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("parameters, kind", [([], "array"), ("max_new_tokens=3", "string"), (3, "number"), (True, "boolean")])
def test_parameters_must_be_an_object(task: str, parameters: Any, kind: str) -> None:
    bad_request(task, {"query": ONE_QUERY[task], "parameters": parameters}, "'parameters' must be a JSON object", kind)


@pytest.mark.parametrize("task", TASKS)
def test_unknown_parameter_lists_accepted_parameters(task: str) -> None:
    accepted = sorted(get_task(task).parameters_model.model_fields)
    err = bad_request(
        task,
        {"query": ONE_QUERY[task], "parameters": {"bogus": 1}},
        "Unknown parameter 'bogus'",
        task,
        "Accepted parameters: " + ", ".join(accepted) + ".",
    )
    assert err.unknown == ["bogus"]
    assert err.accepted == accepted


@pytest.mark.parametrize("task", TASKS)
def test_several_unknown_parameters(task: str) -> None:
    err = bad_request(
        task, {"query": ONE_QUERY[task], "parameters": {"zeta": 1, "alpha": 2}}, "Unknown parameters 'alpha', 'zeta'"
    )
    assert err.unknown == ["alpha", "zeta"]


@pytest.mark.parametrize("task", TASKS)
def test_unknown_top_level_field_is_an_unknown_parameter(task: str) -> None:
    err = bad_request(task, {"query": ONE_QUERY[task], "bogus": 1}, "Unknown parameter 'bogus'")
    assert err.unknown == ["bogus"]


STRICT_TYPE_CASES = [
    # (task, parameter, value) -- string for int, float for int, int for bool, bool for int ...
    ("text-generation", "max_new_tokens", "8"),
    ("text-generation", "max_new_tokens", 8.0),
    ("text-generation", "max_new_tokens", True),
    ("text-generation", "top_k", "40"),
    ("text-generation", "top_k", 40.0),
    ("text-generation", "top_k", False),
    ("text-generation", "seed", 1.5),
    ("text-generation", "seed", "42"),
    ("text-generation", "do_sample", 1),
    ("text-generation", "do_sample", "true"),
    ("text-generation", "return_full_text", 0),
    ("text-generation", "temperature", "0.7"),
    ("text-generation", "temperature", True),
    ("text2text-generation", "max_new_tokens", "8"),
    ("text2text-generation", "max_new_tokens", 8.0),
    ("text2text-generation", "do_sample", 1),
    ("text2text-generation", "max_new_tokens", True),
    ("text-classification", "top_k", "2"),
    ("text-classification", "top_k", 2.0),
    ("text-classification", "top_k", True),
    ("token-classification", "ignore_labels", "O"),
    ("token-classification", "ignore_labels", [1]),
    ("fill-mask", "top_k", "3"),
    ("fill-mask", "top_k", 3.0),
    ("fill-mask", "top_k", True),
    ("question-answering", "max_answer_length", "10"),
    ("question-answering", "max_answer_length", 10.0),
    ("question-answering", "max_answer_length", True),
    ("feature-extraction", "normalize", 1),
    ("feature-extraction", "normalize", "true"),
    ("text-to-image", "num_inference_steps", "5"),
    ("text-to-image", "num_inference_steps", 5.0),
    ("text-to-image", "height", True),
    ("text-to-image", "guidance_scale", "7.5"),
    ("text-to-image", "negative_prompt", 3),
]


@pytest.mark.parametrize("task, key, value", STRICT_TYPE_CASES)
def test_strict_types(task: str, key: str, value: Any) -> None:
    # f"'{key}" rather than repr(key): a list item is named as e.g. 'ignore_labels.0'.
    err = bad_request(task, {"query": ONE_QUERY[task], "parameters": {key: value}}, "Invalid parameter", f"'{key}")
    assert err.parameters == {key: value}
    # The legacy top-level shape is validated just as strictly.
    bad_request(task, {"query": ONE_QUERY[task], key: value}, f"'{key}")


@pytest.mark.parametrize("task", GENERATION_TASKS)
def test_int_is_accepted_for_a_float_parameter(task: str) -> None:
    request = parse(task, {"query": "x", "parameters": {"temperature": 1, "top_p": 1, "repetition_penalty": 2}})
    assert request.parameters.temperature == 1.0
    assert request.parameters.top_p == 1.0
    assert request.parameters.repetition_penalty == 2.0


OUT_OF_RANGE_CASES = [
    ("text-generation", "max_new_tokens", 0),
    ("text-generation", "max_new_tokens", -1),
    ("text-generation", "max_new_tokens", -100),
    ("text-generation", "temperature", 0),
    ("text-generation", "temperature", 0.0),
    ("text-generation", "temperature", -0.5),
    ("text-generation", "temperature", 101),
    ("text-generation", "temperature", float("nan")),
    ("text-generation", "top_p", 1.5),
    ("text-generation", "top_p", 0),
    ("text-generation", "top_k", -1),
    ("text-generation", "repetition_penalty", 0),
    ("text-generation", "repetition_penalty", -1.0),
    ("text-generation", "seed", -1),
    ("text-generation", "seed", 2**63),
    ("text2text-generation", "max_new_tokens", 0),
    ("text2text-generation", "temperature", 0),
    ("text2text-generation", "top_p", 1.5),
    ("text2text-generation", "repetition_penalty", 0),
    ("text2text-generation", "seed", -1),
    ("text-classification", "top_k", 0),
    ("fill-mask", "top_k", 0),
    ("fill-mask", "top_k", 1001),
    ("question-answering", "max_answer_length", 0),
    ("question-answering", "max_answer_length", 513),
    ("text-to-image", "num_inference_steps", 0),
    ("text-to-image", "num_inference_steps", 501),
    ("text-to-image", "guidance_scale", -1),
    ("text-to-image", "height", 4),
    ("text-to-image", "width", 0),
    ("text-to-image", "seed", -1),
]


@pytest.mark.parametrize("task, key, value", OUT_OF_RANGE_CASES)
def test_out_of_range(task: str, key: str, value: Any) -> None:
    bad_request(task, {"query": ONE_QUERY[task], "parameters": {key: value}}, "Invalid parameter", repr(key))


@pytest.mark.parametrize(
    "task, parameters",
    [
        ("text-generation", {"max_new_tokens": 1, "temperature": 100, "top_p": 1, "top_k": 0, "seed": 0}),
        ("text-generation", {"seed": 2**63 - 1, "repetition_penalty": 100}),
        ("fill-mask", {"top_k": 1000}),
        ("question-answering", {"max_answer_length": 512}),
        ("text-to-image", {"num_inference_steps": 500, "guidance_scale": 0, "height": 8, "width": 8}),
    ],
)
def test_range_bounds_are_inclusive_where_documented(task: str, parameters: dict[str, Any]) -> None:
    request = parse(task, {"query": ONE_QUERY[task], "parameters": parameters})
    for key, value in parameters.items():
        assert getattr(request.parameters, key) == value


def test_several_invalid_parameters_are_all_named() -> None:
    err = bad_request(
        "text-generation",
        {"query": "x", "parameters": {"max_new_tokens": 0, "top_p": 1.5}},
        "'max_new_tokens'",
        "'top_p'",
    )
    assert "(got 0)" in err.message and "(got 1.5)" in err.message


# --- payload too large -------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_more_inputs_than_the_limit(task: str) -> None:
    settings = ServingSettings(max_inputs_per_request=2)
    assert len(parse(task, {"query": many(task, 2)}, settings).inputs) == 2
    with pytest.raises(PayloadTooLargeError) as info:
        parse(task, {"query": many(task, 3)}, settings)
    err = info.value
    assert err.status == 413
    assert err.code == "payload_too_large"
    assert err.inputs == 3
    assert err.limit == 2
    assert "3 inputs" in err.message and "at most 2" in err.message
    assert err.to_body() == {"error": {"code": "payload_too_large", "message": err.message}}


@pytest.mark.parametrize("task", TASKS)
def test_default_input_limit(task: str) -> None:
    limit = SETTINGS.max_inputs_per_request
    assert limit == 32
    assert len(parse(task, {"query": many(task, limit)}).inputs) == limit
    with pytest.raises(PayloadTooLargeError) as info:
        parse(task, {"query": many(task, limit + 1)})
    assert (info.value.inputs, info.value.limit) == (limit + 1, limit)


def test_limit_of_one_accepts_a_single_string() -> None:
    settings = ServingSettings(max_inputs_per_request=1)
    assert parse("text-generation", {"query": "x"}, settings).inputs == ["x"]
    with pytest.raises(PayloadTooLargeError):
        parse("text-generation", {"query": ["x", "y"]}, settings)


# --- question-answering ------------------------------------------------------------------------


def qa_inputs(payload: Any) -> list[tuple[str, str]]:
    return [(item.question, item.context) for item in parse(QA, payload).inputs]


def test_qa_object_query() -> None:
    assert qa_inputs({"query": {"question": "Who?", "context": "Ada wrote it."}}) == [("Who?", "Ada wrote it.")]


def test_qa_list_query_keeps_order() -> None:
    payload = {
        "query": [
            {"question": "Q2?", "context": "C2."},
            {"context": "C1.", "question": "Q1?"},
            {"question": "Q3?", "context": "C3."},
        ],
        "parameters": {"max_answer_length": 5},
    }
    assert qa_inputs(payload) == [("Q2?", "C2."), ("Q1?", "C1."), ("Q3?", "C3.")]
    assert parse(QA, payload).parameters.max_answer_length == 5


def test_qa_legacy_top_level_question_and_context() -> None:
    assert qa_inputs({"question": "Who?", "context": "Ada wrote it."}) == [("Who?", "Ada wrote it.")]
    request = parse(QA, {"question": "Who?", "context": "Ada wrote it.", "max_answer_length": 7})
    assert request.parameters.max_answer_length == 7
    request = parse(QA, {"question": "Who?", "context": "Ada.", "parameters": {"max_answer_length": 7}})
    assert request.parameters.max_answer_length == 7


@pytest.mark.parametrize(
    "payload, missing",
    [
        ({"question": "Who?"}, "context"),
        ({"context": "Ada wrote it."}, "question"),
        ({"question": "Who?", "context": None}, "context"),
        ({"query": {"question": "Who?"}}, "context"),
        ({"query": {"context": "Ada wrote it."}}, "question"),
        ({"query": {"question": None, "context": "Ada wrote it."}}, "question"),
        ({"query": {}}, "question"),
    ],
)
def test_qa_missing_question_or_context(payload: dict[str, Any], missing: str) -> None:
    bad_request(QA, payload, f"has no '{missing}'")


def test_qa_missing_field_in_a_list_is_named_by_index() -> None:
    bad_request(
        QA,
        {"query": [{"question": "Q?", "context": "C."}, {"question": "Q?"}]},
        "'query[1]' has no 'context'",
    )


def test_qa_extra_fields_are_refused() -> None:
    bad_request(QA, {"query": {"question": "Q?", "context": "C.", "id": 1}}, "'query' has unknown fields", "'id'")
    bad_request(
        QA,
        {"query": [{"question": "Q?", "context": "C."}, {"question": "Q?", "context": "C.", "answer": "x"}]},
        "'query[1]' has unknown fields",
        "'answer'",
    )


@pytest.mark.parametrize("question, kind", [(5, "number"), (True, "boolean"), ({"text": "Q?"}, "object")])
def test_qa_non_string_question(question: Any, kind: str) -> None:
    bad_request(QA, {"query": {"question": question, "context": "C."}}, "'query.question'", f"JSON {kind}")
    bad_request(QA, {"query": {"question": "Q?", "context": question}}, "'query.context'", f"JSON {kind}")


@pytest.mark.parametrize("question", [["Q?"], ["Q1?", "Q2?"]])
def test_qa_list_question_is_refused(question: list[str]) -> None:
    bad_request(QA, {"query": {"question": question, "context": "C."}}, "'query.question' must be a string, not a JSON array")
    bad_request(QA, {"question": question, "context": "C."}, "'query.question' must be a string, not a JSON array")


def test_qa_list_context_with_several_items_is_refused() -> None:
    bad_request(QA, {"query": {"question": "Q?", "context": ["C1.", "C2."]}}, "'query.context' must be a string, not a JSON array")


def test_qa_one_element_list_context_is_refused() -> None:
    bad_request(QA, {"query": {"question": "Q?", "context": ["C."]}}, "'query.context' must be a string, not a JSON array")


@pytest.mark.parametrize("text", ["", "   "])
def test_qa_blank_question_or_context(text: str) -> None:
    bad_request(QA, {"query": {"question": text, "context": "C."}}, "'query.question' is an empty string")
    bad_request(QA, {"query": [{"question": "Q?", "context": "C."}, {"question": "Q?", "context": text}]},
                "'query[1].context' is an empty string")


@pytest.mark.parametrize("query, kind", [("Who?", "string"), (3, "number"), (None, "null")])
def test_qa_query_of_wrong_type(query: Any, kind: str) -> None:
    bad_request(QA, {"query": query}, "'query' must be an object", f"JSON {kind}")


def test_qa_list_item_not_an_object() -> None:
    bad_request(QA, {"query": [{"question": "Q?", "context": "C."}, "Who?"]}, "'query[1]' must be an object", "string")


def test_qa_query_and_top_level_question_together_are_refused() -> None:
    # With 'query' present, a top-level 'question' is not a QA input; it is refused as unknown.
    bad_request(QA, {"query": {"question": "Q?", "context": "C."}, "question": "Other?"}, "'question'")


def test_qa_inputs_from_tensors() -> None:
    task = get_task(QA)
    assert task.input_names == ("question", "context")
    inputs = task.inputs_from_tensors({"question": ["Q1?", "Q2?"], "context": ["C1.", "C2."]})
    assert [(item.question, item.context) for item in inputs] == [("Q1?", "C1."), ("Q2?", "C2.")]


@pytest.mark.parametrize(
    "tensors, fragments",
    [
        ({"question": ["Q1?", "Q2?"], "context": ["C1."]}, ("'question' (2)", "'context' (1)", "same length")),
        ({"question": ["Q1?"]}, ("'question' (1)", "'context' (0)")),
        ({"question": [], "context": []}, ("'query' is empty",)),
        ({}, ("'query' is empty",)),
        ({"question": ["Q?"], "context": [" "]}, ("'query[0].context' is an empty string",)),
    ],
)
def test_qa_inputs_from_tensors_errors(tensors: dict[str, list[str]], fragments: tuple[str, ...]) -> None:
    with pytest.raises(BadRequestError) as info:
        get_task(QA).inputs_from_tensors(tensors)
    assert info.value.status == 400
    for fragment in fragments:
        assert fragment in info.value.message


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_text_inputs_from_tensors(task: str) -> None:
    assert get_task(task).input_names == ("query",)
    assert get_task(task).inputs_from_tensors({"query": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(BadRequestError):
        get_task(task).inputs_from_tensors({"query": []})


def test_text_inputs_from_tensors_without_query_tensor() -> None:
    with pytest.raises(BadRequestError):
        get_task("text-generation").inputs_from_tensors({"text": ["a"]})


# --- other real bugs in parse_request ----------------------------------------------------------


@pytest.mark.parametrize(
    "top, inside",
    [({"do_sample": True}, {"do_sample": 1}), ({"max_new_tokens": 5}, {"max_new_tokens": 5.0})],
)
def test_duplicate_key_with_differently_typed_equal_value_is_refused(top: dict, inside: dict) -> None:
    bad_request("text-generation", {"query": "x", **top, "parameters": inside})


def test_parse_request_does_not_mutate_the_payload() -> None:
    payload = {"query": ["x"], "max_new_tokens": 5, "parameters": {"seed": 1}}
    before = copy.deepcopy(payload)
    parse("text-generation", payload)
    assert payload == before


def test_parse_request_keeps_the_payload_without_legacy_keys() -> None:
    payload = {"query": ["x"], "parameters": {"seed": 1}}
    before = copy.deepcopy(payload)
    parse("text-generation", payload)
    assert payload == before


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, status, code",
    [
        (BadRequestError("bad"), 400, "bad_request"),
        (PayloadTooLargeError("big", inputs=3, limit=2), 413, "payload_too_large"),
        (ServiceUnavailableError("busy"), 503, "unavailable"),
        (RequestTimeoutError("slow", timeout_s=1.0), 504, "timeout"),
        (ScoringError("broken"), 500, "internal_error"),
        (RequestError("generic"), 500, "internal_error"),
    ],
)
def test_error_status_code_and_body(error: RequestError, status: int, code: str) -> None:
    assert isinstance(error, MiiAzureError)
    assert error.status == status
    assert error.code == code
    assert error.to_body() == {"error": {"code": code, "message": error.message}}
    assert str(error) == error.message


def test_error_facts_become_attributes() -> None:
    err = PayloadTooLargeError("big", inputs=3, limit=2)
    assert (err.inputs, err.limit) == (3, 2)
    assert err.facts == {"inputs": 3, "limit": 2}
    assert ServiceUnavailableError("busy").retry_after == 1.0
    assert ServiceUnavailableError("busy", retry_after=5).retry_after == 5


@pytest.mark.parametrize(
    "status, cls",
    [
        (400, BadRequestError),
        (413, PayloadTooLargeError),
        (503, ServiceUnavailableError),
        (504, RequestTimeoutError),
        (500, ScoringError),
        (404, BadRequestError),
        (422, BadRequestError),
        (429, BadRequestError),
        (499, BadRequestError),
        (501, ScoringError),
        (502, ScoringError),
        (599, ScoringError),
    ],
)
def test_error_for_status(status: int, cls: type[RequestError]) -> None:
    assert error_for_status(status) is cls


# --- ServingSettings ---------------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = ServingSettings()
    assert settings.max_inputs_per_request == 32
    assert settings.deployment_name is None
    assert settings.max_input_tokens is None


def test_settings_from_env_reads_variables() -> None:
    settings = ServingSettings.from_env(
        {
            "MII_AZURE_MAX_INPUTS_PER_REQUEST": "8",
            "MII_AZURE_MAX_NEW_TOKENS_LIMIT": "64",
            "MII_AZURE_REQUEST_TIMEOUT_S": "2.5",
            "MII_AZURE_DEPLOYMENT_NAME": "my-deployment",
            "MII_AZURE_TASK": "text-generation",
            "MII_AZURE_MAX_INPUT_TOKENS": "",  # empty: ignored
            "MII_AZURE_MAX_IMAGE_SIDE": "",
            "MII_AZURE_NOT_A_SETTING": "whatever",  # unknown: ignored
            "UNRELATED": "1",
        }
    )
    assert settings.max_inputs_per_request == 8
    assert isinstance(settings.max_inputs_per_request, int)
    assert settings.max_new_tokens_limit == 64
    assert settings.request_timeout_s == 2.5
    assert settings.deployment_name == "my-deployment"
    assert settings.task == "text-generation"
    assert settings.max_input_tokens is None
    assert settings.max_image_side == ServingSettings().max_image_side


def test_settings_from_env_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MII_AZURE_MAX_INPUTS_PER_REQUEST", "5")
    monkeypatch.setenv("MII_AZURE_DEPLOYMENT_NAME", "from-os")
    settings = ServingSettings.from_env()
    assert settings.max_inputs_per_request == 5
    assert settings.deployment_name == "from-os"


def test_settings_from_env_empty_environment_gives_defaults() -> None:
    assert ServingSettings.from_env({}) == ServingSettings()


def test_settings_overrides_win() -> None:
    environ = {"MII_AZURE_MAX_INPUTS_PER_REQUEST": "8", "MII_AZURE_DEPLOYMENT_NAME": "env-name"}
    settings = ServingSettings.from_env(environ, max_inputs_per_request=4, deployment_name=None)
    assert settings.max_inputs_per_request == 4
    assert settings.deployment_name == "env-name"  # a None override leaves the variable's value
    assert ServingSettings.from_env({}, max_new_tokens_limit=10).max_new_tokens_limit == 10


@pytest.mark.parametrize("value", ["0", "-1", "abc", "5000", "1.5", "false", "[8]"])
def test_settings_invalid_value_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServingSettings.from_env({"MII_AZURE_MAX_INPUTS_PER_REQUEST": value})
    assert "MII_AZURE_MAX_INPUTS_PER_REQUEST" in info.value.message
    assert "MII_AZURE_MAX_INPUTS_PER_REQUEST" in info.value.problems


def test_settings_invalid_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ServingSettings.from_env({}, max_body_bytes=10)
    with pytest.raises(ConfigError):
        ServingSettings.from_env({}, not_a_setting=1)


def test_settings_are_frozen_and_forbid_extra_fields() -> None:
    settings = ServingSettings()
    with pytest.raises(ValidationError):
        settings.max_inputs_per_request = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ServingSettings(not_a_setting=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ServingSettings(max_inputs_per_request=0)


@pytest.mark.parametrize("value", ["123", "true", "2024.1"])
def test_settings_string_values_are_kept_verbatim(value: str) -> None:
    assert ServingSettings.from_env({"MII_AZURE_DEPLOYMENT_NAME": value}).deployment_name == value


@pytest.mark.parametrize("variable", ["MII_AZURE_MAX_INPUTS_PER_REQUEST", "MII_AZURE_REQUEST_TIMEOUT_S"])
def test_settings_boolean_for_a_number_is_refused(variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServingSettings.from_env({variable: "true"})
    assert variable in info.value.message


@pytest.mark.serving
@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 3000 + b"]" * 3000, "too deeply"),
        (b'{"query": "\\ud800"}', "lone UTF-16 surrogate (\\ud800 at character 0 of query)"),
        (b'{"query": ["fine", "x\\udfff"]}', "of query[1]"),
        (b'{"query": "x", "parameters": {"stop": "\\udc00"}}', "of parameters.stop"),
    ],
)
def test_bodies_the_json_decoder_or_tokenizer_would_choke_on_are_400s(body, says):
    from mii_azure.runtime.service import decode_json_body

    with pytest.raises(BadRequestError) as refused:
        decode_json_body(body)
    assert says in refused.value.message


@pytest.mark.serving
def test_surrogate_pairs_are_characters():
    from mii_azure.runtime.service import decode_json_body

    assert decode_json_body(b'{"query": "\\ud83d\\ude00 ok"}') == {"query": "\U0001f600 ok"}
