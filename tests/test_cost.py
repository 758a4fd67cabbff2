"""Cost estimation (issue 5): physics of the speed model, SLO and replica arithmetic, prices, outputs.

Pure: nothing here loads a model or needs torch; the chart tests need matplotlib and Pillow, the
DataFrame test pandas (skipped when absent).
"""

from __future__ import annotations

import argparse
import csv
import json
from math import ceil
import struct
import subprocess
import sys

import pytest

from mii_azure.calibration import efficiency_for, fit_two_points, load_calibration
from mii_azure.cost import estimate_cost
from mii_azure.cost_cli import add_cost_arguments, render, report_from_args
from mii_azure.cost_report import INSTALL_COST_EXTRA
from mii_azure.errors import ConfigError, MissingDependencyError
from mii_azure.hardware import Hardware
from mii_azure.performance import PEAK, Efficiency, Machine, ServedModel, decode_step, prefill
from mii_azure.pricing import PriceSheet, Pricing
from mii_azure.skus import get_sku
from mii_azure.workload import ModelShape, Workload

BLOOM_WORKLOAD = Workload(prompt_tokens=512, new_tokens=128, requests_per_second=2, latency_slo_ms=100)
LLAMA_7B = ModelShape(parameters=7e9, layers=32, hidden_size=4096, heads=32, vocab_size=32000, name="llama-7b-shape")
#: Efficiency 1 everywhere: figures are the physics at peak rates, easy to compute by hand.
UNIT_CALIBRATION = {
    "gpu": {"float16": {"bandwidth_efficiency": 1.0, "flops_efficiency": 1.0, "calibrated": False, "basis": "test: peak rates"}},
    "cpu": {"bfloat16": {"bandwidth_efficiency": 1.0, "flops_efficiency": 1.0, "calibrated": False, "basis": "test: peak rates"}},
}
TOY_GPU = Hardware(
    name="toy-gpu",
    kind="gpu",
    gpus=1,
    gpu_model="A100-toy",
    gpu_memory_gb=80,
    gpu_bandwidth_gb_s=1000,
    gpu_fp16_tflops=100,
    bf16=True,
    interconnect="PCIe",
    interconnect_gb_s=32,
    cpu_cores=8,
    ram_gb=100,
    usd_per_hour=2.0,
)
# 1e9 parameters, 10 layers of hidden 1000 (10 heads of 100), vocabulary 1000.
TOY_MODEL = ModelShape(parameters=1e9, layers=10, hidden_size=1000, heads=10, vocab_size=1000, name="toy")


# --- physics ---------------------------------------------------------------------------------
def test_bloom_fp16_does_not_fit_8x_a100_40gb_but_int8_does():
    fp16 = estimate_cost(
        "bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96asr_v4"], overrides={"quantization": "none", "zero_offload": "none"}
    )["Standard_ND96asr_v4"]
    assert fp16.status == "does_not_fit"
    assert "GB per GPU" in fp16.reason and "40 GB" in fp16.reason
    assert fp16.plan is None and fp16.usd_per_hour is None

    planned = estimate_cost("bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96asr_v4"])["Standard_ND96asr_v4"]
    assert planned.plan is not None
    assert planned.plan.quantization == "int8" and planned.plan.tensor_parallel == 8 and planned.plan.zero_offload is None


def test_bloom_fits_8x_a100_80gb_in_fp16_and_is_the_best_choice():
    report = estimate_cost("bigscience/bloom", BLOOM_WORKLOAD)
    estimate = report["Standard_ND96amsr_A100_v4"]
    assert estimate.plan.dtype == "float16" and estimate.plan.quantization is None
    assert estimate.plan.tensor_parallel == 8 and estimate.plan.zero_offload is None
    assert estimate.status == "ok" and estimate.latency_ms <= 100
    assert report.best is not None and report.best.plan is not None
    assert report.best.instance_type == "Standard_ND96amsr_A100_v4"


def test_7b_fp16_decode_is_no_faster_than_its_weights_over_peak_bandwidth():
    report = estimate_cost(
        LLAMA_7B, Workload(prompt_tokens=512, new_tokens=128), skus=["NC24ads_A100_v4"], overrides={"max_batch_size": 1}
    )
    estimate = report["Standard_NC24ads_A100_v4"]
    assert estimate.plan.dtype == "float16" and estimate.plan.tensor_parallel == 1 and estimate.batch == 1
    # 7e9 parameters x 2 bytes = 14e9 bytes read per token; 14e9 / 1935e9 B/s = 7.235 ms at peak.
    floor_ms = 7e9 * 2 / 1935e9 * 1e3
    assert floor_ms == pytest.approx(7.235, abs=1e-3)
    assert estimate.latency_ms >= floor_ms
    assert estimate.breakdown.memory_ms >= floor_ms


