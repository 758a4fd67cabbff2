"""mii_azure.deploy(model, sku=...) end to end: the real azure-ai-ml MLClient against the loopback fake of
the Resource Manager, uploads into the real Azurite, and the deployment's own uploaded code and model
served by the real inference server behind an Azure-like front (conftest.py says what is faked)."""

from __future__ import annotations

import json

import pytest

import mii_azure
from mii_azure.errors import (
    AuthenticationError,
    BadRequestError,
    DeploymentFailedError,
    DeploymentNotFoundError,
    QuotaExceededError,
    WorkspaceNotConfiguredError,
)

pytestmark = pytest.mark.azure

SKU = "NC24ads"
INSTANCE_TYPE = "Standard_NC24ads_A100_v4"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MII_AZURE_HOME", str(tmp_path / "home"))


def _deployment_puts(fake):
    return [r for r in fake.state.requests_to("PUT", r"/onlineEndpoints/[^/]+/deployments/[^/]+$")]


def _all_recorded_text(fake) -> str:
    return "\n".join(json.dumps([r.method, r.path, r.query, r.body, r.headers], default=str) for r in fake.state.requests)


def test_the_full_cycle_through_the_real_sdk(azure_fake, azure_gpt2_dir):
    lines: list[str] = []
    dep = mii_azure.deploy(
        azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="chat", deployment="blue", progress=lines.append,
        max_batch_size=4,
    )
    assert (dep.name, dep.deployment, dep.target) == ("chat", "blue", "azureml")
    stages = [line.split("]")[0].strip("[") for line in lines if line.startswith("[")]
    for stage in ("preflight", "model", "environment", "endpoint", "deployment", "traffic"):
        assert stage in stages

    # The model's bytes landed in blob storage (Azurite), under the datastore the SDK was given.
    uploaded = azure_fake.blob_names()
    assert any(name.endswith("config.json") for name in uploaded) and any(name.endswith(".safetensors") for name in uploaded)

    # The code upload is the package's code and runtime snapshot, without the weights a second time.
    code_blobs = [name for container in azure_fake.containers() if container != azure_fake.datastore_container
                  for name in azure_fake.blob_names(container)]
    assert any(name.endswith("score.py") for name in code_blobs) and any(name.endswith("mii_package.json") for name in code_blobs)
    assert any("targets/azureml/target.py" in name for name in code_blobs), "the whole runtime snapshot travels"
    assert not any(name.endswith(".safetensors") for name in code_blobs), "the weights travel once, as the model"

    # What the SDK sent: instance type and count, probes, request settings, variables, auth, traffic.
    body = _deployment_puts(azure_fake)[-1].body["properties"]
    assert body["instanceType"] == INSTANCE_TYPE
    assert _deployment_puts(azure_fake)[-1].body["sku"]["capacity"] == 1
    plan = dep.plan
    assert body["requestSettings"]["maxConcurrentRequestsPerInstance"] == plan.replicas * plan.max_batch_size
    assert body["requestSettings"]["requestTimeout"] == "PT2M"
    for probe in ("livenessProbe", "readinessProbe"):
        assert body[probe]["initialDelay"].startswith("PT") and body[probe]["failureThreshold"] == 30
    variables = body["environmentVariables"]
    assert variables["MII_AZURE_DEPLOYMENT_NAME"] == "chat" and variables["WORKER_COUNT"] == str(plan.replicas)
    endpoint_puts = azure_fake.state.requests_to("PUT", r"/onlineEndpoints/chat$")
    assert endpoint_puts[0].body["properties"]["authMode"] == "Key"
    assert endpoint_puts[-1].body["properties"]["traffic"] == {"blue": 100}
    # The deployment's environment routes every path to the package's launcher: probes on GET /, scoring on
    # / (so the endpoint forwards /score and /v1/... alike), all on the launcher's port; the fake ran the
    # image's own command and probed the readiness route. The endpoint's scoring URI is then its root.
    (environment_put,) = azure_fake.state.requests_to("PUT", r"/environments/[^/]+/versions/[^/]+$")
    assert body["environmentId"].endswith(environment_put.path.split("/workspaces/ws-mii-test")[1])
    assert environment_put.body["properties"]["inferenceConfig"] == {
        "livenessRoute": {"port": 5001, "path": "/"},
        "readinessRoute": {"port": 5001, "path": "/"},
        "scoringRoute": {"port": 5001, "path": "/"},
    }
    front = azure_fake.endpoint_front("chat")
    assert azure_fake.ml_client.online_endpoints.get("chat").scoring_uri == f"{front.base_url}/"
    assert (dep.scoring_uri, dep.openai_base_url) == (f"{front.base_url}/score", f"{front.base_url}/v1")

    # The same call and answer shape as locally; the endpoint's name is the model.
    answer = dep.query("DeepSpeed is", max_new_tokens=4)
    assert answer["model"] == "chat" and answer["task"] == "text-generation"
    local = mii_azure.deploy(azure_gpt2_dir, local=True, name="chat-local", max_batch_size=4)
    try:
        assert local.query("DeepSpeed is", max_new_tokens=4)["responses"] == answer["responses"]
    finally:
        local.delete()
    # The OpenAI routes are reachable at the endpoint: the real openai client, the endpoint's key, the
    # endpoint's name as the model; greedy, it continues the prompt as /score does.
    import openai

    key = azure_fake.ml_client.online_endpoints.get_keys("chat").primary_key
    client = openai.OpenAI(base_url=dep.openai_base_url, api_key=key, max_retries=0)
    completion = client.completions.create(model="chat", prompt="DeepSpeed is", max_tokens=4, temperature=0)
    assert completion.model == "chat" and completion.object == "text_completion"
    assert completion.choices[0].text == answer["responses"][0]["generated_text"]
    assert completion.usage.completion_tokens == answer["responses"][0]["num_tokens"]
    assert [model.id for model in client.models.list()] == ["chat"]
    assert ("POST", "/v1/completions", "blue", 200) in [(r.method, r.path, r.deployment, r.status) for r in front.log]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=dep.openai_base_url, api_key="not-the-key", max_retries=0).completions.create(
            model="chat", prompt="DeepSpeed is", max_tokens=4
        )
    assert (front.log[-1].status, front.log[-1].deployment) == (401, None), "the front refused it; the container never saw it"
    # The same errors: the container's 400 arrives as a 424 from the front, and is a BadRequestError again.
    with pytest.raises(BadRequestError) as bad:
        dep.query("DeepSpeed is", bogus=1)
    assert bad.value.status_code == 400 and bad.value.front_status_code == 424 and "bogus" in bad.value.message

    assert "score" in dep.logs(lines=200).lower() or dep.logs(lines=200)
    found = mii_azure.get_deployment("chat", ml_client=azure_fake.ml_client)
    assert (found.deployment, found.scoring_uri) == ("blue", dep.scoring_uri)
    assert [(d.name, d.deployment) for d in mii_azure.list_deployments(ml_client=azure_fake.ml_client)] == [("chat", "blue")]

    # No secret in anything the SDK sent, the handle's repr, or the logs it returns.
    keys = azure_fake.state.endpoints["chat"].keys
    recorded = _all_recorded_text(azure_fake)
    for secret in keys.values():
        assert secret not in recorded and secret not in repr(dep) and secret not in repr(vars(dep))

    # A second deployment of the same content reuses the registered model: nothing is uploaded again.
    model_puts = len(azure_fake.state.requests_to("PUT", r"/models/[^/]+/versions/"))
    blobs = len(azure_fake.blob_names())
    green = mii_azure.deploy(
        azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="chat", deployment="green", progress=False,
        max_batch_size=4,
    )
    assert len(azure_fake.state.requests_to("PUT", r"/models/[^/]+/versions/")) == model_puts
    assert len(azure_fake.blob_names()) == blobs
    traffic = azure_fake.ml_client.online_endpoints.get("chat").traffic
    assert {name: share for name, share in traffic.items() if share} == {"blue": 100}, "a later deployment takes no traffic"
    assert green.query("DeepSpeed is", max_new_tokens=4)["responses"] == answer["responses"]

    green.delete()
    assert [d.deployment for d in mii_azure.list_deployments(ml_client=azure_fake.ml_client)] == ["blue"]
    dep.delete()  # its endpoint's last deployment: the endpoint goes too
    assert mii_azure.list_deployments(ml_client=azure_fake.ml_client) == []
    with pytest.raises(DeploymentNotFoundError):
        dep.delete()


