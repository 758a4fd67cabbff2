"""mii_azure.Autoscale without Azure: validation, defaults from the deployment, the CLI's MIN:MAX, refusals."""

from __future__ import annotations

import pytest

import mii_azure
from mii_azure import Autoscale, ConfigError
from mii_azure.autoscale import METRICS, autoscale_setting_name


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"min": 0, "max": 2}, r"min=0.*at least 1 instance"),
        ({"max": 0}, r"max=0"),
        ({"min": 4, "max": 2}, r"min is above max. Swap them \(min=2, max=4\)"),
        ({"metric": "qps"}, r"metric='qps'.*GpuUtilizationPercentage"),
        ({"scale_out_above": 130}, r"0 to 100 \(percent\)"),
        ({"scale_out_above": 50, "scale_in_below": 60}, r"scale-in threshold must be below"),
        ({"minutes": 1}, r"5 minutes to 12 hours"),
        ({"cooldown_minutes": 0}, r"1 minute to 1 week"),
        ({"step": 0}, r"at least 1 instance"),
    ],
)
def test_invalid_settings_are_refused_with_what_to_do(given, match):
    with pytest.raises(ConfigError, match=match):
        Autoscale(**given)


def test_unknown_fields_and_frozen():
    with pytest.raises(ValueError):
        Autoscale(minimum=1)  # pydantic: extra fields are forbidden
    scale = Autoscale(min=1, max=4)
    with pytest.raises(ValueError):
        scale.min = 2  # type: ignore[misc]


def test_defaults_come_from_the_deployment():
    # A GPU size scales on GPU utilization; the instance count is the start, the minimum, and half the maximum.
    plan = Autoscale().resolve(instance_count=3, gpu=True, expected_load_s=130)
    assert (plan.minimum, plan.maximum, plan.default) == (3, 6, 3)
    assert (plan.metric, plan.metric_on, plan.scale_out_above, plan.scale_in_below) == ("GpuUtilizationPercentage", "deployment", 70, 30)
    assert (plan.minutes, plan.cooldown_minutes, plan.step) == (5, 5, 1)
    assert "from the deployment's 3" in plan.describe()
    cpu = Autoscale(min=1, max=4).resolve(instance_count=2, gpu=False)
    assert (cpu.minimum, cpu.maximum, cpu.default, cpu.metric) == (1, 4, 2, "CpuUtilizationPercentage")
    # A model that takes 20 minutes to load gets a cooldown at least that long.
    slow = Autoscale(min=1, max=2).resolve(instance_count=1, gpu=True, expected_load_s=1190)
    assert slow.cooldown_minutes == 20 and "load in about 20 min" in slow.describe()
    assert Autoscale(min=1, max=2, cooldown_minutes=3).resolve(instance_count=1, gpu=True, expected_load_s=1190).cooldown_minutes == 3
    # Only max given: the minimum is the instance count.
    assert (Autoscale(max=5).resolve(instance_count=2, gpu=True).minimum, Autoscale(min=2).resolve(instance_count=3, gpu=True).maximum) == (2, 6)


def test_instance_count_must_lie_within_the_range():
    with pytest.raises(ConfigError, match=r"instance_count=1 is outside autoscale's 2 to 4 .*instance_count=2") as low:
        Autoscale(min=2, max=4).resolve(instance_count=1, gpu=True)
    assert low.value.nearest == 2 and low.value.conflict == "instance_count"
    with pytest.raises(ConfigError, match=r"instance_count=5 .*instance_count=3"):
        Autoscale(max=3).resolve(instance_count=5, gpu=True)


def test_metrics_and_thresholds():
    assert {info.name for info in METRICS.values()} >= {"CpuUtilizationPercentage", "GpuUtilizationPercentage", "RequestLatency"}
    # REST names are accepted in any case; a scale-out threshold alone keeps the default proportion.
    plan = Autoscale(min=1, max=2, metric="cpuutilizationpercentage", scale_out_above=84).resolve(instance_count=1, gpu=True)
    assert (plan.metric, plan.scale_out_above, plan.scale_in_below) == ("CpuUtilizationPercentage", 84, 36)
    with pytest.raises(ConfigError, match="no default threshold: pass scale_out_above="):
        Autoscale(metric="latency").resolve(instance_count=1, gpu=True)
    latency = Autoscale(min=1, max=3, metric="latency", scale_out_above=800).resolve(instance_count=1, gpu=True)
    assert (latency.metric, latency.metric_on, latency.unit, latency.scale_in_below) == ("RequestLatency", "endpoint", "ms", 400)
    assert "the endpoint's RequestLatency averages above 800 ms" in latency.describe()
    with pytest.raises(ConfigError, match=r"scale_in_below=80\) is not below the scale-out threshold 70"):
        Autoscale(scale_in_below=80).resolve(instance_count=1, gpu=True)


def test_the_cli_range():
    assert Autoscale.parse("1:4") == Autoscale(min=1, max=4)
    assert Autoscale.parse(" 2:2 ") == Autoscale(min=2, max=2)
    for bad in ("1-4", "4", "a:b", "1:2:3", ":3", "-1:3"):
        with pytest.raises(ConfigError, match="MIN:MAX"):
            Autoscale.parse(bad)
    with pytest.raises(ConfigError, match="min is above max"):
        Autoscale.parse("4:1")


def test_az_commands_and_names():
    plan = Autoscale(min=1, max=4).resolve(instance_count=1, gpu=True)
    commands = plan.az_commands("mii-autoscale-chat-blue", "DEP_ID", "EP_ID")
    assert commands[0] == "az monitor autoscale create --name mii-autoscale-chat-blue --resource DEP_ID --min-count 1 --max-count 4 --count 1"
    assert '"GpuUtilizationPercentage > 70 avg 5m" --scale out 1 --cooldown 5' in commands[1]
    assert '"GpuUtilizationPercentage < 30 avg 5m" --scale in 1 --cooldown 5' in commands[2]
    latency = Autoscale(min=1, max=2, metric="latency", scale_out_above=500).resolve(instance_count=1, gpu=True)
    assert "--resource EP_ID" in latency.az_commands("n", "DEP_ID", "EP_ID")[1], "the latency rule reads the endpoint's metric"
    assert autoscale_setting_name("chat", "blue") == "mii-autoscale-chat-blue"


def test_local_deployments_refuse_autoscale(tmp_path):
    with pytest.raises(ConfigError, match="autoscale apply to Azure ML deployments"):
        mii_azure.deploy(tmp_path, local=True, autoscale=Autoscale(min=1, max=2))


def test_cli_rejects_a_bad_range(capsys):
    from mii_azure.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["deploy", "some-model", "--sku", "ND96", "--autoscale", "1-4"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --autoscale: '1-4' is not an instance range: give MIN:MAX" in err and "Traceback" not in err