@pytest.mark.parametrize("sku", ["NC24ads_A100_v4", "ND96amsr_A100_v4", "NC4as_T4_v3", "ND96asr_v4"])
def test_doubling_bandwidth_never_slows_a_sku(sku):
    hardware = get_sku(sku).hardware
    faster = hardware.model_copy(update={"name": "faster", "gpu_bandwidth_gb_s": 2 * hardware.gpu_bandwidth_gb_s})
    for model in (LLAMA_7B, "bigscience/bloom-7b1"):
        report = estimate_cost(model, Workload(prompt_tokens=256, new_tokens=64, requests_per_second=3), hardware=[hardware, faster])
        base, fast = report[hardware.name], report["faster"]
        if base.status == "does_not_fit":
            assert fast.status == "does_not_fit"
            continue
        assert fast.latency_ms <= base.latency_ms
        assert fast.request_ms <= base.request_ms
        assert fast.tokens_per_s_per_instance >= base.tokens_per_s_per_instance
        assert fast.instances <= base.instances
    # And step by step, at every batch and context, through the speed model itself.
    facts = LLAMA_7B.facts()
    from mii_azure.planner import make_plan

    plan = make_plan(facts, hardware) if hardware.total_gpu_memory_gb > 20 else None
    if plan is not None:
        served = ServedModel.of(facts, plan)
        slow, quick = Machine.of(hardware, plan.dtype), Machine.of(faster, plan.dtype)
        for batch in (1, 2, 8, 64):
            for context in (16, 1024):
                assert decode_step(served, quick, PEAK, batch=batch, context=context).total_s <= decode_step(
                    served, slow, PEAK, batch=batch, context=context
                ).total_s


def test_a_higher_price_never_lowers_the_cost_per_token_at_the_same_throughput():
    cheap = TOY_GPU.model_copy(update={"name": "cheap", "usd_per_hour": 2.0})
    dear = TOY_GPU.model_copy(update={"name": "dear", "usd_per_hour": 3.0})
    workload = Workload(prompt_tokens=100, new_tokens=100, requests_per_second=250, latency_slo_ms=3)
    report = estimate_cost(TOY_MODEL, workload, hardware=[dear, cheap], calibration=UNIT_CALIBRATION)
    assert report["cheap"].tokens_per_s_per_instance == report["dear"].tokens_per_s_per_instance
    assert report["dear"].usd_per_million_tokens > report["cheap"].usd_per_million_tokens
    assert report["dear"].usd_per_million_tokens_at_capacity > report["cheap"].usd_per_million_tokens_at_capacity
    assert [e.instance_type for e in report.estimates] == ["cheap", "dear"]
    discounted = estimate_cost(TOY_MODEL, workload, hardware=[dear], calibration=UNIT_CALIBRATION, discount=0.5)
    assert discounted["dear"].usd_per_million_tokens == pytest.approx(report["dear"].usd_per_million_tokens / 2)


