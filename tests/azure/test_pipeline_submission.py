"""The batch-scoring pipeline step submitted through the real azure-ai-ml MLClient to the loopback fake of the
Resource Manager (conftest.py says what is faked): the cluster checked against the plan, the weights registered
once (their bytes in Azurite), the package's code uploaded without them, the component and job PUTs as the
service gets them. Nothing runs the job: the fake keeps it NotStarted (see fake_jobs.py)."""

import json

import pytest

import mii_azure
from mii_azure.errors import ConfigError

pytestmark = pytest.mark.azure

INSTANCE_TYPE = "Standard_NC24ads_A100_v4"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MII_AZURE_HOME", str(tmp_path / "home"))


def _nightly(component):
    from azure.ai.ml import Input, dsl

    @dsl.pipeline(default_compute="gpu-cluster")
    def nightly(prompts: Input(type="uri_file")):
        return {"scores": component(input=prompts).outputs.output}

    return nightly(prompts=Input(type="uri_file", path="azureml:prompts:1"))


def _component_specs(fake):
    """Every component version PUT, by the component's own type."""
    specs = {}
    for request in fake.state.requests_to("PUT", r"/components/[^/]+/versions/[^/]+$"):
        spec = request.body["properties"]["componentSpec"]
        specs.setdefault(spec["type"], []).append(spec)
    return specs


def test_a_pipeline_with_the_scaled_out_step_is_submitted_through_the_real_sdk(azure_fake, azure_gpt2_dir, tmp_path):
    fake = azure_fake
    fake.state.add_compute("gpu-cluster", vm_size=INSTANCE_TYPE, max_instances=4)
    component = mii_azure.pipeline.batch_score_component(
        azure_gpt2_dir, sku="NC24ads", instance_count=4, output=tmp_path / "pkg", name="tiny-gpt2",
        parameters={"max_new_tokens": 8}, error_threshold=10,
    )
    submitted = mii_azure.pipeline.submit(_nightly(component), ml_client=fake.ml_client, experiment_name="nightly")
    assert str(submitted.status).endswith("NOT_STARTED") or submitted.status == "NotStarted"

    # The cluster was read and matched the plan before anything was created.
    (compute_get,) = fake.state.requests_to("GET", r"/computes/gpu-cluster$")
    first_put = next(i for i, r in enumerate(fake.state.requests) if r.method == "PUT")
    assert fake.state.requests.index(compute_get) < first_put

    # The weights: registered once under their content's version, their bytes in the workspace's blob store.
    model_id = component.tags["mii_azure_model"]
    name, version = model_id.split(":")[1:]
    (model_put,) = fake.state.requests_to("PUT", rf"/models/{name}/versions/{version}$")
    assert model_put.body["properties"]["tags"]["mii_azure_content_sha256"] == version
    blobs = fake.blob_names(prefix="LocalUpload/")
    assert any(b.endswith(".safetensors") for b in blobs) and any(b.endswith("config.json") for b in blobs)

    # The code: the package's code and runtime snapshot and the entry script, never the weights.
    code_blobs = [b for container in fake.containers() if container != fake.datastore_container for b in fake.blob_names(container)]
    assert any(b.endswith("mii_batch_entry.py") for b in code_blobs)
    assert any(b.endswith("mii_azure/pipeline/step.py") for b in code_blobs) and any(b.endswith("mii_package.json") for b in code_blobs)
    assert not any(b.endswith(".safetensors") for b in code_blobs)

    # The environment: the package's Docker build context, uploaded to the blob store.
    (environment_put,) = {r.path: r for r in fake.state.requests_to("PUT", r"/environments/[^/]+/versions/[^/]+$")}.values()
    assert "/LocalUpload/" in environment_put.body["properties"]["build"]["contextUri"]
    assert any(b.endswith("/environment/Dockerfile") for b in blobs)

    # The components as the service gets them: Azure ML's parallel job with our settings, two commands, the pipeline.
    specs = _component_specs(fake)
    (parallel,) = specs["parallel"]
    assert parallel["resources"]["instance_count"] == 4 and int(parallel["mini_batch_size"]) == 1
    assert parallel["error_threshold"] == 10 and parallel["retry_settings"]["timeout"] == 3600
    assert parallel["task"]["entry_script"] == "mii_batch_entry.py" and parallel["task"]["append_row_to"] == "${{outputs.scores}}"
    assert parallel["task"]["code"].startswith("azureml:/subscriptions/") and parallel["tags"]["mii_azure_sku"] == INSTANCE_TYPE
    assert parallel["input_data"] == "${{inputs.input}}"
    commands = {spec["name"]: spec for spec in specs["command"]}
    assert set(commands) == {"mii_batch_split", "mii_batch_order"}
    assert commands["mii_batch_order"]["command"].startswith("python -m mii_azure.pipeline.step order")
    (pipeline_spec,) = specs["pipeline"]
    jobs = pipeline_spec["jobs"]
    assert set(jobs) == {"mii_batch_split", "mii_batch_score_parallel", "mii_batch_order"}
    model_input = jobs["mii_batch_score_parallel"]["inputs"]["model"]
    assert model_input["job_input_type"] == "custom_model" and model_input["uri"].endswith(f"/models/{name}/versions/{version}")
    assert jobs["mii_batch_order"]["inputs"]["input"]["value"] == "${{parent.jobs.mii_batch_split.outputs.shards}}"
    assert pipeline_spec["inputs"]["parameters"]["default"] == '{"max_new_tokens":8}'

    # The job: a pipeline job on the cluster, whose one step is the component (the fake refuses a job whose
    # references the workspace does not hold, so every one of them was created first).
    (job_put,) = fake.state.requests_to("PUT", r"/jobs/[^/]+$")
    job = job_put.body["properties"]
    assert job["jobType"] == "Pipeline" and job["experimentName"] == "nightly"
    assert job["settings"]["default_compute"].endswith("/computes/gpu-cluster")
    (node,) = job["jobs"].values()
    assert node["type"] == "pipeline" and node["inputs"]["input"]["value"] == "${{parent.inputs.prompts}}"
    assert job["inputs"]["prompts"]["uri"].endswith("/data/prompts/versions/1")
    assert fake.ml_client.jobs.get(submitted.name).status == submitted.status

    # Submitting again uploads nothing: the weights are found by their version, the code by its hash.
    before = len(fake.state.requests_to("PUT", r"/models/"))
    mii_azure.pipeline.submit(_nightly(component), ml_client=fake.ml_client)
    assert len(fake.state.requests_to("PUT", r"/models/")) == before
    assert len(fake.state.requests_to("POST", r"/startPendingUpload$")) == 1
    assert len(fake.state.requests_to("PUT", r"/jobs/[^/]+$")) == 2