def test_provisioning_failure_surfaces_the_log_tail_and_deletes_what_it_made(azure_fake, azure_gpt2_dir):
    azure_fake.state.fail_next_deployment("ResourceNotReady: User container has crashed or terminated: ImportError in score.py")
    with pytest.raises(DeploymentFailedError) as failed:
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="crashes", progress=False)
    assert "failed to provision" in failed.value.message and "ImportError in score.py" in failed.value.message
    assert "Last log lines" in failed.value.message and failed.value.kept is False
    assert "deleted" in failed.value.message
    assert "crashes" not in azure_fake.state.endpoints, "on_failure='delete' removed the endpoint it created"


def test_readiness_timeout_keeps_the_deployment_and_says_it_bills(azure_fake, azure_gpt2_dir):
    azure_fake.state.hang_next_deployment()
    with pytest.raises(DeploymentFailedError) as failed:
        mii_azure.deploy(
            azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="slow", progress=False, timeout_s=3, on_failure="keep"
        )
    assert failed.value.reason == "timeout" and failed.value.kept is True
    assert "bills until it is deleted" in failed.value.message
    assert ("slow", "blue") in azure_fake.state.deployments


def test_an_interrupted_deploy_cleans_up(azure_fake, azure_gpt2_dir):
    azure_fake.state.hang_next_deployment()

    def interrupt_while_provisioning(line: str) -> None:
        if line.startswith("[deployment]") and "provisioning (" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="ctrl-c", progress=interrupt_while_provisioning)
    assert "ctrl-c" not in azure_fake.state.endpoints, "Ctrl-C with on_failure='delete' left nothing that bills"