def test_slo_filtering_and_replicas_on_a_hand_computed_case():
    """toy model on toy GPU, efficiency 1 (peak rates), prompt 100, 100 new tokens, 250 requests/s, 3 ms per token.

    Weights: 1e9 x 2 B = 2e9 B. KV cache per token: 2 (K, V) x 10 layers x 10 heads x 100 x 2 B = 40,000 B.
    Decode context: 100 + 100 / 2 = 150 tokens on average.
    decode step(b) = memory (2e9 + 40,000 x 150 x b) B / 1e12 B/s = 2 ms + 0.006 ms x b
                   + compute (2 x 1e9 x b + 4 x 10 layers x 1000 x 150 x b) / 1e14 FLOP/s = 0.02006 ms x b
                   = 2 ms + 0.02606 ms x b.
    b = 38: 2.99028 ms <= 3 ms; b = 39: 3.01634 ms > 3 ms  ->  batch 38 (the plan fits 64).
    prefill(38) = memory 2 ms + compute [2 x (1e9 - 1e6 head) x 100 x 38 + 2 x 1e6 x 38 + 2 x 10 x 1000 x 100^2 x 38]
                  / 1e14 = 76.00076 ms  ->  78.00076 ms to the first token.
    request(38) = 78.00076 + 99 x 2.99028 = 374.03848 ms  ->  38 / 0.37403848 s = 101.594 requests/s per instance.
    instances = ceil(250 / 101.594) = ceil(2.461) = 3; $/h = 3 x $2 = $6.
    $/M tokens = 6 / (250 x 100 x 3600) x 1e6 = 0.0667; $/1k requests = 6 / (250 x 3600) x 1e3 = 0.00667.
    """
    workload = Workload(prompt_tokens=100, new_tokens=100, requests_per_second=250, latency_slo_ms=3)
    report = estimate_cost(TOY_MODEL, workload, hardware=[TOY_GPU], calibration=UNIT_CALIBRATION)
    estimate = report["toy-gpu"]
    assert estimate.plan.max_batch_size == 64 and estimate.plan.tensor_parallel == 1
    assert estimate.status == "ok" and estimate.batch == 38
    assert estimate.latency_ms == pytest.approx(2 + 0.02606 * 38)
    assert estimate.ttft_ms == pytest.approx(78.00076)
    assert estimate.request_ms == pytest.approx(78.00076 + 99 * 2.99028)
    assert estimate.requests_per_s_per_instance == pytest.approx(38 / 0.37403848)
    assert estimate.tokens_per_s_per_instance == pytest.approx(38 / 0.37403848 * 100)
    assert estimate.instances == 3
    assert estimate.usd_per_hour == pytest.approx(6.0)
    assert estimate.usd_per_million_tokens == pytest.approx(6 / (250 * 100 * 3600) * 1e6)
    assert estimate.usd_per_thousand_requests == pytest.approx(6 / (250 * 3600) * 1e3)
    assert estimate.price_source == "price given with the toy-gpu hardware"

    # 1.5 ms per token is under even batch 1 (2.02606 ms): the SKU misses, with the reason.
    missed = estimate_cost(TOY_MODEL, workload.model_copy(update={"latency_slo_ms": 1.5}), hardware=[TOY_GPU], calibration=UNIT_CALIBRATION)
    assert report.best is not None and missed.best is None
    miss = missed["toy-gpu"]
    assert miss.status == "misses_slo" and miss.batch == 1
    assert "2.0 ms per token even at batch 1, over the 1.5 ms target" in miss.reason

    # Without a target the largest planned batch is used: 64 -> 2 + 0.02606 x 64 = 3.66784 ms per token.
    unbounded = estimate_cost(TOY_MODEL, workload.model_copy(update={"latency_slo_ms": None}), hardware=[TOY_GPU], calibration=UNIT_CALIBRATION)
    assert unbounded["toy-gpu"].batch == 64
    assert unbounded["toy-gpu"].latency_ms == pytest.approx(2 + 0.02606 * 64)


def test_an_instance_serves_every_copy_of_the_plan_on_a_hand_computed_case():
    """The toy case above on a toy instance with two of the same GPUs at twice the price.

    The plan serves 2 copies (tp1 each); each copy runs exactly as on the one-GPU toy (batch 38 within
    3 ms per token), so an instance serves 2 x 101.594 = 203.19 requests/s.
    instances = ceil(250 / 203.19) = ceil(1.230) = 2; $/h = 2 x $4 = $8 (the one-GPU toy: 3 x $2 = $6).
    $/M tokens at capacity = 4 / (2 x 10,159.4 tokens/s x 3600) x 1e6, the same as one GPU's at $2.
    """
    workload = Workload(prompt_tokens=100, new_tokens=100, requests_per_second=250, latency_slo_ms=3)
    two_gpus = TOY_GPU.model_copy(update={"name": "toy-2gpu", "gpus": 2, "usd_per_hour": 4.0})
    report = estimate_cost(TOY_MODEL, workload, hardware=[TOY_GPU, two_gpus], calibration=UNIT_CALIBRATION)
    one, two = report["toy-gpu"], report["toy-2gpu"]
    assert (one.plan.replicas, two.plan.replicas) == (1, 2) and two.plan.tensor_parallel == 1
    assert two.batch == one.batch == 38 and two.latency_ms == pytest.approx(one.latency_ms)
    copy_rate = 38 / 0.37403848
    assert one.requests_per_s_per_instance == pytest.approx(copy_rate)
    assert two.requests_per_s_per_instance == pytest.approx(2 * copy_rate)
    assert two.tokens_per_s_per_instance == pytest.approx(2 * copy_rate * 100)
    assert two.instances == ceil(250 / (2 * copy_rate)) == 2
    assert two.usd_per_hour == pytest.approx(8.0) and one.usd_per_hour == pytest.approx(6.0)
    assert two.usd_per_million_tokens == pytest.approx(8 / (250 * 100 * 3600) * 1e6)
    assert two.usd_per_million_tokens_at_capacity == pytest.approx(4 / (2 * copy_rate * 100 * 3600) * 1e6)
    assert two.usd_per_million_tokens_at_capacity == pytest.approx(one.usd_per_million_tokens_at_capacity)
    assert "2 model copies per instance, 1 GPU each: throughput per instance = 2 x one copy's" in two.notes
    assert not any("cop" in note for note in one.notes)  # one GPU, one copy: nothing to say
    assert two.plan_summary == "fp16 x2" and two.to_record()["replicas"] == 2


