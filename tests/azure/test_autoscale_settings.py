"""Autoscale on Azure ML deployments against the loopback fakes (conftest.py): the Azure Monitor autoscale
setting that azure-mgmt-monitor writes (its body inspected), shown in details, deleted with the deployment
and by a failed deploy's clean-up, and refusals before anything is created."""

from __future__ import annotations

import logging

import pytest

import mii_azure
from mii_azure import Autoscale
from mii_azure.errors import ConfigError, DeploymentFailedError

pytestmark = pytest.mark.azure

SKU = "NC24ads"  # Standard_NC24ads_A100_v4: a GPU size, so autoscale reads GPU utilization


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MII_AZURE_HOME", str(tmp_path / "home"))


def _deployment_id(fake, endpoint, deployment):
    return f"{fake.state.workspace_id}/onlineEndpoints/{endpoint}/deployments/{deployment}"


def _autoscale_puts(fake):
    return fake.state.requests_to("PUT", r"/providers/Microsoft\.Insights/autoscaleSettings/[^/]+$")


def test_an_autoscale_setting_is_created_and_removed_with_the_deployment(azure_fake, azure_gpt2_dir):
    lines: list[str] = []
    dep = mii_azure.deploy(
        azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="scaled", progress=lines.append,
        autoscale=Autoscale(min=1, max=4), max_batch_size=2,
    )
    # Shown as a stage after the deployment, with what it may bill at its maximum, before anything bills.
    stages = [line.split("]")[0].strip("[") for line in lines if line.startswith("[")]
    assert stages.index("deployment") < stages.index("autoscale") < stages.index("traffic")
    assert any("autoscale 1 to 4 instances" in line and "up to about $14.69/h at 4 instances" in line for line in lines)

    (put,) = _autoscale_puts(azure_fake)
    assert put.path.lower().endswith("/resourcegroups/rg-mii-test/providers/microsoft.insights/autoscalesettings/mii-autoscale-scaled-blue")
    body = put.body
    target = _deployment_id(azure_fake, "scaled", "blue")
    assert body["location"] == azure_fake.location
    properties = body["properties"]
    assert properties["targetResourceUri"] == target and properties["enabled"] is True
    (profile,) = properties["profiles"]
    assert profile["capacity"] == {"minimum": "1", "maximum": "4", "default": "1"}
    out, within = profile["rules"]
    assert out["metricTrigger"] == {
        "metricName": "GpuUtilizationPercentage",
        "metricResourceUri": target,
        "timeGrain": "PT1M",
        "statistic": "Average",
        "timeWindow": "PT5M",
        "timeAggregation": "Average",
        "operator": "GreaterThan",
        "threshold": 70.0,
    }
    assert out["scaleAction"] == {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}
    assert (within["metricTrigger"]["operator"], within["metricTrigger"]["threshold"]) == ("LessThan", 30.0)
    assert within["scaleAction"]["direction"] == "Decrease"
    # azure-mgmt-monitor asked the credential for the cloud's Resource Manager scope, as azure-ai-ml does.
    assert (f"{azure_fake.arm.base_url}/.default",) in azure_fake.credential.scopes

    details = mii_azure.get_deployment("scaled", ml_client=azure_fake.ml_client).details["autoscale"]
    assert (details["min"], details["max"], details["default"], details["metric"]) == (1, 4, 1, "GpuUtilizationPercentage")

    dep.delete()
    assert not azure_fake.state.autoscale_settings, "the setting went with the deployment"
    assert azure_fake.state.requests_to("DELETE", r"/autoscaleSettings/mii-autoscale-scaled-blue$")


def test_a_failed_deploy_deletes_the_autoscale_settings_targeting_it(azure_fake, azure_gpt2_dir):
    # A setting left behind for the same deployment (Azure keeps it when its target is deleted) would
    # govern the new one: clean-up deletes it with the deployment.
    target = _deployment_id(azure_fake, "crashes", "blue")
    azure_fake.state.autoscale_settings["left-behind"] = {
        "id": "x", "name": "left-behind", "type": "Microsoft.Insights/autoscaleSettings", "location": azure_fake.location,
        "tags": {}, "properties": {"targetResourceUri": target, "enabled": True, "profiles": [], "name": "left-behind"},
    }
    azure_fake.state.fail_next_deployment("ResourceNotReady: User container has crashed")
    with pytest.raises(DeploymentFailedError, match="deleted"):
        mii_azure.deploy(
            azure_gpt2_dir, sku=SKU, ml_client=azure_fake.ml_client, endpoint="crashes", progress=False,
            autoscale=Autoscale(min=1, max=2),
        )
    assert not _autoscale_puts(azure_fake), "the deployment never got ready: no setting was written"
    assert not azure_fake.state.autoscale_settings and "crashes" not in azure_fake.state.endpoints


def test_refusals_before_anything_is_created(azure_fake, azure_gpt2_dir):
    ml = azure_fake.ml_client
    with pytest.raises(ConfigError, match=r"instance_count=1 is outside autoscale's 2 to 4"):
        mii_azure.deploy(azure_gpt2_dir, sku=SKU, ml_client=ml, endpoint="never", autoscale=Autoscale(min=2, max=4), progress=False)
    # The budget guards what autoscale may scale out to: 4 x $3.67/h.
    with pytest.raises(ConfigError, match=r"4 x Standard_NC24ads_A100_v4 would bill \$14.69/h, over max_usd_per_hour=10"):
        mii_azure.deploy(
            azure_gpt2_dir, sku=SKU, ml_client=ml, endpoint="never", autoscale=Autoscale(max=4), max_usd_per_hour=10, progress=False
        )
    assert not azure_fake.state.requests_to("PUT"), "nothing was created"


def test_deleting_survives_an_unreadable_azure_monitor(azure_fake, caplog):
    """No setting is fine, and Azure Monitor refusing the listing is logged with what to do, not raised
    (the deployment is gone by then)."""
    from mii_azure.targets.azureml import AzureMLTarget, connect

    target = AzureMLTarget(connect(azure_fake.ml_client))
    target._remove_autoscale("nothing", "blue")
    azure_fake.state.inject("GET", r"/autoscaleSettings$", 403)
    with caplog.at_level(logging.WARNING, logger="mii_azure.targets.azureml.target"):
        target._remove_autoscale("nothing", "blue")
    assert "Could not delete the autoscale settings targeting nothing/blue" in caplog.text and "Monitor > Autoscale" in caplog.text


def test_the_dry_run_shows_the_autoscale_commands(azure_gpt2_dir, capsys, tmp_path, monkeypatch):
    from mii_azure.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["deploy", str(azure_gpt2_dir), "--sku", SKU, "--endpoint", "dry", "--dry-run", "--autoscale", "1:3"]) == 0
    out = capsys.readouterr().out
    assert "autoscale 1 to 3 instances" in out and "GpuUtilizationPercentage" in out
    assert "az monitor autoscale create --name mii-autoscale-dry-blue" in out and "--min-count 1 --max-count 3 --count 1" in out
    assert '--condition "GpuUtilizationPercentage > 70 avg 5m" --scale out 1' in out
    run = mii_azure.deploy(azure_gpt2_dir, sku=SKU, endpoint="dry", dry_run=True, autoscale=Autoscale(min=1, max=3))
    assert (run.autoscale.minimum, run.autoscale.maximum) == (1, 3)
