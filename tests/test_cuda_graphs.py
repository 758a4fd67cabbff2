"""Shape buckets for CUDA graphs: padding every call to a bucket and trimming the outputs back must
not change any task's answers.

Capturing and replaying graphs needs a CUDA device (tests/gpu covers it); the padding and trimming
around them run the same way on CPU, where these tests check them through the real tasks.
"""

from __future__ import annotations

import base64
import io

import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from mii_azure.hardware import Hardware
from mii_azure.models import resolve_model
from mii_azure.planner import make_plan
from mii_azure.runtime.cuda_graphs import GraphedModule, ShapeBuckets
from mii_azure.runtime.engine import Engine
from mii_azure.runtime.optimize import graph_failures, install_cuda_graphs
from mii_azure.tasks.base import Deadline

FP32_CPU = Hardware.cpu(cores=2, ram_gb=16, bf16=False)
TEXTS = ["the cat sat on the mat", "a", "DeepSpeed is fast"]


# --- buckets ------------------------------------------------------------------------------------
def test_batch_buckets_are_powers_of_two_up_to_the_planned_batch():
    assert ShapeBuckets.up_to(32).batch_sizes == (1, 2, 4, 8, 16, 32)
    assert ShapeBuckets.up_to(24).batch_sizes == (1, 2, 4, 8, 16, 24)
    assert ShapeBuckets.up_to(1).batch_sizes == (1,)
    buckets = ShapeBuckets.up_to(24)
    assert [buckets.batch_size(rows) for rows in (1, 3, 9, 17, 24, 25)] == [1, 4, 16, 24, 24, None]


def test_lengths_round_up_to_the_step_but_never_past_the_input_limit():
    buckets = ShapeBuckets.up_to(8, max_length=200)
    assert [buckets.length(tokens) for tokens in (1, 64, 65, 129, 192, 193, 200)] == [64, 64, 128, 192, 192, 200, 200]
    assert ShapeBuckets.up_to(8).length(37) == 37  # diffusion: sequences are not padded


