"""Model reference resolution (mii_azure.models): facts read from configuration and safetensors headers only.

Expected values are computed independently of mii_azure wherever possible: from the model's own
config.json (read here), from safetensors files opened with ``safetensors.safe_open``, and from real
torch models (loaded from the folder, or instantiated on the meta device for config-only shapes).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mii_azure.errors import InvalidModelError, ModelNotFoundError, TaskMismatchError
from mii_azure.models import (
    TASKS,
    ModelFacts,
    ModelRef,
    ModelSource,
    find_model_folder,
    resolve_model,
    resolve_task,
)

# --------------------------------------------------------------------------- helpers


def _config(folder: Path, name: str = "config.json") -> dict[str, Any]:
    return json.loads((Path(folder) / name).read_text(encoding="utf-8"))


def _write_config(folder: Path, config: Any, name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(config), encoding="utf-8")
    return folder


def _stored_counts(folder: Path) -> tuple[int, int]:
    """(elements of every tensor stored in the folder's safetensors files, of the integer ones among them).

    Read with safetensors itself. Integer tensors are buffers, not parameters (checkpoints saved by
    older transformers versions store BERT's ``embeddings.position_ids``, for example).
    """
    from safetensors import safe_open

    total = integer = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    assert files, f"no safetensors file in {folder}"
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_slice(key)
                count = math.prod(tensor.get_shape())
                total += count
                if tensor.get_dtype().startswith(("I", "U")):
                    integer += count
    return total, integer


def _stored_parameter_count(folder: Path) -> int:
    return _stored_counts(folder)[0]


def _unique_state_dict_count(model: Any) -> tuple[int, int]:
    """(sum over every state_dict entry, sum over entries with distinct storage).

    Tied weights (GPT-2's lm_head and wte, T5's shared / encoder / decoder embeddings and lm_head,
    BERT's MLM decoder and word embeddings) appear under several state_dict keys but share one
    storage, and safetensors stores them once. The parameter count of a model is therefore the count
    over distinct storages, which is also what ``model.parameters()`` (deduplicated) sums to.
    """
    every = 0
    by_storage: dict[tuple[int, tuple[int, ...]], int] = {}
    for tensor in model.state_dict().values():
        every += tensor.numel()
        by_storage.setdefault((tensor.data_ptr(), tuple(tensor.shape)), tensor.numel())
    return every, sum(by_storage.values())


def _copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# Config keys each family uses for the facts (written out here, independently of models._ALIASES).
_FAMILY_KEYS: dict[str, dict[str, str | None]] = {
    "gpt2": {
        "num_layers": "n_layer",
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "intermediate_size": "n_inner",
        "vocab_size": "vocab_size",
        "max_positions": "n_positions",
    },
    "bert": {
        "num_layers": "num_hidden_layers",
        "hidden_size": "hidden_size",
        "num_attention_heads": "num_attention_heads",
        "intermediate_size": "intermediate_size",
        "vocab_size": "vocab_size",
        "max_positions": "max_position_embeddings",
    },
    # T5 uses relative position buckets: it has no fixed position limit, so max_positions is None.
    "t5": {
        "num_layers": "num_layers",
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "intermediate_size": "d_ff",
        "vocab_size": "vocab_size",
        "max_positions": None,
    },
}

# name -> (architecture, model_type, is_encoder_decoder, default_task, supported_tasks, sentence_transformers)
_EXPECTED: dict[str, tuple[str, str, bool, str, tuple[str, ...], bool]] = {
    "gpt2": ("GPT2LMHeadModel", "gpt2", False, "text-generation", ("text-generation", "feature-extraction"), False),
    "t5": ("T5ForConditionalGeneration", "t5", True, "text2text-generation", ("text2text-generation",), False),
    "bert_classifier": (
        "BertForSequenceClassification",
        "bert",
        False,
        "text-classification",
        ("text-classification", "feature-extraction"),
        False,
    ),
    "bert_fill_mask": ("BertForMaskedLM", "bert", False, "fill-mask", ("fill-mask", "feature-extraction"), False),
    "bert_token_classifier": (
        "BertForTokenClassification",
        "bert",
        False,
        "token-classification",
        ("token-classification", "feature-extraction"),
        False,
    ),
    "bert_question_answering": (
        "BertForQuestionAnswering",
        "bert",
        False,
        "question-answering",
        ("question-answering", "feature-extraction"),
        False,
    ),
    "bert_encoder": ("BertModel", "bert", False, "feature-extraction", ("feature-extraction",), False),
    "sentence_transformer": ("BertModel", "bert", False, "feature-extraction", ("feature-extraction",), True),
    "minilm": ("BertModel", "bert", False, "feature-extraction", ("feature-extraction",), True),
}
_TRANSFORMERS_MODELS = tuple(_EXPECTED)


# --------------------------------------------------------------------------- 1. facts of the tiny models


@pytest.mark.parametrize("name", _TRANSFORMERS_MODELS)
def test_facts_of_transformers_model_folders(model_dirs: dict[str, Path], name: str) -> None:
    folder = model_dirs[name]
    facts = resolve_model(folder)
    architecture, model_type, encoder_decoder, default_task, supported, sentence_transformers = _EXPECTED[name]

    assert isinstance(facts, ModelFacts)
    assert facts.ref.source is ModelSource.LOCAL
    assert facts.ref.reference == str(folder)
    assert Path(facts.path) == Path(folder).resolve()
    assert facts.architecture == architecture
    assert facts.model_type == model_type
    assert facts.is_encoder_decoder is encoder_decoder
    assert facts.is_diffusion is False
    assert facts.components == {}
    assert facts.default_task == default_task
    assert facts.supported_tasks == supported
    assert facts.sentence_transformers is sentence_transformers
    assert resolve_task(facts) == default_task


@pytest.mark.parametrize("name", _TRANSFORMERS_MODELS)
def test_shape_facts_equal_the_models_own_config(model_dirs: dict[str, Path], name: str) -> None:
    folder = model_dirs[name]
    config = _config(folder)
    facts = resolve_model(folder)
    keys = _FAMILY_KEYS[config["model_type"]]

    for fact, key in keys.items():
        expected = config[key] if key is not None else None
        assert getattr(facts, fact) == expected, f"{fact} (config key {key!r})"
    # None of these configs names key/value heads, so they default to the attention heads (no GQA/MQA).
    assert not {"num_key_value_heads", "n_head_kv", "num_kv_heads", "multi_query"} & set(config)
    assert facts.num_kv_heads == facts.num_attention_heads == config[keys["num_attention_heads"]]


def test_facts_of_stable_diffusion_pipeline(model_dirs: dict[str, Path]) -> None:
    folder = model_dirs["stable_diffusion"]
    index = _config(folder, "model_index.json")
    facts = resolve_model(folder)

    assert facts.is_diffusion is True
    assert facts.is_encoder_decoder is False
    assert facts.architecture == index["_class_name"] == "StableDiffusionPipeline"
    assert facts.model_type == "diffusion-pipeline"
    assert facts.default_task == "text-to-image"
    assert facts.supported_tasks == ("text-to-image",)
    assert resolve_task(facts) == "text-to-image"
    with pytest.raises(TaskMismatchError):
        resolve_task(facts, "text-generation")
    # Components with a class, as named in model_index.json; the null ones (safety_checker, ...) are left out.
    assert set(facts.components) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert facts.components == {name: index[name][1] for name in facts.components}
    assert facts.components["unet"] == "UNet2DConditionModel"
    assert facts.components["scheduler"] == "DDIMScheduler"
    assert "safety_checker" not in facts.components
    # max_positions carries the UNet's latent sample size.
    assert facts.max_positions == _config(folder / "unet")["sample_size"]
    assert facts.dtype == "float32"


# --------------------------------------------------------------------------- 2. parameter counts from headers

_HEAD_CLASSES = {
    "gpt2": "GPT2LMHeadModel",
    "t5": "T5ForConditionalGeneration",
    "bert_classifier": "BertForSequenceClassification",
    "bert_fill_mask": "BertForMaskedLM",
    "bert_token_classifier": "BertForTokenClassification",
    "bert_question_answering": "BertForQuestionAnswering",
    "bert_encoder": "BertModel",
    "sentence_transformer": "BertModel",
    "minilm": "BertModel",
}


@pytest.mark.parametrize("name", _TRANSFORMERS_MODELS)
def test_parameter_count_equals_loaded_models_unique_tensors(model_dirs: dict[str, Path], name: str) -> None:
    import transformers

    folder = model_dirs[name]
    facts = resolve_model(folder)
    model = getattr(transformers, _HEAD_CLASSES[name]).from_pretrained(folder)
    every, unique = _unique_state_dict_count(model)

    stored, stored_integer = _stored_counts(folder)
    assert facts.parameter_count_source == "safetensors headers"
    # The header count is the loaded model's parameter count (distinct storages, = parameters()):
    # each tied matrix once, and integer buffers the checkpoint happens to store left out (none
    # for the factory models; the real all-MiniLM-L6-v2 stores the 512-element int64
    # embeddings.position_ids).
    assert unique == sum(p.numel() for p in model.parameters())
    assert facts.parameter_count == unique == stored - stored_integer
    assert stored_integer == (512 if name == "minilm" else 0)
    if name in {"gpt2", "t5", "bert_fill_mask"}:
        # These tie their output head to the input embeddings: the raw state_dict sum counts the
        # shared matrix more than once, the stored (and reported) count only once.
        assert every > unique


def test_stable_diffusion_parameter_count_is_total_over_components(model_dirs: dict[str, Path]) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = model_dirs["stable_diffusion"]
    expected = 0
    for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"), (CLIPTextModel, "text_encoder")):
        _, unique = _unique_state_dict_count(cls.from_pretrained(folder, subfolder=sub))
        assert unique == _stored_parameter_count(folder / sub)
        expected += unique

    facts = resolve_model(folder)
    assert facts.parameter_count == expected
    assert facts.parameter_count_source == "safetensors headers"


# --------------------------------------------------------------------------- 3. config-only estimates

_GPT2_SMALL = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
}
_LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "vocab_size": 32000,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
# Grouped-query attention (Llama-3-8B shape): k/v projections are 4x narrower than q.
_LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
}


def _meta_parameter_count(folder: Path) -> int:
    """True parameter count: the model built on the meta device (no memory), tied weights once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # parameters() yields each distinct Parameter once, so GPT-2's tied lm_head/wte counts once.
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("config", "kv_heads"),
    [(_GPT2_SMALL, 12), (_LLAMA2_7B, 32), (_LLAMA3_8B, 8)],
    ids=["gpt2-small", "llama-2-7b", "llama-3-8b-gqa"],
)
def test_parameter_count_estimated_from_config_only(tmp_path: Path, config: dict[str, Any], kv_heads: int) -> None:
    folder = _write_config(tmp_path / "model", config)
    facts = resolve_model(folder)
    true_count = _meta_parameter_count(folder)

    # Only config.json exists: the count can only have come from the configuration.
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    assert "estimated" in facts.parameter_count_source
    assert facts.parameter_count is not None
    assert abs(facts.parameter_count - true_count) / true_count < 0.02, (facts.parameter_count, true_count)
    assert facts.num_kv_heads == kv_heads
    assert facts.dtype == "float32"
    assert facts.default_task == "text-generation"


def test_known_sizes_of_reference_shapes(tmp_path: Path) -> None:
    """Sanity anchor for the meta-device counts: GPT-2 small is 124.4M, Llama-2-7B is 6.74B."""
    assert _meta_parameter_count(_write_config(tmp_path / "g", _GPT2_SMALL)) == 124_439_808
    assert _meta_parameter_count(_write_config(tmp_path / "l", _LLAMA2_7B)) == 6_738_415_616


def test_no_estimate_without_shape(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m", {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    facts = resolve_model(folder)
    assert facts.parameter_count is None
    assert facts.parameter_count_source == "unknown"


# --------------------------------------------------------------------------- 4. dtype


def _gpt2_without_dtype(model_dirs: dict[str, Path], target: Path) -> Path:
    folder = _copy_model(model_dirs["gpt2"], target)
    config = _config(folder)
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    _write_config(folder, config)
    return folder


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"dtype": "bfloat16"}, "bfloat16"),
        ({"torch_dtype": "float16"}, "float16"),
        ({"torch_dtype": "torch.bfloat16"}, "bfloat16"),
        ({"torch_dtype": "fp16"}, "float16"),
        ({"dtype": "bfloat16", "torch_dtype": "float16"}, "bfloat16"),
    ],
)
def test_dtype_from_config(tmp_path: Path, model_dirs: dict[str, Path], entries: dict[str, str], expected: str) -> None:
    # The weights stay float32: the configuration's dtype wins over the header's.
    folder = _gpt2_without_dtype(model_dirs, tmp_path / "m")
    _write_config(folder, {**_config(folder), **entries})
    assert resolve_model(folder).dtype == expected


