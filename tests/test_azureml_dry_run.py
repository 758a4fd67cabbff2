"""Azure ML deployment specs without a workspace: dry runs, names chosen at deploy time, the YAML as
azure-ai-ml's own loaders read it, probes and request settings, secrets, clients without symlinks,
and how the workspace is found."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

import mii_azure
from mii_azure.azureml_specs import AZURE_MAX_REQUEST_TIMEOUT_MS, LOAD_BASE_S, LOAD_S_PER_GB, INJECTION_S, expected_load_s
from mii_azure.errors import ConfigError, WorkspaceNotConfiguredError

pytestmark = pytest.mark.azure  # azure-ai-ml's own loaders read the YAML back


def load_online_deployment(source):
    from azure.ai.ml import load_online_deployment as load

    return load(source=source)


def load_online_endpoint(source):
    from azure.ai.ml import load_online_endpoint as load

    return load(source=source)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MII_AZURE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_dry_run_writes_yaml_that_azure_ai_ml_loads_with_the_names_given(model_dirs, home, tmp_path):
    run = mii_azure.deploy(model_dirs["gpt2"], sku="NC24ads", endpoint="chat", deployment="green", dry_run=True, output=tmp_path / "pkg")
    endpoint = load_online_endpoint(source=run.endpoint_file)
    deployment = load_online_deployment(source=run.deployment_file)
    assert (endpoint.name, endpoint.auth_mode) == ("chat", "key")
    assert (deployment.name, deployment.endpoint_name) == ("green", "chat")
    assert deployment.instance_type == "Standard_NC24ads_A100_v4" and deployment.instance_count == 1
    variables = deployment.environment_variables
    assert variables["MII_AZURE_DEPLOYMENT_NAME"] == "chat", "responses report the endpoint's name as their model"
    assert variables["WORKER_COUNT"] == str(run.package.plan.replicas)
    assert variables["GUNICORN_CMD_ARGS"].startswith("--threads ")
    assert variables["APP_INSIGHTS_LOG_RESPONSE_ENABLED"] == "false", "streamed answers are not read whole to be logged"
    plan = run.package.plan
    assert deployment.request_settings.max_concurrent_requests_per_instance == plan.replicas * plan.max_batch_size
    assert deployment.request_settings.request_timeout_ms == 120_000
    for probe in (deployment.liveness_probe, deployment.readiness_probe):
        assert probe.initial_delay == expected_load_s(plan) and probe.period == 10 and probe.failure_threshold == 30
    # The image runs the package's launcher: the routes point the probes at GET / and scoring at / on its
    # port, so the endpoint forwards /score, /v1/... and /metrics alike to the container.
    written = yaml.safe_load(run.deployment_file.read_text())["environment"]
    assert written["inference_config"] == {
        "liveness_route": {"port": 5001, "path": "/"},
        "readiness_route": {"port": 5001, "path": "/"},
        "scoring_route": {"port": 5001, "path": "/"},
    }
    routes = deployment.environment.inference_config
    assert (routes.scoring_route.port, routes.scoring_route.path, routes.readiness_route.path) == (5001, "/", "/")
    # Relative paths are relative to the YAML's folder, as `az ml` reads them.
    specs = run.endpoint_file.parent
    assert (specs / deployment.code_configuration.code).resolve() == run.package.path
    assert (specs / deployment.model.path).resolve() == Path(model_dirs["gpt2"]).resolve()
    assert run.commands == [
        f"az ml online-endpoint create -f {run.endpoint_file.as_posix()}",
        f"az ml online-deployment create -f {run.deployment_file.as_posix()} --all-traffic",
    ]
    assert "chat/green on 1 x Standard_NC24ads_A100_v4" in run.describe()


def test_one_package_deploys_under_any_names(model_dirs, home, tmp_path):
    first = mii_azure.deploy(model_dirs["gpt2"], sku="NC24ads", endpoint="first", dry_run=True, output=tmp_path / "pkg")
    again = mii_azure.deploy(first.package.path, endpoint="second", deployment="canary", dry_run=True)
    assert again.package.path == first.package.path
    deployment = load_online_deployment(source=again.deployment_file)
    assert (deployment.endpoint_name, deployment.name) == ("second", "canary")
    assert deployment.environment_variables["MII_AZURE_DEPLOYMENT_NAME"] == "second"
    with pytest.raises(ConfigError, match="deployed as it was built"):
        mii_azure.deploy(first.package.path, endpoint="third", sku="H100", dry_run=True)
    with pytest.raises(ConfigError, match="not valid"):
        mii_azure.deploy(first.package.path, endpoint="third", deployment="no_underscores", dry_run=True)


def test_the_probe_delay_follows_the_readme_formula(model_dirs, home):
    plan = mii_azure.plan("bigscience/bloom", sku="Standard_ND96amsr_A100_v4")
    weights_gb = plan.memory.weights_gb * plan.tensor_parallel * plan.replicas + plan.memory.offloaded_gb
    expected = LOAD_BASE_S + LOAD_S_PER_GB * weights_gb + (INJECTION_S if plan.kernel_inject else 0)
    assert expected_load_s(plan) == min(3600, math.ceil(expected))
    assert expected_load_s(plan) > 20 * 60, "352 GB of BLOOM weights take far longer to load than a tiny model"


def test_request_timeouts_over_azures_cap(model_dirs, home, tmp_path):
    with pytest.raises(ConfigError, match="180 s") as refused:
        mii_azure.deploy(model_dirs["gpt2"], sku="NC24ads", endpoint="slow", request_timeout_s=300, dry_run=True)
    assert refused.value.nearest == 180
    settings = mii_azure.ServingSettings(request_timeout_s=600)
    run = mii_azure.deploy(model_dirs["gpt2"], sku="NC24ads", endpoint="slow", settings=settings, dry_run=True, output=tmp_path / "p")
    assert load_online_deployment(source=run.deployment_file).request_settings.request_timeout_ms == AZURE_MAX_REQUEST_TIMEOUT_MS
    assert any("capped" in note for note in run.notes)


def test_secrets_only_as_workspace_connection_references(model_dirs, home, tmp_path):
    token = "hf_SECRETVALUE123"
    with pytest.raises(ConfigError) as refused:
        mii_azure.deploy(model_dirs["gpt2"], sku="NC24ads", endpoint="gated", dry_run=True, environment_variables={"HF_TOKEN": token})
    assert "HF_TOKEN" in refused.value.message and token not in refused.value.message
    reference = "${{azureml://connections/hf/credentials/key}}"
    run = mii_azure.deploy(
        model_dirs["gpt2"], sku="NC24ads", endpoint="gated", dry_run=True, output=tmp_path / "p", environment_variables={"HF_TOKEN": reference}
    )
    assert load_online_deployment(source=run.deployment_file).environment_variables["HF_TOKEN"] == reference
    endpoint = yaml.safe_load(run.endpoint_file.read_text())
    assert endpoint["identity"] == {"type": "system_assigned"}, "the endpoint's identity reads the connection"
    assert endpoint["properties"]["enforce_access_to_default_secret_stores"] == "enabled"


def test_azure_needs_a_sku_and_local_options_stay_local(model_dirs, home):
    with pytest.raises(ConfigError, match="needs sku="):
        mii_azure.deploy(model_dirs["gpt2"], endpoint="x-model", dry_run=True)
    with pytest.raises(ConfigError, match="local deployments"):
        mii_azure.deploy(model_dirs["gpt2"], sku="NC24ads", port=5000, dry_run=True)
    with pytest.raises(ConfigError, match="apply to Azure ML deployments") as azure_only:
        mii_azure.deploy(model_dirs["gpt2"], local=True, instance_count=2, dry_run=True)
    assert azure_only.value.conflict == "dry_run" and "instance_count" in azure_only.value.message


def test_without_symlinks_the_package_references_the_model_folder(model_dirs, home, tmp_path, monkeypatch):
    """Windows without symlink rights: the package references the folder instead of linking it, and still
    deploys (dry run YAML with the absolute path; the manifest's reference serves locally)."""

    def no_symlinks(self, *args, **kwargs):
        raise OSError(1314, "A required privilege is not held by the client")

    monkeypatch.setattr(Path, "symlink_to", no_symlinks)
    run = mii_azure.deploy(model_dirs["gpt2"], sku="NC24ads", endpoint="windows", dry_run=True, output=tmp_path / "pkg")
    assert not (run.package.path / "model").exists()
    assert run.package.model_dir == Path(model_dirs["gpt2"]).resolve()
    deployment = load_online_deployment(source=run.deployment_file)
    assert Path(deployment.model.path).resolve() == Path(model_dirs["gpt2"]).resolve()
    manifest = json.loads((run.package.path / "mii_package.json").read_text())
    assert manifest["model"]["linked_from"] == str(Path(model_dirs["gpt2"]).resolve())


def test_a_registered_or_registry_model_is_referenced_as_it_is(model_dirs, home, tmp_path):
    registered = mii_azure.package(
        mii_azure.resolve_model("azureml:tiny-gpt2:3", config=model_dirs["gpt2"]), output=tmp_path / "reg", sku="NC24ads"
    )
    run = mii_azure.deploy(registered.path, endpoint="registered", dry_run=True)
    assert yaml.safe_load(run.deployment_file.read_text())["model"] == "azureml:tiny-gpt2:3"
    assert load_online_deployment(source=run.deployment_file).model == "tiny-gpt2:3"  # the SDK drops the prefix
    registry = "azureml://registries/azureml/models/tiny-gpt2/versions/2"
    from_registry = mii_azure.package(mii_azure.resolve_model(registry, config=model_dirs["gpt2"]), output=tmp_path / "rr", sku="NC24ads")
    run = mii_azure.deploy(from_registry.path, endpoint="from-registry", dry_run=True)
    assert yaml.safe_load(run.deployment_file.read_text())["model"] == registry
    assert load_online_deployment(source=run.deployment_file).model == registry


def test_the_workspace_comes_from_a_client_ids_or_config_json(tmp_path, monkeypatch):
    from mii_azure.targets.azureml.workspace import connect

    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkspaceNotConfiguredError) as missing:
        connect()
    for way in ("ml_client=", "subscription_id=", "config.json"):
        assert way in missing.value.message
    with pytest.raises(WorkspaceNotConfiguredError, match="workspace missing"):
        connect(subscription_id="00000000-0000-0000-0000-000000000000", resource_group="rg")
    client = object()
    assert connect(client).ml_client is client
    with pytest.raises(WorkspaceNotConfiguredError, match="not both"):
        connect(client, workspace="ws")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg", "workspace_name": "ws"}))
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    found = connect(credential=_NoCredential())
    assert (found.ml_client.resource_group_name, found.name) == ("rg", "ws"), "config.json is searched upwards"


class _NoCredential:
    """Never asked for a token here: building an MLClient makes no call."""

    def get_token(self, *scopes, **kwargs):  # pragma: no cover - would mean a network call
        raise AssertionError("no token should be needed to build a client")
