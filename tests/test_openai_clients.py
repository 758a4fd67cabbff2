"""Real clients against a local deployment started with an API key: the ``openai`` client (sync and
streaming), azure-ai-inference's ChatCompletionsClient on the un-prefixed routes, /metrics read with
prometheus-client's own parser, and gRPC with the key. One deployment serves the whole module."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import mii_azure

pytestmark = [pytest.mark.serving, pytest.mark.harness]

KEY = "local-key-5b9e21"
NAME = "chat"
PROMPT = "Hello there"


@pytest.fixture(scope="module")
def chat(model_dirs):
    deployment = mii_azure.deploy(model_dirs["gpt2_chat"], local=True, name=NAME, api_key=KEY, progress=False)
    yield deployment
    deployment.delete()


@pytest.fixture(scope="module")
def client(chat):
    import openai

    return openai.OpenAI(base_url=chat.openai_base_url, api_key=KEY, max_retries=0)


def _get(url: str, key: str | None = KEY) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _root(deployment) -> str:
    return deployment.scoring_uri[: -len("/score")]


def test_the_handle_sends_the_key_and_another_process_needs_it(chat):
    greedy = chat.query(PROMPT, max_new_tokens=6)["responses"][0]["generated_text"]
    assert isinstance(greedy, str)
    with pytest.raises(mii_azure.errors.AuthenticationError):
        mii_azure.get_deployment(NAME).query(PROMPT)
    again = mii_azure.get_deployment(NAME, api_key=KEY).query(PROMPT, max_new_tokens=6)
    assert again["responses"][0]["generated_text"] == greedy
    assert KEY not in repr(chat)


def test_the_key_is_in_no_file_the_deployment_wrote(chat):
    home = mii_azure.targets.local.state_home()
    for path in home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_openai_completions_and_chat_answer_like_score(chat, client):
    completion = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=0)
    assert completion.choices[0].text == chat.query(PROMPT, max_new_tokens=6)["responses"][0]["generated_text"]
    assert completion.usage.prompt_tokens > 0 and completion.model == NAME

    messages = [{"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model=NAME, messages=messages, max_completion_tokens=6, temperature=0)
    rendered = "<|user|>Hi\n<|assistant|>"  # tests/model_factory.py CHAT_TEMPLATE
    assert reply.choices[0].message.content == chat.query(rendered, max_new_tokens=6)["responses"][0]["generated_text"]
    assert reply.choices[0].finish_reason in ("stop", "length")

    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == reply.choices[0].message.content
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens

    streamed = "".join(c.choices[0].text for c in client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=0, stream=True))
    assert streamed == completion.choices[0].text
    assert [model.id for model in client.models.list()] == [NAME]


def test_openai_errors_reach_the_client_typed(chat):
    import openai

    with pytest.raises(openai.AuthenticationError) as wrong:
        openai.OpenAI(base_url=chat.openai_base_url, api_key="not-the-key", max_retries=0).models.list()
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
    good = openai.OpenAI(base_url=chat.openai_base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        good.completions.create(model="gpt-4o", prompt="x")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        good.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], logit_bias={"3": 5})
    assert bad.value.param == "logit_bias"


def test_azure_ai_inference_chat_client_on_the_unprefixed_routes(chat, client):
    from azure.ai.inference import ChatCompletionsClient
    from azure.ai.inference.models import UserMessage
    from azure.core.credentials import AzureKeyCredential

    azure_client = ChatCompletionsClient(endpoint=_root(chat), credential=AzureKeyCredential(KEY))
    info = azure_client.get_model_info()
    assert (info.model_name, info.model_type) == (NAME, "chat_completion")
    answer = azure_client.complete(messages=[UserMessage("Hi")], max_tokens=6, temperature=0)
    expected = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
    assert answer.choices[0].message.content == expected.choices[0].message.content
    pieces = [update.choices[0].delta.content or "" for update in azure_client.complete(
        messages=[UserMessage("Hi")], max_tokens=6, temperature=0, stream=True) if update.choices]
    assert "".join(pieces) == expected.choices[0].message.content
    models_path = ChatCompletionsClient(endpoint=_root(chat) + "/models", credential=AzureKeyCredential(KEY))
    assert models_path.complete(messages=[UserMessage("Hi")], max_tokens=6, temperature=0).choices[0].message.content == answer.choices[0].message.content


def test_the_catalog_shape_through_the_server(chat):
    native = chat.query(PROMPT, max_new_tokens=5)["responses"][0]["generated_text"]
    body = json.dumps({"input_data": {"input_string": [PROMPT], "parameters": {"max_new_tokens": 5}}}).encode()
    request = urllib.request.Request(chat.scoring_uri, data=body, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert json.loads(answer.read()) == [{"0": native}]


def test_metrics_count_exactly_the_requests_sent(chat, client):
    from prometheus_client.parser import text_string_to_metric_families

    def counts() -> dict[tuple[str, str], float]:
        status, text = _get(_root(chat) + "/metrics")
        assert status == 200
        found = {}
        for family in text_string_to_metric_families(text.decode()):
            if family.name == "mii_azure_requests":
                for sample in family.samples:
                    if sample.name == "mii_azure_requests_total":
                        found[(sample.labels["route"], sample.labels["status"])] = sample.value
        return found

    before = counts()
    for _ in range(3):
        client.completions.create(model=NAME, prompt=PROMPT, max_tokens=2)
    import openai

    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAME, prompt=PROMPT, max_tokens=2, logit_bias={"1": 1})
    chat.query(PROMPT, max_new_tokens=2)
    after = counts()
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert delta[("/v1/completions", "200")] == 3
    assert delta[("/v1/completions", "400")] == 1
    assert delta[("/score", "200")] == 1
    assert delta[("/metrics", "200")] == 1  # the first read
    status, _ = _get(_root(chat) + "/metrics", key=None)
    assert status == 401
    assert _get(_root(chat) + "/", key=None)[0] == 200  # the probe stays open


def test_grpc_needs_the_key_too(chat):
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    triton = grpcclient.InferenceServerClient(chat.grpc_target)
    assert triton.is_server_ready()  # health stays open
    tensor = grpcclient.InferInput("query", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([PROMPT.encode()], dtype=object))
    with pytest.raises(InferenceServerException) as refused:
        triton.infer(NAME, [tensor])
    assert "UNAUTHENTICATED" in str(refused.value.status())
    answer = triton.infer(NAME, [tensor], headers={"authorization": f"Bearer {KEY}"})
    assert json.loads(answer.as_numpy("responses")[0])["generated_text"] is not None


def test_the_cli_reads_the_key_from_an_environment_variable(chat, monkeypatch, capsys):
    from mii_azure.cli import main

    monkeypatch.setenv("CHAT_KEY", KEY)
    assert main(["query", NAME, PROMPT, "--api-key-env", "CHAT_KEY"]) == 0
    answered = capsys.readouterr()
    assert "generated_text" in answered.out
    assert main(["query", NAME, PROMPT]) == 1
    refused = capsys.readouterr()
    assert "API key" in refused.err
    monkeypatch.delenv("CHAT_KEY")
    assert main(["query", NAME, PROMPT, "--api-key-env", "CHAT_KEY"]) == 1
    assert "CHAT_KEY is not set" in capsys.readouterr().err
    assert KEY not in answered.out + answered.err + refused.out + refused.err


def test_openai_embeddings_with_minilm_equal_score_vectors(servers):
    import openai

    from helpers import post_json

    server = servers.get("minilm")
    texts = ["a cat sits on the mat", "markets fell sharply"]
    vectors = [entry["embedding"] for entry in post_json(server.scoring_uri, {"query": texts}).body["responses"]]
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    name = client.models.list().data[0].id
    packed = client.embeddings.create(model=name, input=texts)  # the client asks for base64 and decodes it
    for item, vector in zip(packed.data, vectors, strict=True):
        assert item.embedding == pytest.approx(vector, abs=1e-7)  # float32 on the wire
    floats = client.embeddings.create(model=name, input=texts[0], encoding_format="float")
    assert floats.data[0].embedding == vectors[0]
    assert floats.usage.prompt_tokens > 0


def test_langchain_azureml_endpoints_dedicated_and_serverless(chat, client):
    """LangChain's Azure ML clients unchanged: the catalog shape on /score ("dedicated") and the
    un-prefixed OpenAI routes ("serverless": /completions, /models/chat/completions)."""
    from langchain_community.chat_models.azureml_endpoint import (
        AzureMLChatOnlineEndpoint,
        CustomOpenAIChatContentFormatter,
    )
    from langchain_community.llms.azureml_endpoint import AzureMLOnlineEndpoint, CustomOpenAIContentFormatter
    from langchain_core.messages import HumanMessage

    root = _root(chat)
    dedicated = AzureMLOnlineEndpoint(
        endpoint_url=chat.scoring_uri, endpoint_api_type="dedicated", endpoint_api_key=KEY,
        content_formatter=CustomOpenAIContentFormatter(), model_kwargs={"max_new_tokens": 5},
    )
    quoted = f'"{PROMPT}"'  # the formatter sends the prompt in quotes
    assert dedicated.invoke(PROMPT) == chat.query(quoted, max_new_tokens=5)["responses"][0]["generated_text"]

    serverless = AzureMLOnlineEndpoint(
        endpoint_url=root + "/completions", endpoint_api_type="serverless", endpoint_api_key=KEY,
        content_formatter=CustomOpenAIContentFormatter(), model_kwargs={"max_tokens": 5, "temperature": 0},
    )
    expected = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=5, temperature=0).choices[0].text
    assert serverless.invoke(PROMPT) == expected.strip()

    chat_dedicated = AzureMLChatOnlineEndpoint(
        endpoint_url=chat.scoring_uri, endpoint_api_type="dedicated", endpoint_api_key=KEY,
        content_formatter=CustomOpenAIChatContentFormatter(), model_kwargs={"max_new_tokens": 5},
    )
    rendered = chat.query("<|user|>Hi\n<|assistant|>", max_new_tokens=5)["responses"][0]["generated_text"]
    assert chat_dedicated.invoke([HumanMessage(content="Hi")]).content == rendered

    chat_serverless = AzureMLChatOnlineEndpoint(
        endpoint_url=root + "/models/chat/completions", endpoint_api_type="serverless", endpoint_api_key=KEY,
        content_formatter=CustomOpenAIChatContentFormatter(), model_kwargs={"max_tokens": 5, "temperature": 0},
    )
    openai_text = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0
    ).choices[0].message.content
    assert chat_serverless.invoke([HumanMessage(content="Hi")]).content == openai_text.strip()