def test_8_gpu_skus_are_costed_with_every_copy_their_plan_serves():
    """Llama-2-70B on ND96asr_v4 (8x A100 40GB) plans tp4, so 2 copies: derived from a one-copy estimate."""
    workload = Workload(prompt_tokens=512, new_tokens=128, requests_per_second=20)
    full = estimate_cost("meta-llama/Llama-2-70b-hf", workload, skus=["ND96asr_v4"])["Standard_ND96asr_v4"]
    single = estimate_cost("meta-llama/Llama-2-70b-hf", workload, skus=["ND96asr_v4"], overrides={"replicas": 1})[
        "Standard_ND96asr_v4"
    ]
    assert (full.plan.tensor_parallel, full.plan.replicas) == (4, 2) and single.plan.replicas == 1
    assert full.batch == single.batch and full.latency_ms == pytest.approx(single.latency_ms)
    assert full.tokens_per_s_per_instance == pytest.approx(2 * single.tokens_per_s_per_instance)
    assert full.instances == ceil(20 / full.requests_per_s_per_instance - 1e-9)
    assert single.instances == ceil(20 / single.requests_per_s_per_instance - 1e-9)
    assert full.usd_per_hour == pytest.approx(full.instances * full.usd_per_hour_instance)
    assert full.usd_per_million_tokens_at_capacity == pytest.approx(single.usd_per_million_tokens_at_capacity / 2)
    assert "2 model copies per instance, 4 GPUs each: throughput per instance = 2 x one copy's" in full.notes
    assert any("4 of its 8 GPUs stay idle (replicas set by the caller)" in note for note in single.notes)
    assert not any("stay idle" in note for note in full.notes)
    # Bloom-176B fills the 8 GPUs with one tp8 copy: nothing is idle and nothing multiplies.
    bloom = estimate_cost("bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96amsr"])["Standard_ND96amsr_A100_v4"]
    assert (bloom.plan.tensor_parallel, bloom.plan.replicas) == (8, 1)
    assert "1 model copy per instance, 8 GPUs each" in bloom.notes
    # Offloaded plans serve one copy and say why the rest of the GPUs wait.
    offloaded = estimate_cost("bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96asr_v4"], overrides={"quantization": "none"})
    note = "; ".join(offloaded["Standard_ND96asr_v4"].notes)
    assert "7 of its 8 GPUs stay idle (ZeRO-Inference offload" in note


def test_replicas_that_do_not_fit_a_sku_are_reported_not_raised():
    report = estimate_cost(LLAMA_7B, Workload(), skus=["NC24ads_A100_v4", "ND96amsr"], overrides={"replicas": 2})
    assert report["Standard_NC24ads_A100_v4"].status == "does_not_fit"
    assert "use replicas=1" in report["Standard_NC24ads_A100_v4"].reason
    assert report["Standard_ND96amsr_A100_v4"].plan.replicas == 2