def test_quota_and_region_are_checked_before_anything_is_created(azure_fake, azure_gpt2_dir):
    from mii_azure.sku_choice import required_vcpus
    from mii_azure.skus import get_sku

    t4 = get_sku("Standard_NC8as_T4_v3")  # not exempt from the 20% upgrade reserve
    needed = required_vcpus(t4, 2)
    assert needed == 3 * t4.vcpus, "ceil(1.2 x 2) = 3 instances' worth of vCPUs"
    azure_fake.state.set_quota(t4.quota_family, limit=needed - 1, current=0)
    with pytest.raises(QuotaExceededError) as short:
        mii_azure.deploy(azure_gpt2_dir, sku=t4.instance_type, ml_client=azure_fake.ml_client, endpoint="quota", instance_count=2, progress=False)
    assert (short.value.needed, short.value.limit, short.value.family) == (needed, needed - 1, t4.quota_family)
    assert t4.quota_family in short.value.message and "20%" in short.value.message
    azure_fake.state.remove_size(INSTANCE_TYPE)
    with pytest.raises(QuotaExceededError, match="does not offer") as missing:
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="region", progress=False)
    assert missing.value.reason == "region" and "Standard_NC8as_T4_v3" in missing.value.message, "it names sizes the region has"
    assert not azure_fake.state.requests_to("PUT"), "nothing was created"


def test_a_refused_credential_says_what_to_run(azure_fake, azure_gpt2_dir):
    from azure.core.exceptions import ClientAuthenticationError

    class Expired:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("AADSTS700082: The refresh token has expired due to inactivity.")

        def get_token_info(self, *scopes, **kwargs):
            return self.get_token(*scopes)

    client = azure_fake.make_ml_client(credential=Expired())
    with pytest.raises(AuthenticationError) as refused:
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=client, endpoint="auth", progress=False)
    assert "az login" in refused.value.message and "AADSTS700082" in refused.value.message


def test_default_azure_credential_with_workspace_ids(managed_identity, azure_gpt2_dir):
    """subscription/resource group/workspace ids + DefaultAzureCredential (a managed identity whose token
    endpoint is the fake; nothing leaves loopback)."""
    fake = managed_identity
    found = mii_azure.list_deployments(subscription_id=fake.subscription_id, resource_group=fake.resource_group, workspace=fake.workspace_name)
    assert found == []
    assert fake.state.requests_to("GET", r"/onlineEndpoints$"), "the listing reached the fake Resource Manager"


def test_resource_manager_throttling_is_retried_by_azure_core(azure_fake, azure_gpt2_dir):
    azure_fake.state.inject("GET", r"/vmSizes$", 429, retry_after_s=0)
    azure_fake.state.inject("GET", r"/usages$", 503, retry_after_s=0)
    run = mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="retried", progress=False, max_batch_size=4)
    assert len(azure_fake.state.requests_to("GET", r"/vmSizes$")) >= 2 and len(azure_fake.state.requests_to("GET", r"/usages$")) >= 2
    run.delete()


def test_unknown_endpoints_are_not_found(azure_fake):
    with pytest.raises(DeploymentNotFoundError, match="No Azure ML endpoint named 'nothing-here'"):
        mii_azure.get_deployment("nothing-here", ml_client=azure_fake.ml_client)
    from mii_azure.targets.azureml import AzureMLTarget, connect

    with pytest.raises(DeploymentNotFoundError):
        AzureMLTarget(connect(azure_fake.ml_client)).delete("nothing-here")


def test_no_workspace_lists_the_three_ways(tmp_path, monkeypatch, azure_gpt2_dir):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkspaceNotConfiguredError, match="config.json"):
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, endpoint="nowhere", progress=False)


