"""The loopback fakes of Azure, driven by the raw azure-ai-ml SDK (no mii_azure.deploy).

These tests prove the test infrastructure: a real ``MLClient`` registers, uploads, deploys, scores,
routes traffic, reads logs and deletes against the fake Resource Manager, Azurite and the
Azure-like front, and the fakes' failure modes reach the SDK as Azure's would.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.azure

#: A scoring script without a model: echoes, fails with a chosen status, or sleeps, on request.
ECHO_SCORE = '''
import json
import os
import time

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    body = json.loads(request.get_data() or b"{}")
    if "status" in body:
        return AMLResponse({"error": {"code": "Asked", "message": "asked to fail"}}, int(body["status"]), json_str=True)
    time.sleep(float(body.get("sleep", 0)))
    return AMLResponse({"echo": body, "variable": os.environ.get("FAKE_TEST_VARIABLE"),
                        "model_dir": os.environ.get("AZUREML_MODEL_DIR")}, 200, json_str=True)
'''

CRASHING_SCORE = '''
def init():
    raise RuntimeError("the scoring script cannot start: no weights here")


def run(raw_data):
    return {}
'''

IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"


# ------------------------------------------------------------------------------------------ helpers


def _code_folder(root: Path, script: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "score.py").write_text(script, encoding="utf-8")
    return root


def _conda_file(root: Path) -> Path:
    path = root / "conda.yml"
    path.write_text("name: echo\ndependencies:\n- python=3.11\n- pip\n- pip:\n  - azureml-inference-server-http\n",
                    encoding="utf-8")
    return path


def _create_endpoint(ml_client: Any, name: str, auth_mode: str = "key") -> Any:
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ml_client.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=name, auth_mode=auth_mode)).result()


def _echo_deployment(endpoint: str, code: Path, name: str = "blue", **overrides: Any) -> Any:
    from azure.ai.ml.entities import CodeConfiguration, Environment, ManagedOnlineDeployment, OnlineRequestSettings

    arguments: dict[str, Any] = {
        "name": name,
        "endpoint_name": endpoint,
        "code_configuration": CodeConfiguration(code=str(code), scoring_script="score.py"),
        "environment": Environment(image=IMAGE, conda_file=str(_conda_file(code.parent))),
        "instance_type": "Standard_DS3_v2",
        "instance_count": 1,
        "environment_variables": {"FAKE_TEST_VARIABLE": "from-the-deployment"},
        "request_settings": OnlineRequestSettings(request_timeout_ms=2000, max_concurrent_requests_per_instance=1),
    }
    arguments.update(overrides)
    return ManagedOnlineDeployment(**arguments)


def _bearer(secret: str, deployment: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {secret}"}
    if deployment:
        headers["azureml-model-deployment"] = deployment
    return headers


def _sdk_field(entity: Any, name: str, wire_name: str) -> Any:
    """A field of an azure-ai-ml compute entity. 1.35.2 copies the REST JSON onto VmSize and Usage with
    the wire names (``vCPUs``, ``currentValue``), leaving the documented attributes None."""
    value = getattr(entity, name, None)
    return value if value is not None else vars(entity).get(wire_name)


def _jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ------------------------------------------------------------------------------------------ workspace


def test_workspace_datastore_and_compute_catalog(azure_fake: Any) -> None:
    ml_client = azure_fake.ml_client
    workspace = ml_client.workspaces.get()
    assert workspace.name == azure_fake.workspace_name
    assert workspace.location == azure_fake.location

    store = ml_client.datastores.get_default()
    assert (store.name, store.account_name, store.container_name) == (
        "workspaceblobstore", "devstoreaccount1", azure_fake.datastore_container)

    sizes = {size.name: size for size in ml_client.compute.list_sizes(location=azure_fake.location)}
    a100 = sizes["Standard_NC24ads_A100_v4"]
    assert (a100.family, a100.gpus, _sdk_field(a100, "v_cp_us", "vCPUs")) == ("standardNCADSA100v4Family", 1, 24)

    azure_fake.state.remove_size("Standard_NC24ads_A100_v4")
    azure_fake.state.set_quota("standardNCADSA100v4Family", limit=48, current=24)
    sizes = {size.name for size in ml_client.compute.list_sizes(location=azure_fake.location)}
    usages = {usage.name["value"] if isinstance(usage.name, dict) else usage.name.value: usage
              for usage in ml_client.compute.list_usage(location=azure_fake.location)}
    assert "Standard_NC24ads_A100_v4" not in sizes
    family = usages["standardNCADSA100v4Family"]
    assert (_sdk_field(family, "current_value", "currentValue"), family.limit) == (24, 48)

    paths = [r.path for r in azure_fake.state.requests_to("GET")]
    assert any(p.endswith("/locations/eastus/vmSizes") for p in paths)
    assert any(p.endswith("/locations/eastus/usages") for p in paths)
    assert all("authorization" not in r.headers for r in azure_fake.state.requests)


def test_requests_without_a_token_are_refused(azure_fake: Any) -> None:
    url = f"{azure_fake.arm.base_url}{azure_fake.state.workspace_id}?api-version=2024-10-01-preview"
    response = requests.get(url, timeout=10)
    assert response.status_code == 401


def test_config_json_and_from_config_reach_the_fake(azure_fake: Any, tmp_path: Path) -> None:
    from azure.ai.ml import MLClient

    config = azure_fake.config_json(tmp_path)
    client = MLClient.from_config(azure_fake.credential, path=str(config), **azure_fake.cloud_kwargs)
    assert client.workspaces.get().location == azure_fake.location


def test_azure_core_retries_injected_throttling_and_outages(azure_fake: Any) -> None:
    state = azure_fake.state
    workspace = f"{state.workspace_id}$"
    throttle = state.inject("GET", workspace, 429, retry_after_s=0.01)
    outage = state.inject("GET", r"/usages$", 503)

    assert azure_fake.ml_client.workspaces.get().name == state.workspace_name
    assert list(azure_fake.ml_client.compute.list_usage(location=state.location))

    assert (throttle.hits, outage.hits) == (1, 1)
    assert [r.status for r in state.requests_to("GET", workspace)] == [429, 200]
    assert [r.status for r in state.requests_to("GET", r"/usages$")] == [503, 200]


def test_default_azure_credential_resolves_to_the_loopback_managed_identity(managed_identity: Any) -> None:
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    token = credential.get_token("https://ml.azure.com/.default")
    claims = _jwt_claims(token.token)
    assert (claims["aud"], claims["tid"]) == ("https://ml.azure.com", managed_identity.tenant_id)

    client = managed_identity.make_ml_client(credential=credential)
    assert client.workspaces.get().name == managed_identity.workspace_name
    token_requests = managed_identity.state.requests_to("GET", r"^/msi/token$")
    assert token_requests and all(r.status == 200 for r in token_requests)
    assert all("x-identity-header" not in r.headers for r in token_requests)


# ------------------------------------------------------------------------------------------ assets


def test_model_folder_lands_in_azurite_and_is_not_uploaded_again(azure_fake: Any, azure_gpt2_dir: Path) -> None:
    from azure.ai.ml.entities import Model

    ml_client = azure_fake.ml_client
    first = ml_client.models.create_or_update(Model(path=azure_gpt2_dir, name="tiny-gpt2", type="custom_model"))
    blobs = azure_fake.blob_names(prefix="LocalUpload/")
    local = sorted(f.name for f in azure_gpt2_dir.iterdir() if f.is_file())
    # LocalUpload/<content hash>/<registered folder name>/<file>
    assert sorted(name.split("/", 3)[3] for name in blobs) == local
    assert {name.split("/")[2] for name in blobs} == {azure_gpt2_dir.name}
    container = azure_fake.azurite.service_client().get_container_client(azure_fake.datastore_container)
    before = {name: container.get_blob_client(name).get_blob_properties().etag for name in blobs}

    second = ml_client.models.create_or_update(Model(path=azure_gpt2_dir, name="tiny-gpt2", type="custom_model"))
    after = {name: container.get_blob_client(name).get_blob_properties().etag for name in blobs}
    assert (first.version, second.version) == ("1", "2")
    assert second.path == first.path
    assert after == before, "the second registration re-uploaded the blobs"
    assert sorted(v.version for v in ml_client.models.list(name="tiny-gpt2")) == ["1", "2"]
    assert ml_client.models.get("tiny-gpt2", label="latest").version == "2"


def test_environments_with_a_build_context_and_with_image_and_conda(azure_fake: Any, tmp_path: Path) -> None:
    from azure.ai.ml.entities import BuildContext, Environment

    context = tmp_path / "docker"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo built\n", encoding="utf-8")
    ml_client = azure_fake.ml_client
    built = ml_client.environments.create_or_update(
        Environment(name="mii-gpu", version="1", build=BuildContext(path=str(context))))
    assert built.build is not None and built.build.dockerfile_path == "Dockerfile"
    assert any(name.endswith("/Dockerfile") for name in azure_fake.blob_names(prefix="LocalUpload/"))

    pinned = ml_client.environments.create_or_update(
        Environment(name="mii-cpu", version="3", image=IMAGE, conda_file=str(_conda_file(tmp_path))))
    assert pinned.image == IMAGE
    put = azure_fake.state.requests_to("PUT", r"/environments/mii-cpu/versions/3$")[-1]
    assert put.body["properties"]["image"] == IMAGE
    assert "azureml-inference-server-http" in put.body["properties"]["condaFile"]
    assert ml_client.environments.get("mii-cpu", version="3").image == IMAGE


# ------------------------------------------------------------------------------------------ deployments


def test_deploy_an_uploaded_package_and_score_it_through_the_front(
    azure_fake: Any, azure_gpt2_dir: Path, azure_package: Any, tmp_path: Path
) -> None:
    from azure.ai.ml.constants._endpoint import EndpointInvokeFields
    from azure.ai.ml.entities import CodeConfiguration, Environment, ManagedOnlineDeployment, Model
    from azure.ai.ml.entities import OnlineRequestSettings
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    ml_client, state = azure_fake.ml_client, azure_fake.state
    model = ml_client.models.create_or_update(Model(path=azure_gpt2_dir, name="tiny-gpt2", type="custom_model"))
    endpoint = _create_endpoint(ml_client, "pkg-endpoint")
    assert endpoint.scoring_uri == azure_fake.endpoint_front("pkg-endpoint").scoring_uri

    def deployment(name: str) -> ManagedOnlineDeployment:
        return ManagedOnlineDeployment(
            name=name,
            endpoint_name="pkg-endpoint",
            model=f"azureml:tiny-gpt2:{model.version}",
            code_configuration=CodeConfiguration(code=str(azure_package.path), scoring_script="score.py"),
            environment=Environment(image=IMAGE, conda_file=str(azure_package.path / "environment" / "conda.yml")),
            instance_type="Standard_DS3_v2",
            instance_count=1,
            environment_variables={"MII_AZURE_DEPLOYMENT_NAME": "tiny-gpt2", "WORKER_COUNT": "1"},
            request_settings=OnlineRequestSettings(request_timeout_ms=60000, max_concurrent_requests_per_instance=4),
        )

    blue = ml_client.online_deployments.begin_create_or_update(deployment("blue")).result()
    assert blue.provisioning_state == "Succeeded"
    record = state.deployments[("pkg-endpoint", "blue")]
    log = record.log_path.read_text(encoding="utf-8")
    # The server imported the uploaded runtime snapshot, and found the model one level below AZUREML_MODEL_DIR.
    assert f"with the mii_azure runtime in {record.root / 'code' / 'mii_azure'}" in log
    model_dir = record.root / "azureml-models" / "tiny-gpt2" / model.version
    assert (model_dir / azure_gpt2_dir.name / "config.json").is_file()

    # The same code again: the SDK finds it by hash and uploads nothing (one pending upload in all).
    state.hang_next_deployment()
    green = ml_client.online_deployments.begin_create_or_update(deployment("green"))
    assert len(state.requests_to("POST", r"/startPendingUpload$")) == 1
    assert state.requests_to("GET", r"/codes/[^/]+/versions$")[-1].query.get("hash")

    keys = ml_client.online_endpoints.get_keys("pkg-endpoint")
    query = {"query": "DeepSpeed is", "parameters": {"max_new_tokens": 4}}
    answer = requests.post(endpoint.scoring_uri, json=query, headers=_bearer(keys.primary_key, "blue"), timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.headers["azureml-model-deployment"] == "blue"
    body = answer.json()
    assert body["task"] == "text-generation" and body["responses"][0]["num_tokens"] >= 1
    assert requests.post(endpoint.scoring_uri, json=query, timeout=30).status_code == 401
    assert requests.post(endpoint.scoring_uri, json=query, headers=_bearer("not-a-key"), timeout=30).status_code == 401
    assert requests.post(endpoint.scoring_uri, json=query, headers=_bearer(keys.secondary_key), timeout=30).status_code == 404

    endpoint.traffic = {"blue": 100}
    ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    routed = requests.post(endpoint.scoring_uri, json=query, headers=_bearer(keys.secondary_key), timeout=120)
    assert routed.status_code == 200 and routed.headers["azureml-model-deployment"] == "blue"

    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(query), encoding="utf-8")
    invoked = json.loads(ml_client.online_endpoints.invoke("pkg-endpoint", request_file=str(request_file)))
    assert invoked["task"] == "text-generation"
    EndpointInvokeFields.DEFAULT_HEADER.pop("Authorization", None)  # invoke() leaves it in a shared dict

    logs = ml_client.online_deployments.get_logs("blue", "pkg-endpoint", lines=40)
    assert "ready for serving traffic" in logs and len(logs.splitlines()) <= 40
    assert "Downloaded" in ml_client.online_deployments.get_logs("blue", "pkg-endpoint", 10,
                                                                 container_type="storage-initializer")
    assert {d.name for d in ml_client.online_deployments.list("pkg-endpoint")} == {"blue", "green"}
    assert [e.name for e in ml_client.online_endpoints.list()] == ["pkg-endpoint"]
    # get() lists every deployment in the traffic map (0 where it has none).
    assert ml_client.online_endpoints.get("pkg-endpoint").traffic == {"blue": 100, "green": 0}

    with pytest.raises(HttpResponseError, match="set its traffic to 0"):
        ml_client.online_deployments.begin_delete("blue", "pkg-endpoint").result()
    ml_client.online_deployments.begin_delete("green", "pkg-endpoint").result()
    with pytest.raises(HttpResponseError):
        green.result(timeout=10)  # deleting a deployment still provisioning cancels its operation
    with pytest.raises(ResourceNotFoundError):
        ml_client.online_deployments.begin_delete("no-such-deployment", "pkg-endpoint").result()
    with pytest.raises(ResourceNotFoundError):
        ml_client.online_endpoints.begin_delete("no-such-endpoint").result()

    ml_client.online_endpoints.begin_delete("pkg-endpoint").result()
    with pytest.raises(ResourceNotFoundError):
        ml_client.online_endpoints.get("pkg-endpoint")
    assert azure_fake.endpoint_front("pkg-endpoint") is None
    assert record.server is None


def test_front_answers_like_azure(azure_fake: Any, tmp_path: Path) -> None:
    ml_client, state = azure_fake.ml_client, azure_fake.state
    endpoint = _create_endpoint(ml_client, "echo-endpoint")
    code = _code_folder(tmp_path / "code", ECHO_SCORE)
    ml_client.online_deployments.begin_create_or_update(_echo_deployment("echo-endpoint", code)).result()
    key = ml_client.online_endpoints.get_keys("echo-endpoint").primary_key
    uri = endpoint.scoring_uri

    def post(payload: dict[str, Any], deployment: str | None = "blue") -> requests.Response:
        return requests.post(uri, json=payload, headers=_bearer(key, deployment), timeout=30)

    ok = post({"hello": 1})
    assert ok.status_code == 200
    assert ok.json()["echo"] == {"hello": 1} and ok.json()["variable"] == "from-the-deployment"

    failed = post({"status": 500})
    assert failed.status_code == 424
    assert failed.headers["ms-azureml-model-error-statuscode"] == "500"
    assert failed.headers["ms-azureml-model-error-reason"]
    assert failed.json() == {"error": {"code": "Asked", "message": "asked to fail"}}

    assert post({"sleep": 3}).status_code == 408  # request_timeout_ms=2000

    # max_concurrent_requests_per_instance=1 x instance_count=1: two pending requests, the third is 429.
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(post({"sleep": 1}).status_code)) for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.15)
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(statuses) == [200, 200, 429]

    no_traffic = post({"hello": 1}, deployment=None)
    assert no_traffic.status_code == 404 and "No valid deployments" in no_traffic.json()["message"]
    assert {r.status for r in azure_fake.endpoint_front("echo-endpoint").log} >= {200, 408, 424, 429, 404}
    assert state.deployments[("echo-endpoint", "blue")].resource["properties"]["requestSettings"][
        "requestTimeout"] == "PT2S"


def test_token_auth_endpoints_accept_only_their_tokens(azure_fake: Any) -> None:
    ml_client = azure_fake.ml_client

    def status(uri: str, secret: str) -> int:
        return requests.post(uri, json={}, headers=_bearer(secret), timeout=10).status_code

    # Past authentication, an endpoint without deployments has nothing to route to (404).
    aml = _create_endpoint(ml_client, "aml-token-endpoint", auth_mode="aml_token")
    token = ml_client.online_endpoints.get_keys("aml-token-endpoint").access_token
    keys = azure_fake.state.endpoints["aml-token-endpoint"].keys
    assert (status(aml.scoring_uri, token), status(aml.scoring_uri, keys["primaryKey"])) == (404, 401)

    aad = _create_endpoint(ml_client, "aad-token-endpoint", auth_mode="aad_token")
    entra = ml_client.online_endpoints.get_keys("aad-token-endpoint").access_token
    assert _jwt_claims(entra)["aud"] == "https://ml.azure.com"
    assert (status(aad.scoring_uri, entra), status(aad.scoring_uri, token)) == (404, 401)


def test_injected_provisioning_failure_surfaces_from_the_poller(azure_fake: Any, tmp_path: Path) -> None:
    from azure.core.exceptions import HttpResponseError

    ml_client = azure_fake.ml_client
    _create_endpoint(ml_client, "fail-endpoint")
    azure_fake.state.fail_next_deployment("Not enough capacity in eastus (injected)")
    poller = ml_client.online_deployments.begin_create_or_update(
        _echo_deployment("fail-endpoint", _code_folder(tmp_path / "code", ECHO_SCORE)))
    with pytest.raises(HttpResponseError, match="Not enough capacity in eastus"):
        poller.result(timeout=30)
    assert ml_client.online_deployments.get("blue", "fail-endpoint").provisioning_state == "Failed"
    assert "Not enough capacity" in ml_client.online_deployments.get_logs("blue", "fail-endpoint", lines=5)


def test_crashing_scoring_script_fails_provisioning_with_its_log(azure_fake: Any, tmp_path: Path) -> None:
    from azure.core.exceptions import HttpResponseError

    ml_client = azure_fake.ml_client
    _create_endpoint(ml_client, "crash-endpoint")
    poller = ml_client.online_deployments.begin_create_or_update(
        _echo_deployment("crash-endpoint", _code_folder(tmp_path / "code", CRASHING_SCORE)))
    with pytest.raises(HttpResponseError, match="User container has crashed or terminated"):
        poller.result(timeout=120)
    logs = ml_client.online_deployments.get_logs("blue", "crash-endpoint", lines=200)
    assert "the scoring script cannot start: no weights here" in logs


def test_quota_and_sizes_are_enforced_on_deployment(azure_fake: Any, tmp_path: Path) -> None:
    from azure.core.exceptions import HttpResponseError

    ml_client, state = azure_fake.ml_client, azure_fake.state
    _create_endpoint(ml_client, "quota-endpoint")
    code = _code_folder(tmp_path / "code", ECHO_SCORE)
    state.set_quota("standardNCADSA100v4Family", limit=24)
    with pytest.raises(HttpResponseError, match="Not enough quota"):
        ml_client.online_deployments.begin_create_or_update(
            _echo_deployment("quota-endpoint", code, instance_type="Standard_NC24ads_A100_v4"))
    state.remove_size("Standard_NC48ads_A100_v4")
    with pytest.raises(HttpResponseError, match="not supported in region"):
        ml_client.online_deployments.begin_create_or_update(
            _echo_deployment("quota-endpoint", code, instance_type="Standard_NC48ads_A100_v4"))


def test_a_deployment_that_never_gets_ready_stays_creating(azure_fake: Any, tmp_path: Path) -> None:
    from azure.core.exceptions import HttpResponseError

    ml_client = azure_fake.ml_client
    _create_endpoint(ml_client, "hang-endpoint")
    azure_fake.state.hang_next_deployment()
    poller = ml_client.online_deployments.begin_create_or_update(
        _echo_deployment("hang-endpoint", _code_folder(tmp_path / "code", ECHO_SCORE)))
    time.sleep(0.5)
    assert not poller.done()
    assert ml_client.online_deployments.get("blue", "hang-endpoint").provisioning_state == "Creating"
    ml_client.online_deployments.begin_delete("blue", "hang-endpoint").result()
    with pytest.raises(HttpResponseError, match="deleted before it finished"):
        poller.result(timeout=10)