def test_cpu_copies_share_the_machine_so_they_add_no_throughput():
    """On CPU the copies split one machine's bandwidth and FLOPs: at best the same throughput per instance."""
    cpu = Hardware.cpu(cores=8, ram_gb=64, bf16=True, bandwidth_gb_s=30, peak_gflops=1000, name="cpu8", usd_per_hour=1.0)
    workload = Workload(prompt_tokens=64, new_tokens=32, requests_per_second=1)
    one = estimate_cost(TOY_MODEL, workload, hardware=[cpu], calibration=UNIT_CALIBRATION)["cpu8"]
    two = estimate_cost(TOY_MODEL, workload, hardware=[cpu], calibration=UNIT_CALIBRATION, overrides={"replicas": 2})["cpu8"]
    assert (one.plan.replicas, two.plan.replicas) == (1, 2)
    assert two.tokens_per_s_per_instance <= one.tokens_per_s_per_instance * (1 + 1e-9)
    assert any("2 copies share the CPU" in note for note in two.notes)


def test_tensor_parallel_all_reduce_and_offload_terms():
    hardware = get_sku("ND96amsr_A100_v4").hardware
    served = ServedModel(parameters=1e9, layers=10, hidden_size=1000, weight_bytes=2e9, tensor_parallel=8)
    machine = Machine.of(hardware, "float16")
    step = decode_step(served, machine, PEAK, batch=4, context=0)
    # 2 all-reduces x 10 layers x (4 x 1000 x 2 B) x 2 x 7/8 / 600e9 B/s
    assert step.communication_s == pytest.approx(2 * 10 * 8000 * 2 * 7 / 8 / 600e9)
    offloaded = served.model_copy(update={"tensor_parallel": 1, "offload": "cpu"})
    # A100: PCIe 4 at 25 GB/s effective -> 2e9 B / 25e9 B/s = 80 ms per forward pass.
    assert decode_step(offloaded, machine, PEAK, batch=1, context=0).offload_s == pytest.approx(0.08)
    assert prefill(offloaded, machine, PEAK, batch=1, prompt_tokens=10).offload_s == pytest.approx(0.08)


def test_stable_diffusion_is_costed_per_image():
    workload = Workload(requests_per_second=1, steps=50, latency_slo_ms=10_000)
    report = estimate_cost("runwayml/stable-diffusion-v1-5", workload, skus=["NC24ads_A100_v4", "NC4as_T4_v3"])
    assert report.unit == "image"
    estimate = report["Standard_NC24ads_A100_v4"]
    assert estimate.tokens_per_s_per_instance is None and estimate.usd_per_million_tokens is None
    assert estimate.usd_per_thousand_requests is not None and estimate.ttft_ms is None
    # 50 steps x [UNet weights 859.5M x 2 B / (1935 GB/s x e_bw) + 2 x 859.5M x 4096 x 0.0962 x 2 x batch / (312 TFLOPS x e_flops)]
    efficiency = efficiency_for(get_sku("NC24ads_A100_v4").hardware, "float16")
    batch = estimate.batch
    expected = 50 * (
        859_520_964 * 2 / (1935e9 * efficiency.bandwidth) + 2 * 859_520_964 * 4096 * 0.0962 * 2 * batch / (312e12 * efficiency.flops)
    )
    assert estimate.latency_ms == pytest.approx(expected * 1e3)
    assert estimate.latency_ms <= 10_000
    assert "s/image" in str(report) and "$/1k img" in str(report)


# --- models given by configuration only ------------------------------------------------------
def test_model_shape_dict_and_config_inputs(tmp_path):
    workload = Workload(prompt_tokens=256, new_tokens=64)
    by_shape = estimate_cost(LLAMA_7B, workload, skus=["A100"])
    by_dict = estimate_cost(LLAMA_7B.model_dump(), workload, skus=["A100"])
    assert by_shape["Standard_NC24ads_A100_v4"].latency_ms == by_dict["Standard_NC24ads_A100_v4"].latency_ms
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    }
    by_config = estimate_cost(config, workload, skus=["T4"])
    assert by_config.parameter_count == pytest.approx(124e6, rel=0.02)
    (tmp_path / "config.json").write_text(json.dumps(config))
    by_folder = estimate_cost(tmp_path, workload, skus=["T4"])
    assert by_folder["Standard_NC4as_T4_v3"].latency_ms == by_config["Standard_NC4as_T4_v3"].latency_ms
    with pytest.raises(ConfigError, match="hidden_size"):
        estimate_cost({"parameters": 7e9, "layers": 32}, workload, skus=["A100"])