def test_a_cluster_that_does_not_match_the_plan_is_refused_before_anything_is_created(azure_fake, azure_gpt2_dir, tmp_path):
    fake = azure_fake
    component = mii_azure.pipeline.batch_score_component(azure_gpt2_dir, sku="NC24ads", instance_count=4,
                                                         output=tmp_path / "pkg", name="tiny-gpt2")
    with pytest.raises(ConfigError) as missing:
        mii_azure.pipeline.submit(_nightly(component), ml_client=fake.ml_client)
    assert missing.value.compute == "gpu-cluster" and "AmlCompute(name='gpu-cluster'" in missing.value.message

    fake.state.add_compute("gpu-cluster", vm_size="Standard_NC4as_T4_v3", max_instances=8)
    with pytest.raises(ConfigError) as wrong_size:
        mii_azure.pipeline.submit(_nightly(component), ml_client=fake.ml_client)
    facts = wrong_size.value
    assert (facts.compute, facts.vm_size, facts.planned) == ("gpu-cluster", "Standard_NC4as_T4_v3", INSTANCE_TYPE)
    assert "sku='Standard_NC4as_T4_v3'" in facts.message

    fake.state.add_compute("gpu-cluster", vm_size=INSTANCE_TYPE, max_instances=2)
    with pytest.raises(ConfigError) as too_small:
        mii_azure.pipeline.submit(_nightly(component), ml_client=fake.ml_client)
    assert (too_small.value.instance_count, too_small.value.max_instances) == (4, 2)
    assert "max_instances=4" in too_small.value.message
    assert not fake.state.requests_to("PUT"), "nothing is created when the cluster does not fit"

    # The scoring step's own compute= wins over the pipeline's default; the check reads that one.
    fake.state.add_compute("a100", vm_size=INSTANCE_TYPE, max_instances=4)
    routed = mii_azure.pipeline.batch_score_component(azure_gpt2_dir, sku="NC24ads", instance_count=4, compute="a100",
                                                      output=tmp_path / "pkg", name="tiny-gpt2")
    (check,) = mii_azure.pipeline.check_compute(_nightly(routed), ml_client=fake.ml_client)
    assert (check.compute, check.vm_size, check.instance_count, check.max_instances) == ("a100", INSTANCE_TYPE, 4, 4)
    assert check.step.endswith("/mii_batch_score_parallel")
    assert json.dumps(check.__dict__)


def test_with_ml_client_the_issues_plain_create_or_update_submits_it(azure_fake, azure_gpt2_dir, tmp_path):
    """Given ml_client=, the component registers the weights and the serving environment (the one a deployment
    of the package registers) at once, so the issue's own ml_client.jobs.create_or_update(...) submits it
    (without submit()'s cluster check)."""
    fake = azure_fake
    fake.state.add_compute("gpu-cluster", vm_size=INSTANCE_TYPE, max_instances=1)
    component = mii_azure.pipeline.batch_score_component(azure_gpt2_dir, sku="NC24ads", output=tmp_path / "pkg",
                                                         name="tiny-gpt2", ml_client=fake.ml_client)
    (environment_put,) = fake.state.requests_to("PUT", r"/environments/mii-azure-serving-gpu/versions/[^/]+$")
    assert environment_put.body["properties"]["inferenceConfig"]["scoringRoute"] == {"port": 5001, "path": "/"}
    assert len(fake.state.requests_to("PUT", r"/models/tiny-gpt2/versions/")) == 1
    job = fake.ml_client.jobs.create_or_update(_nightly(component))
    assert job.name and fake.state.requests_to("PUT", rf"/jobs/{job.name}$")
    (command,) = _component_specs(fake)["command"]
    assert command["environment"].endswith(environment_put.path.split("/workspaces/ws-mii-test")[1])
    assert command["command"].startswith("python -m mii_azure.pipeline.step score")