def test_dtype_from_safetensors_header_when_config_names_none(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    folder = _gpt2_without_dtype(model_dirs, tmp_path / "m")
    assert resolve_model(folder).dtype == "float32"  # float32 header
    tensors = load_file(str(folder / "model.safetensors"))
    half = {key: value.to(torch.float16) for key, value in tensors.items()}
    save_file(half, str(folder / "model.safetensors"), metadata={"format": "pt"})

    facts = resolve_model(folder)
    assert facts.dtype == "float16"
    assert facts.parameter_count == sum(t.numel() for t in tensors.values())


def test_dtype_is_the_dominant_header_dtype(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = _write_config(tmp_path / "m", {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    save_file(
        {"big": torch.zeros(100, 10, dtype=torch.bfloat16), "norm": torch.zeros(10, dtype=torch.float32)},
        str(folder / "model.safetensors"),
    )
    facts = resolve_model(folder)
    assert facts.dtype == "bfloat16"
    assert facts.parameter_count == 1010


def test_dtype_defaults_to_float32(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m", dict(_GPT2_SMALL))
    assert resolve_model(folder).dtype == "float32"


# --------------------------------------------------------------------------- 5. Hugging Face cache, offline

_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(cache: Path, repo_id: str, source: Path, commit: str = _COMMIT) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


def test_hub_id_resolved_from_local_cache(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    cache = tmp_path / "hub"
    snapshot = _fake_hub_cache(cache, "org/tiny", model_dirs["gpt2"])

    facts = resolve_model("org/tiny", cache_dir=cache)
    assert facts.ref.source is ModelSource.HUB
    assert facts.ref.reference == "org/tiny"
    assert facts.ref.name == "org/tiny"
    assert facts.name == "tiny"
    assert Path(facts.path) == snapshot
    assert Path(facts.ref.path) == snapshot
    assert facts.architecture == "GPT2LMHeadModel"
    assert facts.parameter_count == _stored_parameter_count(snapshot)
    # An explicit revision (the commit itself) finds the same snapshot.
    assert Path(resolve_model("org/tiny", cache_dir=cache, revision=_COMMIT).path) == snapshot


def test_hub_diffusion_pipeline_resolved_through_model_index(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    cache = tmp_path / "hub"
    snapshot = _fake_hub_cache(cache, "org/tiny-sd", model_dirs["stable_diffusion"])
    facts = resolve_model("org/tiny-sd", cache_dir=cache)
    assert Path(facts.path) == snapshot
    assert facts.is_diffusion


def test_hub_id_missing_from_cache(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "org/tiny", model_dirs["gpt2"])

    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("org/absent", cache_dir=cache)
    error = info.value
    assert "'org/absent'" in str(error)
    assert str(cache) in str(error)
    assert error.reference == "org/absent"
    assert error.cache_dir == str(cache)

    # A revision the cache does not hold is not found either.
    with pytest.raises(ModelNotFoundError):
        resolve_model("org/tiny", cache_dir=cache, revision="f" * 40)


@pytest.mark.parametrize("reference", ["gpt2", "org/name", "org/name-v1.5_x"])
def test_hub_id_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: str) -> None:
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    ref = ModelRef.parse(reference)
    assert ref.source is ModelSource.HUB
    assert ref.name == reference
    assert ref.path is None and ref.version is None


@pytest.mark.parametrize("reference", ["./gpt2", "org/name/extra", "~/no-such-model-folder", "bad id"])
def test_missing_paths_are_not_taken_for_hub_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        ModelRef.parse(reference)
    assert "does not exist" in str(info.value)
    assert info.value.reference == reference


# --------------------------------------------------------------------------- 6. azureml references


@pytest.mark.parametrize(
    ("reference", "name", "version", "label"),
    [
        ("azureml:my-model:3", "my-model", "3", None),
        ("azureml:my.model_v2:1.0", "my.model_v2", "1.0", None),
        ("azureml:my-model@latest", "my-model", None, "latest"),
        ("azureml:my-model@prod", "my-model", None, "prod"),
        ("azureml:my-model", "my-model", None, "latest"),
    ],
)
def test_azureml_reference_parsing(reference: str, name: str, version: str | None, label: str | None) -> None:
    ref = ModelRef.parse(reference)
    assert ref.source is ModelSource.AZUREML
    assert ref.reference == reference
    assert ref.name == name
    assert ref.version == version
    assert ref.label == label
    assert ref.path is None


@pytest.mark.parametrize("reference", ["azureml:bad name", "azureml:", "azureml:a:b:c", "azureml:x@"])
def test_malformed_azureml_reference(reference: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        ModelRef.parse(reference)
    assert "azureml:<name>:<version>" in str(info.value)
    assert info.value.reference == reference
    with pytest.raises(ModelNotFoundError):
        resolve_model(reference)


def test_azureml_reference_needs_config() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("azureml:my-model:3")
    assert "config=" in str(info.value)
    assert "'azureml:my-model:3'" in str(info.value)
    assert info.value.reference == "azureml:my-model:3"


def test_azureml_reference_with_local_config(model_dirs: dict[str, Path]) -> None:
    folder = model_dirs["bert_classifier"]
    for config in (folder, folder / "config.json"):
        facts = resolve_model("azureml:classifier:2", config=config)
        assert facts.ref.source is ModelSource.AZUREML
        assert facts.ref.reference == "azureml:classifier:2"
        assert facts.ref.version == "2"
        assert facts.name == "classifier"
        assert Path(facts.path) == folder
        assert facts.architecture == "BertForSequenceClassification"
        assert facts.default_task == "text-classification"


# --------------------------------------------------------------------------- 7. local path errors


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "model"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(missing)
    assert str(missing) in str(info.value)
    assert info.value.path == str(missing)
    with pytest.raises(ModelNotFoundError) as info:
        find_model_folder(missing)
    assert str(missing) in str(info.value)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    file = tmp_path / "weights.bin"
    file.write_bytes(b"\0" * 8)
    with pytest.raises(InvalidModelError) as info:
        resolve_model(file)
    assert "is a file" in str(info.value)
    assert info.value.path == str(file)


def test_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(InvalidModelError) as info:
        resolve_model(folder)
    assert "it is empty" in str(info.value)
    assert "config.json" in str(info.value)


def test_folder_without_config_lists_contents(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"")
    (folder / "vocab.txt").write_text("a\n")
    with pytest.raises(InvalidModelError) as info:
        resolve_model(folder)
    assert "it contains only pytorch_model.bin, vocab.txt" in str(info.value)


def test_broken_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2",', encoding="utf-8")
    with pytest.raises(InvalidModelError) as info:
        resolve_model(folder)
    assert "not valid JSON" in str(info.value)
    assert info.value.path == str(folder / "config.json")


def test_config_json_that_is_a_list(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m", [{"model_type": "gpt2"}])
    with pytest.raises(InvalidModelError) as info:
        resolve_model(folder)
    assert "JSON object" in str(info.value)


def test_config_naming_neither_architectures_nor_model_type(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m", {"hidden_size": 8})
    with pytest.raises(InvalidModelError) as info:
        resolve_model(folder)
    assert "'architectures'" in str(info.value) and "'model_type'" in str(info.value)


def test_unreadable_safetensors_file(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    folder = _copy_model(model_dirs["gpt2"], tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(InvalidModelError) as info:
        resolve_model(folder)
    assert "safetensors" in str(info.value)


def test_model_one_level_down(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    outer = tmp_path / "mount"
    outer.mkdir()
    inner = _copy_model(model_dirs["gpt2"], outer / "gpt2-registered")
    (outer / "README.md").write_text("not a model")

    assert find_model_folder(outer) == inner
    assert find_model_folder(inner) == inner
    facts = resolve_model(outer)
    assert facts.ref.source is ModelSource.LOCAL
    assert Path(facts.ref.path) == outer
    assert Path(facts.path) == inner
    assert facts.architecture == "GPT2LMHeadModel"


def test_two_models_one_level_down(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    outer = tmp_path / "mount"
    outer.mkdir()
    _copy_model(model_dirs["gpt2"], outer / "alpha")
    _copy_model(model_dirs["bert_encoder"], outer / "beta")
    with pytest.raises(InvalidModelError) as info:
        resolve_model(outer)
    assert "alpha" in str(info.value) and "beta" in str(info.value)
    assert info.value.candidates == [str(outer / "alpha"), str(outer / "beta")]


def test_model_two_levels_down_is_not_found(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    outer = tmp_path / "mount"
    (outer / "a").mkdir(parents=True)
    _copy_model(model_dirs["gpt2"], outer / "a" / "b")
    with pytest.raises(InvalidModelError) as info:
        find_model_folder(outer)
    assert "it contains only a" in str(info.value)


# --------------------------------------------------------------------------- 8. resolve_task


def test_resolve_task_default_and_fitting(model_dirs: dict[str, Path]) -> None:
    facts = resolve_model(model_dirs["gpt2"])
    assert resolve_task(facts) == "text-generation"
    assert resolve_task(facts, None) == "text-generation"
    assert resolve_task(facts, "feature-extraction") == "feature-extraction"


def test_resolve_task_that_does_not_fit(model_dirs: dict[str, Path]) -> None:
    facts = resolve_model(model_dirs["bert_classifier"])
    with pytest.raises(TaskMismatchError) as info:
        resolve_task(facts, "text-generation")
    error = info.value
    assert error.supported_tasks == ("text-classification", "feature-extraction")
    assert error.task == "text-generation"
    assert error.model == str(model_dirs["bert_classifier"])
    message = str(error)
    assert "'text-generation'" in message
    assert "BertForSequenceClassification" in message
    assert "text-classification, feature-extraction" in message


def test_resolve_unknown_task_lists_all_tasks(model_dirs: dict[str, Path]) -> None:
    facts = resolve_model(model_dirs["gpt2"])
    with pytest.raises(TaskMismatchError) as info:
        resolve_task(facts, "summarization")
    assert "'summarization'" in str(info.value)
    assert ", ".join(TASKS) in str(info.value)
    assert len(TASKS) == 8


def test_config_without_architectures_cannot_infer_task(tmp_path: Path) -> None:
    folder = _write_config(tmp_path / "m", {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "vocab_size": 10})
    facts = resolve_model(folder)
    assert facts.architecture is None
    assert facts.model_type == "gpt2"
    assert facts.default_task is None
    assert facts.supported_tasks == ()

    with pytest.raises(TaskMismatchError) as info:
        resolve_task(facts)
    assert "names no 'architectures'" in str(info.value)
    assert ", ".join(TASKS) in str(info.value)
    assert info.value.supported_tasks == TASKS
    # With an explicit task it is accepted: nothing contradicts it.
    assert resolve_task(facts, "text-generation") == "text-generation"


@pytest.mark.parametrize(
    "config",
    [
        {"architectures": ["BartModel"], "model_type": "bart", "is_encoder_decoder": True, "d_model": 16},
        {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": 16},
    ],
    ids=["BartModel", "ViTForImageClassification"],
)
def test_architecture_without_served_task(tmp_path: Path, config: dict[str, Any]) -> None:
    folder = _write_config(tmp_path / "m", config)
    facts = resolve_model(folder)
    assert facts.default_task is None
    assert facts.supported_tasks == ()
    with pytest.raises(TaskMismatchError) as info:
        resolve_task(facts)
    assert f"no served task matches its architecture {config['architectures'][0]}" in str(info.value)


def test_weight_variant_is_not_counted_twice(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    folder = _copy_model(model_dirs["gpt2"], tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({k: v.to(torch.float16) for k, v in tensors.items()}, str(folder / "model.fp16.safetensors"))
    facts = resolve_model(folder)
    assert facts.parameter_count == sum(t.numel() for t in tensors.values())


# --------------------------------------------------------------------------- 9. no torch / transformers import


def test_resolving_imports_neither_torch_nor_transformers(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "org/tiny", model_dirs["gpt2"])
    code = (
        "import sys, mii_azure\n"
        "from mii_azure import resolve_model, resolve_task\n"
        f"local = resolve_model({str(model_dirs['bert_classifier'])!r})\n"
        f"hub = resolve_model('org/tiny', cache_dir={str(cache)!r})\n"
        "print(resolve_task(local), resolve_task(hub), local.parameter_count)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()[-2:]
    assert first == f"text-classification text-generation {_stored_parameter_count(model_dirs['bert_classifier'])}"
    assert second == "False False"
