"""Resolve a model reference to the facts the SDK plans with, without loading any weight.

A reference is one of:

* a local folder holding a Hugging Face model (``config.json``) or diffusers pipeline
  (``model_index.json``);
* a Hugging Face hub id (``gpt2``, ``org/name``), looked up in the local Hugging Face cache only:
  nothing is downloaded;
* an Azure ML registered model, ``azureml:name:version`` (or ``azureml:name@label``), which is
  recorded for the Azure target; its configuration can be read from a local copy (``config=``).

Only configuration files and safetensors headers are read. This module imports neither torch nor
transformers.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict

from .errors import InvalidModelError, ModelNotFoundError, TaskMismatchError

__all__ = [
    "ModelSource",
    "ModelRef",
    "ModelFacts",
    "TASKS",
    "resolve_model",
    "resolve_task",
    "find_model_folder",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Every task the SDK serves, in the order the documentation lists them.
TASKS: tuple[str, ...] = (
    "text-generation",
    "text2text-generation",
    "text-classification",
    "fill-mask",
    "token-classification",
    "question-answering",
    "feature-extraction",
    "text-to-image",
)

CONFIG_FILE = "config.json"
PIPELINE_INDEX_FILE = "model_index.json"
SENTENCE_TRANSFORMERS_FILE = "modules.json"

# Architecture class-name suffixes and the task each head serves, most specific first.
_HEAD_TASKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ForCausalLM", ("text-generation",)),
    ("LMHeadModel", ("text-generation",)),
    ("ForSequenceClassification", ("text-classification",)),
    ("ForTokenClassification", ("token-classification",)),
    ("ForQuestionAnswering", ("question-answering",)),
    ("ForMaskedLM", ("fill-mask",)),
    ("ForPreTraining", ("fill-mask",)),
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_AZUREML_REF = re.compile(r"^azureml:(?P<name>[\w.\-]+)(?::(?P<version>[\w.\-]+)|@(?P<label>[\w.\-]+))?$")
# A model in an Azure ML registry, used by deployments as it is written.
_REGISTRY_REF = re.compile(
    r"^azureml://registries/(?P<registry>[\w.\-]+)/models/(?P<name>[\w.\-]+)"
    r"(?:/versions/(?P<version>[\w.\-]+)|/labels/(?P<label>[\w.\-]+))?$"
)

# Config keys that different architectures use for the same fact.
_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim", "embed_dim"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads"),
    "num_kv_heads": ("num_key_value_heads", "n_head_kv", "num_kv_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "hidden_dim", "encoder_ffn_dim"),
    "max_positions": ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
}
_DTYPE_NAMES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
_BUFFER_DTYPES = {"I64", "I32", "I16", "U8", "BOOL"}
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I8": "int8"}


class ModelSource(str, Enum):
    """Where a model reference points."""

    LOCAL = "local"
    HUB = "hub"
    AZUREML = "azureml"


class ModelRef(BaseModel):
    """A parsed model reference: what the user wrote, and what it names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reference: str
    source: ModelSource
    name: str
    version: Optional[str] = None
    label: Optional[str] = None
    path: Optional[str] = None

    @classmethod
    def parse(cls, reference: PathLike) -> "ModelRef":
        """Parse ``reference``; raises ModelNotFoundError for something that names nothing."""
        text = os.fspath(reference)
        match = _AZUREML_REF.match(text)
        if text.startswith("azureml://"):
            registry = _REGISTRY_REF.match(text)
            if not registry:
                raise ModelNotFoundError(
                    f"{text!r} is not a valid Azure ML registry model reference; write "
                    "azureml://registries/<registry>/models/<name>/versions/<version> (or .../labels/latest).",
                    reference=text,
                )
            label = registry["label"] or (None if registry["version"] else "latest")
            return cls(reference=text, source=ModelSource.AZUREML, name=registry["name"], version=registry["version"], label=label)
        if text.startswith("azureml:"):
            if not match:
                raise ModelNotFoundError(
                    f"{text!r} is not a valid Azure ML model reference; write azureml:<name>:<version> "
                    "or azureml:<name>@latest.",
                    reference=text,
                )
            label = match["label"] or (None if match["version"] else "latest")
            return cls(
                reference=text,
                source=ModelSource.AZUREML,
                name=match["name"],
                version=match["version"],
                label=label,
            )
        path = Path(text).expanduser()
        if path.exists():
            return cls(reference=text, source=ModelSource.LOCAL, name=path.resolve().name, path=str(path.resolve()))
        if _looks_like_path(text) or not _HUB_ID.match(text):
            raise ModelNotFoundError(
                f"No model folder at {str(path)!r}: the path does not exist. Check the path, or pass a "
                "Hugging Face hub id such as 'gpt2' or an Azure ML reference such as 'azureml:my-model:1'.",
                reference=text,
                path=str(path),
            )
        return cls(reference=text, source=ModelSource.HUB, name=text)