def test_known_models_need_no_weights():
    report = estimate_cost("meta-llama/Llama-2-7b-hf", Workload(prompt_tokens=512, new_tokens=128, latency_slo_ms=50), skus=["A100", "A10", "T4"])
    assert report.best is not None
    # Each alias stands for the cheapest of its sizes on which the fp16 model fits without int8 or offload:
    # 13.5 GB of weights plus KV cache and headroom exceed one 16 GB T4, so "T4" is the 4x T4 size.
    assert {e.instance_type for e in report.estimates} == {"Standard_NC24ads_A100_v4", "Standard_NV36ads_A10_v5", "Standard_NC64as_T4_v3"}
    t4 = report["Standard_NC64as_T4_v3"]
    assert t4.plan.quantization is None and t4.plan.zero_offload is None and t4.plan.tensor_parallel > 1
    assert t4.notes[0].startswith("'T4' matches 4 sizes") and "Standard_NC64as_T4_v3" in t4.notes[0]


def test_workload_token_limits_come_from_the_workload():
    with pytest.raises(ConfigError, match="Workload"):
        estimate_cost(LLAMA_7B, Workload(), skus=["A100"], overrides={"max_new_tokens": 10})


def test_cpu_hardware_needs_its_rates():
    workload = Workload(prompt_tokens=32, new_tokens=32)
    described = Hardware.cpu(cores=2, ram_gb=24, bf16=True, bandwidth_gb_s=20, peak_gflops=300, name="cpu box", usd_per_hour=0.1)
    report = estimate_cost(TOY_MODEL, workload, hardware=[described], calibration=UNIT_CALIBRATION)
    estimate = report["cpu box"]
    assert estimate.plan.dtype == "bfloat16" and estimate.status == "ok"
    # batch 32 (the CPU plan): (2e9 + 40,000 x 48 x 32) B / 20e9 + (2e9 x 32 + 4 x 10 x 1000 x 48 x 32) / 300e9
    expected = (2e9 + 40_000 * 48 * 32) / 20e9 + (2e9 * 32 + 4 * 10 * 1000 * 48 * 32) / 300e9
    assert estimate.batch == 32 and estimate.latency_ms == pytest.approx(expected * 1e3)
    bare = Hardware.cpu(cores=2, ram_gb=24, name="bare")
    unknown = estimate_cost(TOY_MODEL, workload, hardware=[bare], calibration=UNIT_CALIBRATION)["bare"]
    assert unknown.status == "unsupported" and "bandwidth_gb_s" in unknown.reason


# --- prices ----------------------------------------------------------------------------------
def test_price_sheet_overrides_the_catalog_and_selects_a_region(tmp_path):
    sheet = tmp_path / "prices.csv"
    sheet.write_text(
        "# my negotiated prices\n"
        "instance_type,usd_per_hour,region\n"
        "Standard_ND96amsr_A100_v4,20.0,eastus\n"
        "standard_nd96amsr_a100_v4,25.0,West Europe\n"
        "NC24ads_A100_v4,3.0,\n"
    )
    eastus = estimate_cost("bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96amsr", "ND96isr_H100"], prices=sheet)
    assert eastus["Standard_ND96amsr_A100_v4"].usd_per_hour_instance == 20.0
    assert "prices.csv (eastus)" in eastus["Standard_ND96amsr_A100_v4"].price_source
    assert eastus["Standard_ND96isr_H100_v5"].usd_per_hour_instance == 98.32  # not in the sheet: the catalog's
    assert "catalog" in eastus["Standard_ND96isr_H100_v5"].price_source

    west = estimate_cost(
        "bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96amsr", "ND96isr_H100", "NC24ads"], prices=sheet, region="westeurope"
    )
    assert west["Standard_ND96amsr_A100_v4"].usd_per_hour_instance == 25.0
    assert west["Standard_NC24ads_A100_v4"].price.usd_per_hour == 3.0  # a row without a region applies anywhere
    h100 = west["Standard_ND96isr_H100_v5"]
    assert h100.status == "unpriced" and h100.usd_per_hour is None
    assert "westeurope" in h100.reason and "price sheet" in h100.reason
    assert "westeurope" in west.prices

    regional = tmp_path / "regional.csv"
    regional.write_text("instance_type,usd_per_hour,region\nStandard_ND96amsr_A100_v4,25.0,westeurope\n")
    with pytest.raises(ConfigError, match="japaneast") as error:
        estimate_cost("bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96amsr"], prices=regional, region="japaneast")
    assert "eastus" in error.value.message and "--prices" in error.value.message and error.value.region == "japaneast"
    assert "it names westeurope" in error.value.message
    with pytest.raises(ConfigError, match="no price sheet was given"):
        estimate_cost("bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96amsr"], region="westeurope")


