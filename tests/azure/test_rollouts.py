"""Blue/green roll-outs and spend guards on Azure ML endpoints, against the loopback fakes (conftest.py):
a 90/10 split, promote and roll back with the bodies inspected, mirrored traffic, the deployment header
reaching the right server, refusals, $/h before anything bills and in listings."""

from __future__ import annotations

import shutil

import pytest

import mii_azure
from mii_azure.errors import ConfigError

pytestmark = pytest.mark.azure

SKU = "NC24ads"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MII_AZURE_HOME", str(tmp_path / "home"))


def _endpoint_puts(fake, endpoint):
    return [request.body["properties"] for request in fake.state.requests_to("PUT", rf"/onlineEndpoints/{endpoint}$")]


def _live(split):
    return {name: share for name, share in split.items() if share}


def test_blue_green_split_promote_rollback_and_mirror(azure_fake, azure_gpt2_dir, tmp_path):
    ml = azure_fake.ml_client
    blue = mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=ml, endpoint="shop", deployment="blue", progress=False, max_batch_size=2)
    lines: list[str] = []
    green = mii_azure.deploy(
        azure_gpt2_dir, sku=SKU, ml_client=ml, endpoint="shop", deployment="green", traffic=10, progress=lines.append, max_batch_size=2
    )
    assert _endpoint_puts(azure_fake, "shop")[-1]["traffic"] == {"blue": 90, "green": 10}
    assert any("blue 90% / green 10%" in line for line in lines), "the split is shown"
    assert any("Starts billing about $3.67/h: 1 x Standard_NC24ads_A100_v4" in line for line in lines)

    # Each handle's queries reach its own deployment (the azureml-model-deployment header).
    front = azure_fake.endpoint_front("shop")
    before = len(front.log)
    green.query("DeepSpeed is", max_new_tokens=2)
    blue.query("DeepSpeed is", max_new_tokens=2)
    assert [record.deployment for record in front.log[before:]] == ["green", "blue"]

    assert green.set_traffic(100) == {"blue": 0, "green": 100}
    assert _live(_endpoint_puts(azure_fake, "shop")[-1]["traffic"]) == {"green": 100}
    assert green.rollback_traffic() == {"blue": 90, "green": 10}
    assert _endpoint_puts(azure_fake, "shop")[-1]["traffic"] == {"blue": 90, "green": 10}

    with pytest.raises(ConfigError, match="live and mirrored"):
        blue.mirror_traffic(20)
    green.set_traffic(100)
    assert blue.mirror_traffic(20) == {"blue": 20}
    assert _endpoint_puts(azure_fake, "shop")[-1]["mirrorTraffic"] == {"blue": 20}
    with pytest.raises(ConfigError, match="at most 50%"):
        blue.mirror_traffic(60)

    from mii_azure.targets.azureml import AzureMLTarget, connect

    target = AzureMLTarget(connect(ml))
    puts = len(_endpoint_puts(azure_fake, "shop"))
    with pytest.raises(ConfigError, match="adds up to 90%"):
        target.set_split("shop", {"blue": 50, "green": 40})
    assert len(_endpoint_puts(azure_fake, "shop")) == puts, "a split that does not sum to 100 is never sent"

    # A deployment name that exists with another model is refused (a new deployment is the way).
    other = tmp_path / "other-gpt2"
    shutil.copytree(azure_gpt2_dir, other)
    (other / "generation_config.json").write_text('{"max_length": 21}')
    with pytest.raises(ConfigError, match="serves .* not .*another deployment"):
        mii_azure.deploy(other, sku=SKU, ml_client=ml, endpoint="shop", deployment="green", progress=False, max_batch_size=2)

    listed = {d.deployment: d.details for d in mii_azure.list_deployments(ml_client=ml)}
    assert listed["green"]["traffic"] == 100 and listed["blue"]["mirror_traffic"] == 20
    assert listed["blue"]["instance_type"] == "Standard_NC24ads_A100_v4" and listed["blue"]["instance_count"] == 1
    assert listed["blue"]["usd_per_hour"] == pytest.approx(3.673)
    with pytest.raises(ConfigError, match="traffic"):
        green.delete()  # Azure refuses to delete a deployment that takes traffic while others remain
    target.delete("shop")
    assert "shop" not in azure_fake.state.endpoints


def test_the_first_deployment_takes_all_traffic_and_budgets_are_checked_first(azure_fake, azure_gpt2_dir):
    ml = azure_fake.ml_client
    with pytest.raises(ConfigError, match="first deployment .* takes all of it"):
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=ml, endpoint="fresh", traffic=10, progress=False)
    with pytest.raises(ConfigError, match=r"would bill \$7.35/h, over max_usd_per_hour=5") as over:
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=ml, endpoint="fresh", instance_count=2, max_usd_per_hour=5, progress=False)
    assert over.value.nearest == 1, "one instance would fit the budget"
    assert not azure_fake.state.requests_to("PUT"), "nothing was created"


def test_sku_auto_picks_what_the_estimate_picks_among_the_regions_sizes(azure_fake, azure_gpt2_dir):
    from mii_azure.skus import catalog

    ml = azure_fake.ml_client
    workload = mii_azure.Workload(prompt_tokens=16, new_tokens=8, requests_per_second=20, latency_slo_ms=50)
    facts = mii_azure.resolve_model(azure_gpt2_dir)
    # By hand: every listed size estimated, the cheapest that meets the target, then without it in the region.
    everywhere = mii_azure.estimate_cost(facts, workload, skus=[s.instance_type for s in catalog() if s.on_managed_endpoint_list])
    cheapest = everywhere.best
    azure_fake.state.remove_size(cheapest.instance_type)
    offered = {size.name.lower() for size in ml.compute.list_sizes(location=azure_fake.location)}
    expected = next(e for e in everywhere.meeting if e.instance_type.lower() in offered)

    lines: list[str] = []
    dep = mii_azure.deploy(
        azure_gpt2_dir, sku="auto", workload=workload, ml_client=ml, endpoint="auto-sized", progress=lines.append, max_usd_per_hour=100,
        autoscale=mii_azure.Autoscale(),
    )
    body = azure_fake.state.requests_to("PUT", r"/onlineEndpoints/auto-sized/deployments/blue$")[-1].body
    assert body["properties"]["instanceType"] == expected.instance_type != cheapest.instance_type
    assert body["sku"]["capacity"] == expected.instances
    chosen = next(line for line in lines if line.startswith('sku="auto"'))
    assert expected.instance_type in chosen and "runner-up" in "\n".join(lines), "the choice and runners-up are shown"
    assert lines.index(chosen) < next(i for i, line in enumerate(lines) if line.startswith("[endpoint]")), "before anything is created"
    # Autoscale's unset range comes from the estimate's instance count: it starts there, at most twice it.
    (scale,) = azure_fake.state.requests_to("PUT", r"/autoscaleSettings/mii-autoscale-auto-sized-blue$")
    capacity = scale.body["properties"]["profiles"][0]["capacity"]
    assert capacity == {"minimum": str(expected.instances), "maximum": str(2 * expected.instances), "default": str(expected.instances)}
    dep.delete()
    assert not azure_fake.state.autoscale_settings
    with pytest.raises(ConfigError, match='needs workload='):
        mii_azure.deploy(azure_gpt2_dir, sku="auto", ml_client=ml, endpoint="auto-sized", progress=False)
