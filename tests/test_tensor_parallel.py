"""tensor_parallel=2 on CPU: two processes (gloo), rank 0 serves, DeepSpeed AutoTP slices the model."""

from __future__ import annotations

import pytest

from mii_azure.errors import ConfigError
from mii_azure.hardware import Hardware
from mii_azure.models import resolve_model
from mii_azure.planner import PlanOverrides, make_plan
from mii_azure.runtime.engine import Engine
from mii_azure.runtime.optimize import apply_plan
from mii_azure.runtime.service import ScoringService

pytestmark = pytest.mark.serving

CPU = Hardware.cpu(cores=2, ram_gb=16, bf16=False)
PROMPTS = ["the cat sat on the mat", "DeepSpeed is", "birds sang songs of summer in green trees"]


def test_two_ranks_give_the_same_greedy_output_as_one(model_dirs):
    facts = resolve_model(model_dirs["llama"])
    single = Engine.load(model_dirs["llama"], plan=make_plan(facts, CPU))
    parallel = Engine.load(model_dirs["llama"], plan=make_plan(facts, CPU, overrides=PlanOverrides(tensor_parallel=2)))
    try:
        assert parallel.applied.tensor_parallel == 2 and parallel.applied.deepspeed
        assert all(process.is_alive() for process in parallel.group._followers)
        request = {"query": PROMPTS, "parameters": {"max_new_tokens": 12}}
        expected = ScoringService(single).score(request)["responses"]
        for _ in range(2):  # several batches through the same ranks
            assert ScoringService(parallel).score(request)["responses"] == expected
        sampled = {"query": PROMPTS[:1], "parameters": {"max_new_tokens": 8, "temperature": 1.2, "seed": 3}}
        assert ScoringService(parallel).score(sampled) ["responses"] == ScoringService(single).score(sampled)["responses"]
    finally:
        parallel.close()
        single.close()
    assert not any(process.is_alive() for process in parallel.group._followers), "follower ranks stop with the engine"


def test_gpt2_cannot_be_sliced_by_autotp_on_cpu(model_dirs):
    with pytest.raises(ConfigError, match="AutoTP") as raised:
        make_plan(resolve_model(model_dirs["gpt2"]), CPU, overrides=PlanOverrides(tensor_parallel=2))
    assert raised.value.nearest == 1


def test_tensor_parallel_plan_needs_the_rank_processes(model_dirs):
    from mii_azure.config import ServingSettings
    from mii_azure.tasks import get_task
    from mii_azure.tasks.base import LoadOptions

    facts = resolve_model(model_dirs["llama"])
    plan = make_plan(facts, CPU, overrides=PlanOverrides(tensor_parallel=2))
    task = get_task("text-generation").load(model_dirs["llama"], facts, ServingSettings(), LoadOptions())
    with pytest.raises(ConfigError, match="one process per rank"):
        apply_plan(task, plan)