def test_json_price_sheets_and_discounts(tmp_path):
    rows = tmp_path / "prices.json"
    rows.write_text(json.dumps({"prices": [{"instance_type": "Standard_NC24ads_A100_v4", "usd_per_hour": 3.0}]}))
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"Standard_NC24ads_A100_v4": 3.0}))
    for sheet in (rows, mapping):
        assert PriceSheet.load(sheet).price("NC24ads_A100_v4", "eastus").usd_per_hour == 3.0
    report = estimate_cost(LLAMA_7B, Workload(), skus=["A100"], prices={"A100": 9.9}, discount=0.3, discount_label="1-year reserved")
    # "A100" is an alias, not an instance type: the sheet row does not match, the catalog price is used.
    price = report["Standard_NC24ads_A100_v4"].price
    assert price.list_usd_per_hour == 3.673 and price.usd_per_hour == pytest.approx(3.673 * 0.7)
    assert "30% discount (1-year reserved)" in report.prices
    with pytest.raises(ConfigError, match="fraction"):
        Pricing.make(discount=30)


def test_bad_price_sheets_say_what_to_fix(tmp_path):
    missing = tmp_path / "bad.csv"
    missing.write_text("sku,price\nA,1\n")
    with pytest.raises(ConfigError, match="instance_type and usd_per_hour"):
        PriceSheet.load(missing)
    negative = tmp_path / "neg.csv"
    negative.write_text("instance_type,usd_per_hour\nStandard_NC24ads_A100_v4,-1\n")
    with pytest.raises(ConfigError, match="Row 1"):
        PriceSheet.load(negative)
    with pytest.raises(ConfigError, match="Cannot read"):
        PriceSheet.load(tmp_path / "absent.csv")


def test_catalog_sku_without_a_price_is_unpriced_not_invented():
    report = estimate_cost(LLAMA_7B, Workload(), skus=["ND96isr_H200_v5"])
    estimate = report["Standard_ND96isr_H200_v5"]
    assert estimate.status == "unpriced" and estimate.usd_per_hour is None and estimate.latency_ms is not None
    assert report.best is None


def test_an_unknown_sku_is_a_clear_config_error():
    with pytest.raises(ConfigError) as error:
        estimate_cost(LLAMA_7B, Workload(), skus=["A100", "Standard_NX99_Z1000"])
    assert "Standard_NX99_Z1000" in error.value.message and "Use one of" in error.value.message
    assert "Standard_NC24ads_A100_v4" in error.value.candidates


# --- outputs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bloom_report():
    return estimate_cost("bigscience/bloom", BLOOM_WORKLOAD, skus=["ND96amsr", "ND96isr_H100", "ND96asr_v4", "NC24ads"])


def test_table_ranks_meeting_skus_by_cost_then_the_rest_with_reasons(bloom_report):
    statuses = [e.status for e in bloom_report.estimates]
    assert statuses == sorted(statuses, key=["ok", "unpriced", "misses_slo", "does_not_fit", "unsupported"].index)
    meeting = bloom_report.meeting
    assert [e.usd_per_hour for e in meeting] == sorted(e.usd_per_hour for e in meeting)
    text = str(bloom_report)
    assert text == repr(bloom_report)
    assert "Cost estimate for bigscience/bloom" in text and "100 ms per token" in text
    assert "Prices: catalog" in text and "estimates (est.)" in text and "uncalibrated" in text
    assert "Best: Standard_ND96amsr_A100_v4" in text
    for estimate in bloom_report.not_meeting:
        assert estimate.reason in text
    html = bloom_report._repr_html_()
    assert html.startswith("<div>") and "<table>" in html and "ND96amsr_A100_v4" in html