def test_the_cli_verbs_against_the_workspace(managed_identity, azure_gpt2_dir, capsys, tmp_path, monkeypatch):
    """`mii-azure list|query|logs|delete NAME --azure`, with the workspace from config.json and
    DefaultAzureCredential (a managed identity whose token endpoint is the fake)."""
    from mii_azure.cli import main

    fake = managed_identity
    fake.config_json(tmp_path / "project")
    nested = tmp_path / "project" / "notebooks"
    nested.mkdir()
    monkeypatch.chdir(nested)  # config.json is searched upwards
    assert main(["deploy", str(azure_gpt2_dir), "--sku", SKU, "--endpoint", "cli-chat"]) == 0
    shown = capsys.readouterr().out
    for stage in ("preflight", "model", "environment", "endpoint", "deployment", "traffic"):
        assert stage in shown, "the rich display names every stage"
    assert "cli-chat/blue: on Azure ML" in shown
    assert main(["list", "--azure", "--json"]) == 0
    assert [(d["name"], d["deployment"]) for d in json.loads(capsys.readouterr().out)] == [("cli-chat", "blue")]
    assert main(["query", "cli-chat", '{"query": ["DeepSpeed is"], "parameters": {"max_new_tokens": 3}}', "--azure"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["model"] == "cli-chat"
    assert main(["query", "cli-chat", '{"query": ["x"], "parameters": {"bogus": 1}}', "--azure"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bogus" in err and "Traceback" not in err
    assert main(["logs", "cli-chat", "--azure", "--lines", "20"]) == 0
    logs = capsys.readouterr().out
    assert logs.strip() and len(logs.strip().splitlines()) <= 20
    keys = fake.state.endpoints["cli-chat"].keys.values()
    assert not any(key in printed + err + logs for key in keys), "no key in CLI output"
    assert main(["delete", "cli-chat", "--azure"]) == 0
    assert "cli-chat" not in fake.state.endpoints
    assert main(["delete", "cli-chat", "--azure"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_cli_dry_run_needs_no_workspace(azure_gpt2_dir, capsys, tmp_path, monkeypatch):
    from mii_azure.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["deploy", str(azure_gpt2_dir), "--sku", "ND96", "--endpoint", "big", "--deployment", "green", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "big/green" in out and "az ml online-endpoint create -f" in out and "--all-traffic" in out
    assert "'ND96' matches" in out, "the choice among the ND96 sizes is explained"


def test_wait_false_returns_a_poller(azure_fake, azure_gpt2_dir):
    """deploy(wait=False) returns at once with a poller, in the manner of azure-ai-ml's begin_* calls; a
    failure is raised by result()."""
    azure_fake.state.fail_next_deployment("ResourceNotReady: the container exited with code 3")
    poller = mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="later", wait=False)
    assert poller.status() in {"starting", "preflight", "model", "environment", "endpoint", "deployment"}
    with pytest.raises(DeploymentFailedError, match="exited with code 3"):
        poller.result(timeout=240)
    assert poller.done() and poller.status() == "failed"


def test_token_auth_and_deploying_onto_an_existing_deployment_updates_it(azure_fake, azure_gpt2_dir):
    dep = mii_azure.deploy(
        azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="tokens", auth_mode="aml_token", progress=False,
        max_batch_size=2,
    )
    endpoint_put = azure_fake.state.requests_to("PUT", r"/onlineEndpoints/tokens$")[0]
    assert endpoint_put.body["properties"]["authMode"] == "AMLToken"
    assert dep.query("DeepSpeed is", max_new_tokens=2)["model"] == "tokens"
    assert azure_fake.state.requests_to("POST", r"/onlineEndpoints/tokens/token$"), "an Azure ML token was fetched"
    updated = mii_azure.deploy(
        azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="tokens", deployment="blue", progress=False,
        max_batch_size=8, auth_mode="aml_token",
    )
    puts = azure_fake.state.requests_to("PUT", r"/onlineEndpoints/tokens/deployments/blue$")
    assert len(puts) == 2
    assert puts[-1].body["properties"]["requestSettings"]["maxConcurrentRequestsPerInstance"] == 8 * updated.plan.replicas
    assert updated.query("DeepSpeed is", max_new_tokens=2)["responses"][0]["num_tokens"] == 2
    # A failed update never deletes the deployment that was there before it.
    azure_fake.state.fail_next_deployment("ResourceNotReady: the new version crashed")
    with pytest.raises(DeploymentFailedError, match="existed before this call and is not deleted"):
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="tokens", progress=False, auth_mode="aml_token")
    assert not azure_fake.state.requests_to("DELETE", r"/onlineEndpoints/tokens"), "nothing was deleted"
    updated.delete()