class ModelFacts(BaseModel):
    """What the SDK knows about a model from its configuration alone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: ModelRef
    path: Optional[str] = None
    architecture: Optional[str] = None
    model_type: Optional[str] = None
    is_encoder_decoder: bool = False
    is_diffusion: bool = False
    parameter_count: Optional[int] = None
    parameter_count_source: str = "unknown"
    dtype: str = "float32"
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    intermediate_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_kv_heads: Optional[int] = None
    vocab_size: Optional[int] = None
    max_positions: Optional[int] = None
    components: dict[str, str] = {}
    sentence_transformers: bool = False
    config_source: str = "config.json"
    default_task: Optional[str] = None
    supported_tasks: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """A short name for the model, usable in deployment names."""
        return self.ref.name.rsplit("/", 1)[-1]


def resolve_model(
    reference: PathLike,
    *,
    config: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    revision: Optional[str] = None,
) -> ModelFacts:
    """Resolve ``reference`` to :class:`ModelFacts`, reading configuration only.

    ``config`` points at a local folder or ``config.json`` to read facts from when the reference
    itself cannot be read here (an ``azureml:`` reference). A hub id that is not in the local cache
    but is one of the well-known models of :mod:`mii_azure.known_models` resolves from that catalog
    (``facts.config_source`` says so); its weights are not at hand. ``cache_dir`` and ``revision`` select
    the Hugging Face cache and snapshot for hub ids.
    """
    ref = ModelRef.parse(reference)
    if config is not None:
        config_path = Path(config).expanduser()
        folder = config_path.parent if config_path.is_file() else config_path
        return _facts_from_folder(ref, find_model_folder(folder))
    if ref.source is ModelSource.AZUREML:
        raise ModelNotFoundError(
            f"The configuration of the Azure ML model {ref.reference!r} cannot be read on this machine. "
            "Pass config= a local folder (or config.json) with the same configuration, or deploy it with "
            "an explicit task=.",
            reference=ref.reference,
        )
    if ref.source is ModelSource.HUB:
        try:
            folder = _hub_snapshot_folder(ref.name, cache_dir=cache_dir, revision=revision)
        except ModelNotFoundError:
            from .known_models import known_model_facts

            known = known_model_facts(ref)
            if known is None:
                raise
            return known
        return _facts_from_folder(ref.model_copy(update={"path": str(folder)}), folder)
    return _facts_from_folder(ref, find_model_folder(Path(ref.path or ref.reference)))


def resolve_task(facts: ModelFacts, task: Optional[str] = None) -> str:
    """The task to serve: ``task`` checked against the model, or the one its configuration implies."""
    if task is None:
        if facts.default_task is None:
            raise TaskMismatchError(
                f"Cannot infer the task of {facts.ref.reference!r}: {_why_no_task(facts)}. "
                f"Pass task= one of: {', '.join(facts.supported_tasks or TASKS)}.",
                model=facts.ref.reference,
                task=None,
                supported_tasks=facts.supported_tasks or TASKS,
            )
        return facts.default_task
    if task not in TASKS:
        raise TaskMismatchError(
            f"Unknown task {task!r}. Supported tasks: {', '.join(TASKS)}.",
            model=facts.ref.reference,
            task=task,
            supported_tasks=facts.supported_tasks,
        )
    if facts.supported_tasks and task not in facts.supported_tasks:
        raise TaskMismatchError(
            f"Task {task!r} does not fit {facts.ref.reference!r} ({facts.architecture or facts.model_type}); "
            f"tasks that would: {', '.join(facts.supported_tasks)}.",
            model=facts.ref.reference,
            task=task,
            supported_tasks=facts.supported_tasks,
        )
    return task


def find_model_folder(folder: Path) -> Path:
    """The folder holding ``config.json`` or ``model_index.json``: ``folder`` itself or one level down.

    Azure ML mounts a registered model folder under its own name inside ``AZUREML_MODEL_DIR``, so
    the configuration may sit one level below the folder given.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ModelNotFoundError(
            f"Model folder {str(folder)!r} does not exist. Check the path (for Azure ML, the model's "
            "registered files are mounted under AZUREML_MODEL_DIR).",
            path=str(folder),
        )
    if not folder.is_dir():
        raise InvalidModelError(f"{str(folder)!r} is a file, not a model folder.", path=str(folder))
    if _has_config(folder):
        return folder
    children = sorted(child for child in folder.iterdir() if child.is_dir() and _has_config(child))
    if len(children) == 1:
        return children[0]
    if len(children) > 1:
        names = ", ".join(child.name for child in children)
        raise InvalidModelError(
            f"Model folder {str(folder)!r} holds several models ({names}); point at one of them.",
            path=str(folder),
            candidates=[str(child) for child in children],
        )
    contents = sorted(entry.name for entry in folder.iterdir())[:10]
    what = f"it contains only {', '.join(contents)}" if contents else "it is empty"
    raise InvalidModelError(
        f"Model folder {str(folder)!r} has no {CONFIG_FILE} (transformers) or {PIPELINE_INDEX_FILE} "
        f"(diffusers), directly or one level down: {what}. Save the model with save_pretrained() there.",
        path=str(folder),
    )