def test_json_and_csv_outputs(bloom_report, tmp_path):
    data = json.loads(bloom_report.to_json())
    assert data["figures"] == "estimated" and data["best"] == "Standard_ND96amsr_A100_v4"
    assert [row["instance_type"] for row in data["estimates"]] == [e.instance_type for e in bloom_report.estimates]
    assert data["plans"]["Standard_ND96amsr_A100_v4"]["tensor_parallel"] == 8
    assert all(row["figures"] == "estimated" for row in data["estimates"])
    path = bloom_report.to_csv(tmp_path / "cost.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(bloom_report.estimates)
    assert rows[0]["instance_type"] == "Standard_ND96amsr_A100_v4" and float(rows[0]["usd_per_hour"]) == pytest.approx(32.77)


def test_dataframe(bloom_report):
    pytest.importorskip("pandas")
    frame = bloom_report.to_dataframe()
    assert list(frame["instance_type"])[0] == "Standard_ND96amsr_A100_v4"
    assert {"usd_per_million_tokens", "latency_ms", "status", "reason"} <= set(frame.columns)


def test_missing_pandas_and_matplotlib_name_the_extra(bloom_report, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pandas", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(MissingDependencyError) as error:
        bloom_report.to_dataframe()
    assert error.value.install == INSTALL_COST_EXTRA and "mii-azure[cost]" in error.value.message
    with pytest.raises(MissingDependencyError, match=r"mii-azure\[cost\]"):
        bloom_report.plot(tmp_path / "cost.png")


def test_plot_writes_a_valid_png(bloom_report, tmp_path):
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("PIL.Image")
    path = bloom_report.plot(tmp_path / "cost.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (900, 550)
    with image.open(path) as png:
        png.verify()
    with image.open(path) as png:
        assert png.format == "PNG" and png.size == (900, 550)


def test_cli_cost_command(tmp_path):
    parser = argparse.ArgumentParser()
    add_cost_arguments(parser)
    args = parser.parse_args(
        [
            "bigscience/bloom",
            "--prompt-tokens", "512",
            "--new-tokens", "128",
            "--rps", "2",
            "--slo-ms", "100",
            "--skus", "ND96amsr,ND96asr_v4", "NC24ads",
            "--json",
            "--csv", str(tmp_path / "cost.csv"),
        ]
    )
    report = report_from_args(args)
    data = json.loads(render(report, args))
    assert data["best"] == "Standard_ND96amsr_A100_v4" and len(data["estimates"]) == 3
    assert (tmp_path / "cost.csv").is_file()
    args.json = False
    assert render(report, args).startswith("Cost estimate for bigscience/bloom")


# --- calibration and imports -----------------------------------------------------------------
def test_shipped_calibration_records_its_sources():
    record = load_calibration()
    for name, entry in record["gpu"].items():
        assert entry["calibrated"] is False and "uncalibrated" in entry["basis"]
        assert entry["source"].startswith("https://") and entry["math"] and entry["checks"]
        assert all(abs(check["error"]) < 0.1 for check in entry["checks"].values()), name
    cpu = record["cpu"]["bfloat16"]
    assert cpu["calibrated"] is True and cpu["source"].startswith("benchmarks/results/")
    assert cpu["machine"]["read_bandwidth_gb_s"] > 0 and cpu["measured"]
    assert efficiency_for(get_sku("NC24ads_A100_v4").hardware, "int8").bandwidth == record["gpu"]["int8"]["bandwidth_efficiency"]
    fallback = efficiency_for(Hardware.cpu(cores=2, ram_gb=8), "float32")
    assert not fallback.calibrated and "not calibrated" in fallback.basis


def test_fit_two_points_recovers_known_efficiencies():
    hardware = get_sku("NC24ads_A100_v4").hardware
    served = ServedModel(parameters=7e9, layers=32, hidden_size=4096, weight_bytes=14e9, head_parameters=131e6)
    machine = Machine.of(hardware, "float16")
    truth = Efficiency(bandwidth=0.6, flops=0.4)
    first = decode_step(served, machine, PEAK, batch=1, context=100)
    second = prefill(served, machine, PEAK, batch=4, prompt_tokens=512)
    measured = [
        (first, decode_step(served, machine, truth, batch=1, context=100).total_s),
        (second, prefill(served, machine, truth, batch=4, prompt_tokens=512).total_s),
    ]
    assert fit_two_points(measured) == pytest.approx((0.6, 0.4))


def test_cost_modules_import_neither_torch_nor_the_optional_extras():
    code = (
        "import sys, mii_azure.cost, mii_azure.cost_cli, mii_azure.pricing;"
        "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'transformers') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_cli_workload_errors_name_the_option():
    parser = argparse.ArgumentParser()
    add_cost_arguments(parser)
    with pytest.raises(ConfigError, match="--rps: Input should be greater than 0"):
        report_from_args(parser.parse_args(["bigscience/bloom", "--rps", "0"]))