# --- padding and trimming ----------------------------------------------------------------------
class _Recorder(torch.nn.Module):
    """A toy encoder that remembers the shapes it was called with."""

    def __init__(self, labels: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.labels = labels
        self.calls: list[tuple[int, ...]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        self.calls.append(tuple(input_ids.shape))
        summed = (input_ids * attention_mask).sum(dim=1, keepdim=True).float() * self.scale
        return SequenceClassifierOutput(logits=summed.expand(-1, self.labels) + torch.arange(self.labels))


def test_rows_and_tokens_are_padded_to_the_bucket_and_outputs_trimmed_back():
    inner = _Recorder(labels=3)
    graphed = GraphedModule(inner, ShapeBuckets.up_to(8, max_length=128), pad_token_id=0)
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    output = graphed(input_ids=ids, attention_mask=mask)
    assert inner.calls == [(2, 64)]
    assert output.logits.shape == (2, 3)
    assert output.logits[:, 0].tolist() == [18.0, 17.0]


def test_an_output_whose_width_equals_the_padded_length_is_not_mistaken_for_a_token_axis():
    inner = _Recorder(labels=64)  # as many labels as the padded length
    graphed = GraphedModule(inner, ShapeBuckets.up_to(4, max_length=256))
    output = graphed(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
    assert inner.calls == [(1, 64)]
    assert output.logits.shape == (1, 64)


def test_per_token_logits_are_trimmed_to_the_callers_tokens():
    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenClassifierOutput:
            return TokenClassifierOutput(logits=(input_ids.float() * self.weight).unsqueeze(-1).expand(-1, -1, 5))

    graphed = GraphedModule(Tagger(), ShapeBuckets.up_to(4, max_length=256), pad_token_id=0)
    ids = torch.tensor([[4, 5, 6, 7, 8]] * 3)
    output = graphed(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert output.logits.shape == (3, 5, 5)
    assert torch.equal(output.logits[:, :, 0], ids.float())


def test_a_batch_above_the_largest_bucket_runs_unpadded():
    inner = _Recorder(labels=2)
    graphed = GraphedModule(inner, ShapeBuckets.up_to(2, max_length=128))
    ids = torch.ones(3, 10, dtype=torch.long)
    graphed(input_ids=ids, attention_mask=ids)
    assert inner.calls == [(3, 10)]


def test_tensors_inside_containers_turn_graphs_off_and_say_why():
    """SDXL's UNet takes added_cond_kwargs={"text_embeds": tensor, ...}: such inputs can be neither
    padded nor copied into a graph, so the call runs as given and the reason is recorded."""

    class Conditioned(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, sample: torch.Tensor, added_cond_kwargs: dict) -> torch.Tensor:
            return sample * self.weight + added_cond_kwargs["text_embeds"]

    graphed = GraphedModule(Conditioned(), ShapeBuckets.up_to(8), pad_sequences=False)
    sample = torch.ones(3, 2)
    output = graphed(sample, added_cond_kwargs={"text_embeds": torch.full((3, 2), 2.0)})
    assert output.shape == (3, 2) and torch.equal(output, torch.full((3, 2), 3.0))
    assert graphed.failure is not None and "added_cond_kwargs" in graphed.failure


def test_prepare_runs_the_largest_bucket_once():
    inner = _Recorder(labels=2)
    graphed = GraphedModule(inner, ShapeBuckets.up_to(16, max_length=96))
    ids = torch.zeros(1, 1, dtype=torch.long)
    graphed.prepare(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert inner.calls == [(16, 96)]


def test_the_wrapped_modules_attributes_stay_reachable():
    inner = _Recorder(labels=2)
    graphed = GraphedModule(inner, ShapeBuckets.up_to(4))
    assert graphed.labels == 2
    assert graphed.module is inner
    assert not graphed.captures  # CPU: padding only, no graphs
    assert graphed.failure is None and graphed.graph_count == 0


# --- through the real tasks ---------------------------------------------------------------------
def _engine(model_dir) -> Engine:
    return Engine.load(model_dir, plan=make_plan(resolve_model(model_dir), FP32_CPU))


def _answers(engine: Engine, inputs, parameters=None):
    parsed = type(engine.task).parse_parameters(parameters or {})
    engine.task.check(inputs, parsed)
    return engine.task.predict(inputs, parsed, Deadline(120))


def _shapes_seen(module: torch.nn.Module) -> list[tuple[int, ...]]:
    seen: list[tuple[int, ...]] = []
    module.register_forward_pre_hook(
        lambda _module, args, kwargs: seen.append(tuple((list(args) + list(kwargs.values()))[0].shape)), with_kwargs=True
    )
    return seen


def _assert_close(padded, plain, tolerance: float) -> None:
    """Same structure and strings; numbers within ``tolerance`` (padding changes the matrix shapes,
    so fp32 sums may be reordered: differences of a few ulps, far below 1e-4)."""
    if isinstance(plain, dict):
        assert padded.keys() == plain.keys()
        for key in plain:
            _assert_close(padded[key], plain[key], tolerance)
    elif isinstance(plain, list):
        assert len(padded) == len(plain)
        for left, right in zip(padded, plain):
            _assert_close(left, right, tolerance)
    elif isinstance(plain, float):
        assert padded == pytest.approx(plain, abs=tolerance)
    else:
        assert padded == plain


@pytest.mark.serving
@pytest.mark.parametrize(
    ("name", "inputs", "parameters"),
    [
        ("bert_classifier", TEXTS, {"top_k": 3}),
        ("bert_token_classifier", TEXTS, {"ignore_labels": []}),
        ("bert_fill_mask", ["the [MASK] sat", "a [MASK]", "DeepSpeed makes [MASK] models fast"], {"top_k": 3}),
        ("sentence_transformer", TEXTS, {}),
        (
            "bert_question_answering",
            [
                {"question": "who sat?", "context": "the cat sat on the mat"},
                {"question": "what is fast?", "context": "DeepSpeed makes large models fast " * 2},
                {"question": "a?", "context": "b"},
            ],
            {},
        ),
    ],
)
def test_text_tasks_answer_the_same_through_shape_buckets(model_dirs, name, inputs, parameters):
    engine = _engine(model_dirs[name])
    parsed_inputs = type(engine.task).parse_query(inputs)
    plain = _answers(engine, parsed_inputs, parameters)
    seen = _shapes_seen(engine.task.model)
    graphed = install_cuda_graphs(engine.task, engine.plan)
    assert engine.task.model is graphed
    padded = _answers(engine, parsed_inputs, parameters)
    _assert_close(padded, plain, 1e-4)
    # prepare() ran the largest bucket first; then the call itself, padded to a bucket.
    largest = (graphed.buckets.batch_sizes[-1], engine.task.max_input_tokens)
    assert seen[0] == largest
    rows, length = seen[-1]
    assert rows in graphed.buckets.batch_sizes and rows >= len(inputs)
    assert length == graphed.buckets.length(length) and (length % 64 == 0 or length == engine.task.max_input_tokens)
    assert graph_failures(engine.task) == []


@pytest.mark.serving
def test_diffusion_unet_calls_are_padded_to_a_batch_bucket(model_dirs):
    """Three prompts with guidance make six UNet rows, padded to eight; the seeded images are the
    same as without padding (to within one level of 255: the convolutions see a bigger batch)."""
    from PIL import Image

    engine = _engine(model_dirs["stable_diffusion"])
    prompts = ["a red circle", "a blue square", "green"]
    parameters = {"num_inference_steps": 2, "seed": 7}
    plain = _answers(engine, prompts, parameters)
    seen = _shapes_seen(engine.task.pipeline.unet)
    install_cuda_graphs(engine.task, engine.plan)
    padded = _answers(engine, prompts, parameters)
    assert seen and all(shape[0] == 8 for shape in seen)

    def pixels(entry) -> torch.Tensor:
        image = Image.open(io.BytesIO(base64.b64decode(entry["image_png_base64"])))
        return torch.tensor(list(image.convert("RGB").tobytes()), dtype=torch.int16)

    for left, right in zip(padded, plain):
        assert (left["width"], left["height"]) == (right["width"], right["height"])
        assert (pixels(left) - pixels(right)).abs().max() <= 1