def _has_config(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() or (folder / PIPELINE_INDEX_FILE).is_file()


def _looks_like_path(text: str) -> bool:
    """Hub ids have at most one '/', so anything else that names no folder was meant as a path."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def _hub_snapshot_folder(repo_id: str, *, cache_dir: Optional[PathLike], revision: Optional[str]) -> Path:
    """The cached snapshot folder of ``repo_id``; never downloads."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    for filename in (CONFIG_FILE, PIPELINE_INDEX_FILE):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache), revision=revision)
        if isinstance(found, str):
            return Path(found).parent
    raise ModelNotFoundError(
        f"Model {repo_id!r} is not in the local Hugging Face cache at {str(cache)!r} and nothing is "
        f"downloaded at run time. Download it once with `huggingface-cli download {repo_id}` on a machine "
        "with access (and copy the cache, or set HF_HUB_CACHE), or pass the path of a local folder.",
        reference=repo_id,
        cache_dir=str(cache),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidModelError(
            f"{str(path)!r} is not valid JSON ({exc}). Re-save the model with save_pretrained().",
            path=str(path),
        ) from None
    if not isinstance(data, dict):
        raise InvalidModelError(f"{str(path)!r} must hold a JSON object.", path=str(path))
    return data


def _facts_from_folder(ref: ModelRef, folder: Path) -> ModelFacts:
    if (folder / PIPELINE_INDEX_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
        index = _read_json(folder / PIPELINE_INDEX_FILE)
        counts = {name: _count_safetensors(folder / name) for name in _pipeline_components(index)}
        unet_config = folder / "unet" / CONFIG_FILE
        sample_size = _read_json(unet_config).get("sample_size") if unet_config.is_file() else None
        return pipeline_facts(ref, index, counts, sample_size=sample_size, path=folder)
    config = _read_json(folder / CONFIG_FILE)
    if not config.get("architectures") and not config.get("model_type"):
        raise InvalidModelError(
            f"{str(folder / CONFIG_FILE)!r} names neither 'architectures' nor 'model_type', so it is not a "
            "transformers model configuration. Re-save the model with save_pretrained().",
            path=str(folder),
        )
    return config_facts(
        ref,
        config,
        path=folder,
        weights=_count_safetensors(folder),
        sentence_transformers=(folder / SENTENCE_TRANSFORMERS_FILE).is_file(),
    )


def config_facts(
    ref: ModelRef,
    config: dict[str, Any],
    *,
    path: Optional[Path] = None,
    weights: tuple[Optional[int], str, Optional[str]] = (None, "unknown", None),
    sentence_transformers: bool = False,
    config_source: str = "config.json",
) -> ModelFacts:
    """Facts of a transformers model from its configuration (and its weights' headers, if counted)."""
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures and isinstance(architectures[0], str) else None
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    numbers = {fact: _first_int(config, text_config, keys) for fact, keys in _ALIASES.items()}
    if numbers["num_kv_heads"] is None:
        numbers["num_kv_heads"] = 1 if config.get("multi_query") else numbers["num_attention_heads"]
    numbers["max_positions"] = _max_positions(config, numbers["max_positions"])
    is_encoder_decoder = bool(config.get("is_encoder_decoder"))
    supported = _supported_tasks(architecture, is_encoder_decoder)
    default_task = "feature-extraction" if sentence_transformers else (supported[0] if supported else None)
    param_count, param_source, header_dtype = weights
    if param_count is None:
        param_count = _estimate_parameters(config, numbers, is_encoder_decoder)
        param_source = "estimated from the configuration" if param_count else "unknown"
    return ModelFacts(
        ref=ref,
        path=str(path) if path else None,
        config_source=config_source,
        architecture=architecture,
        model_type=config.get("model_type"),
        is_encoder_decoder=is_encoder_decoder,
        parameter_count=param_count,
        parameter_count_source=param_source,
        dtype=_config_dtype(config) or header_dtype or "float32",
        sentence_transformers=sentence_transformers,
        default_task=default_task,
        supported_tasks=supported,
        **numbers,
    )


def pipeline_facts(
    ref: ModelRef,
    index: dict[str, Any],
    counts: dict[str, tuple[Optional[int], str, Optional[str]]],
    *,
    sample_size: Optional[int] = None,
    path: Optional[Path] = None,
    config_source: str = PIPELINE_INDEX_FILE,
    count_source: str = "safetensors headers",
) -> ModelFacts:
    """Facts of a diffusers pipeline from its ``model_index.json`` and per-component counts."""
    pipeline_class = str(index.get("_class_name", ""))
    components = _pipeline_components(index)
    text_to_image = pipeline_class.endswith("Pipeline") and not any(
        word in pipeline_class for word in ("Img2Img", "Inpaint", "Upscale", "Depth", "Video")
    )
    denoiser = "unet" in components or "transformer" in components
    supported = ("text-to-image",) if text_to_image and denoiser else ()
    total, dtype = 0, None
    for name in components:  # tokenizers and schedulers have no weights and count nothing
        count, _, component_dtype = counts.get(name, (None, "unknown", None))
        total += count or 0
        dtype = dtype or component_dtype
    return ModelFacts(
        ref=ref,
        path=str(path) if path else None,
        config_source=config_source,
        architecture=pipeline_class or None,
        model_type="diffusion-pipeline",
        is_diffusion=True,
        parameter_count=total or None,
        parameter_count_source=count_source if total else "unknown",
        dtype=dtype or "float32",
        max_positions=sample_size if isinstance(sample_size, int) else None,
        components=components,
        default_task=supported[0] if supported else None,
        supported_tasks=supported,
    )


def _pipeline_components(index: dict[str, Any]) -> dict[str, str]:
    return {
        name: value[1]
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1]
    }


def _supported_tasks(architecture: Optional[str], is_encoder_decoder: bool) -> tuple[str, ...]:
    if architecture is None:
        return ()
    if architecture.endswith("ForConditionalGeneration") and is_encoder_decoder:
        return ("text2text-generation",)
    for suffix, tasks in _HEAD_TASKS:
        if architecture.endswith(suffix):
            return tasks + ("feature-extraction",)
    if architecture.endswith("Model") and not is_encoder_decoder:
        return ("feature-extraction",)
    return ()


def _why_no_task(facts: ModelFacts) -> str:
    if facts.architecture is None:
        return "its config.json names no 'architectures', so the model's head is unknown"
    return f"no served task matches its architecture {facts.architecture}"


def _first_int(config: dict[str, Any], fallback: dict[str, Any], keys: tuple[str, ...]) -> Optional[int]:
    for source in (config, fallback):
        for key in keys:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _max_positions(config: dict[str, Any], found: Optional[int]) -> Optional[int]:
    """Positions the model can attend over; None where it has no fixed limit (ALiBi, relative)."""
    if config.get("model_type") in {"bloom", "t5", "mt5", "umt5"} and not config.get("max_position_embeddings"):
        return None
    return found


def _config_dtype(config: dict[str, Any]) -> Optional[str]:
    value = config.get("dtype") or config.get("torch_dtype")
    if not isinstance(value, str):
        return None
    value = value.replace("torch.", "")
    return _DTYPE_NAMES.get(value, value)


def _count_safetensors(folder: Path) -> tuple[Optional[int], str, Optional[str]]:
    """Parameters and dominant dtype from safetensors headers (a few KB read per file).

    Integer buffers (position ids) are not parameters; of several weight variants side by side
    (``model.safetensors`` and ``model.fp16.safetensors``) only one is counted, the plain one first.
    """
    files = _one_weight_variant(sorted(folder.glob("*.safetensors"))) if folder.is_dir() else []
    if not files:
        return None, "unknown", None
    total = 0
    dtypes: Counter[str] = Counter()
    for file in files:
        try:
            with file.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
        except (OSError, ValueError, struct.error) as exc:
            raise InvalidModelError(
                f"{str(file)!r} is not a readable safetensors file ({exc}).", path=str(file)
            ) from None
        for name, tensor in header.items():
            if name == "__metadata__" or tensor.get("dtype") in _BUFFER_DTYPES:
                continue
            count = 1
            for dim in tensor.get("shape", []):
                count *= dim
            total += count
            dtypes[_SAFETENSORS_DTYPES.get(tensor.get("dtype", ""), "float32")] += count
    dominant = dtypes.most_common(1)[0][0] if dtypes else None
    return total, "safetensors headers", dominant


def _one_weight_variant(files: list[Path]) -> list[Path]:
    """The files of one variant: those without a variant suffix if any, else the first variant's."""
    variants: dict[str, list[Path]] = {}
    for file in files:
        variants.setdefault(file.stem.partition(".")[2], []).append(file)
    if not variants:
        return []
    return variants.get("") or variants[sorted(variants)[0]]


def _estimate_parameters(
    config: dict[str, Any], numbers: dict[str, Optional[int]], is_encoder_decoder: bool
) -> Optional[int]:
    """Parameter count of a standard transformer from its shape (within a few percent)."""
    hidden, layers, vocab = numbers["hidden_size"], numbers["num_layers"], numbers["vocab_size"]
    if not (hidden and layers and vocab):
        return None
    heads = numbers["num_attention_heads"] or 1
    kv_heads = numbers["num_kv_heads"] or heads
    ffn = numbers["intermediate_size"] or 4 * hidden
    gated = str(config.get("hidden_act", config.get("activation_function", ""))).lower() in {"silu", "swiglu"}
    head_dim = hidden // heads
    attention = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim
    mlp = (3 if gated else 2) * hidden * ffn
    per_layer = attention + mlp + 4 * hidden
    stacks = 2 if is_encoder_decoder else 1
    embeddings = vocab * hidden
    if numbers["max_positions"] and config.get("position_embedding_type", "absolute") == "absolute":
        if config.get("model_type") not in {"llama", "mistral", "gpt_neox", "gptj", "falcon", "qwen2", "bloom"}:
            embeddings += numbers["max_positions"] * hidden
    untied = config.get("tie_word_embeddings") is False
    return stacks * layers * per_layer + embeddings * (2 if untied else 1)
