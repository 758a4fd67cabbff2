"""Shared pieces of the GPU tests: kernel-friendly tiny models, exact-length inputs, references, checks.

The models are built from configs with random weights (``torch.manual_seed(0)``), like
``tests/model_factory.py`` and with its tokenizers, but with shapes DeepSpeed's fused kernels are
written for: hidden size 256, 4 heads of 64, feed-forward 1024, 2 layers. They are saved in fp32;
the engine and the references load them in fp16.

Tolerances (used by every GPU test, stated once here):

* ``LOGITS_ATOL = 0.05``. Random-weight models of this size have logits of magnitude ~0.3-1.5, so a
  bug (a wrong mask, position or rotary convention, a stale KV cache) moves them by ~0.3 or more.
  fp16 keeps 11 significant bits (relative step 4.9e-4); a fused kernel rounds its intermediates
  (q/k/v, attention probabilities, activations) at other points than eager PyTorch and sums in
  another order, which over 2 layers and 256-wide dot products gives differences of ~1e-3 to 1e-2:
  measured on these very models (CPU, torch 2.13), Hugging Face fp16 against fp32 differ by at most
  0.0025 in decoder logits and 0.006 in encoder hidden states. 0.05 is 5x the upper end of that and
  6x below the smallest bug-sized change (two different inputs differ by 0.3 or more).
* ``TIE = 2 * LOGITS_ATOL``: each of two logits may be off by ``LOGITS_ATOL``, so a token the engine
  picks greedily may sit up to ``TIE`` below the reference's best one. Random weights give
  near-uniform logits, where the best two are often closer than that; greedy texts are therefore not
  compared for exact equality against another implementation, but each chosen token is checked to
  be (within ``TIE``) a greedy choice of the reference, given the same prefix ("teacher forcing").
"""

from __future__ import annotations

import base64
import gc
import io
import json
import os
import random
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

import model_factory

CUDA = torch.cuda.is_available()
#: What every GPU test module applies: the ``gpu`` marker, and a skip where torch sees no CUDA device.
GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not CUDA,
        reason="needs a CUDA GPU: on a GPU machine run `bash scripts/gpu_check.sh` (README, 'Verifying the GPU path')",
    ),
]

LOGITS_ATOL = 0.05
TIE = 2 * LOGITS_ATOL
HIDDEN, HEADS, FFN, LAYERS = 256, 4, 1024, 2
POSITIONS = 256

#: Decoder families: (transformers config class, model class, config fields).
DECODERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": FFN, "n_positions": POSITIONS}),
    # 2048 positions, as GPT-J, OPT and most served models have: more than DeepSpeed's default
    # per-sequence workspace (max_out_tokens=1024) unless the engine asks for more.
    "gpt2_2k": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": FFN, "n_positions": 2048}),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "ffn_dim": FFN,
         "max_position_embeddings": POSITIONS, "word_embed_proj_dim": HIDDEN, "do_layer_norm_before": True},
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
         "intermediate_size": FFN, "max_position_embeddings": POSITIONS},
    ),
    # Grouped-query attention (2 KV heads for 4 query heads), as Llama-2-70B and Llama-3 have.
    "llama_gqa": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": 2,
         "intermediate_size": FFN, "max_position_embeddings": POSITIONS},
    ),
    "bloom": ("BloomConfig", "BloomForCausalLM", {"hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": HEADS}),
    "gptj": (
        "GPTJConfig",
        "GPTJForCausalLM",
        {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": FFN, "rotary_dim": 64, "n_positions": POSITIONS,
         "tie_word_embeddings": False},
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "intermediate_size": FFN,
         "max_position_embeddings": POSITIONS},
    ),
}

#: Encoders: (transformers config class, model class, extra config fields).
_LABELS = ["negative", "neutral", "positive"]
ENCODERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert_fill_mask": ("BertConfig", "BertForMaskedLM", {}),
    "bert_encoder": ("BertConfig", "BertModel", {}),
    # Weights of 0.1 rather than 0.02: with 0.02 the [CLS] vector, and so every label's score, hardly
    # depends on the other tokens (two different texts score within 0.01 of each other), so a broken
    # attention kernel would go unnoticed; with 0.1 texts differ by ~0.6 in logits, 12x the tolerance.
    "bert_classifier": (
        "BertConfig",
        "BertForSequenceClassification",
        {"id2label": dict(enumerate(_LABELS)), "label2id": {label: index for index, label in enumerate(_LABELS)},
         "initializer_range": 0.1},
    ),
    # RoBERTa offsets positions by pad_token_id + 1, hence two more positions.
    "roberta_encoder": ("RobertaConfig", "RobertaModel", {"max_position_embeddings": 130, "type_vocab_size": 1}),
}
ENCODER_POSITIONS = 128

#: Prompts of different lengths (batched with left padding) and a prompt of one token.
PROMPTS = [
    "DeepSpeed is",
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of",
    "Hello world! This is a small test sentence, and",
]
MORE_PROMPTS = list(model_factory.CORPUS[4:12])


# --------------------------------------------------------------------------- models


def build_decoder(family: str, directory: Path) -> Path:
    """A tiny causal LM of ``family`` (a key of :data:`DECODERS`) with the GPT-2 BPE tokenizer."""
    import transformers
    from transformers import GenerationConfig

    config_name, model_name, fields = DECODERS[family]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    positions = fields.get("n_positions") or fields.get("max_position_embeddings") or POSITIONS
    tokenizer = model_factory._gpt2_tokenizer(model_max_length=positions)
    eos = tokenizer.eos_token_id
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **fields
    )
    torch.manual_seed(model_factory.SEED)
    model = getattr(transformers, model_name)(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_encoder(kind: str, directory: Path) -> Path:
    """A tiny BERT-family encoder (a key of :data:`ENCODERS`) with the factory's WordPiece tokenizer."""
    import transformers

    config_name, model_name, fields = ENCODERS[kind]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = model_factory._bert_tokenizer(directory, model_max_length=ENCODER_POSITIONS)
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": ENCODER_POSITIONS,
        "type_vocab_size": 2,
        "pad_token_id": tokenizer.pad_token_id,
    }
    settings.update(fields)
    torch.manual_seed(model_factory.SEED)
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(**settings)).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_stable_diffusion(directory: Path) -> Path:
    """A tiny Stable Diffusion pipeline (64x64 images) whose attention has 64-wide heads, as
    DeepSpeed's diffusers kernels expect (the factory's has 8-wide ones): UNet channels (64, 128) with
    2 heads in the cross-attention block, a 64-wide CLIP text encoder, the factory's CLIP tokenizer."""
    return model_factory.build_stable_diffusion(
        directory,
        unet_channels=(64, 128),
        attention_head_dim=2,  # diffusers reads this as the number of heads: 128 channels / 2 = 64 per head
        vae_channels=(64, 64),
        hidden_size=64,
        text_heads=1,
        text_intermediate_size=256,
    )


# --------------------------------------------------------------------------- inputs


def single_token_words(tokenizer: Any) -> list[str]:
    """Words of the WordPiece vocabulary that the tokenizer keeps as one token."""
    words = [w for w in model_factory._bert_vocab() if w.isalpha() and len(w) > 1 and not w.startswith("##")]
    return [w for w in words if len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]


def texts_of_lengths(tokenizer: Any, lengths: Sequence[int], seed: int, *, mask: bool = False) -> list[str]:
    """One text per entry of ``lengths``, each exactly that many tokens long with [CLS] and [SEP];
    with ``mask``, one word of each replaced by the mask token."""
    words = single_token_words(tokenizer)
    rng = random.Random(seed)
    texts = []
    for length in lengths:
        chosen = [rng.choice(words) for _ in range(length - 2)]
        if mask:
            chosen[rng.randrange(len(chosen))] = tokenizer.mask_token
        text = " ".join(chosen)
        got = len(tokenizer(text)["input_ids"])
        if got != length:
            raise AssertionError(f"built a text of {got} tokens instead of {length}: {text!r}")
        texts.append(text)
    return texts


def text_of_tokens(tokenizer: Any, count: int) -> str:
    """Corpus text that the (GPT-2 BPE) tokenizer turns into exactly ``count`` tokens."""
    ids: list[int] = []
    index = 0
    while len(ids) < count + 16:
        ids += tokenizer(" " + model_factory.CORPUS[index % len(model_factory.CORPUS)])["input_ids"]
        index += 1
    for cut in range(count, count + 16):
        text = tokenizer.decode(ids[:cut])
        if len(tokenizer(text)["input_ids"]) == count:
            return text
    raise AssertionError(f"no corpus text of exactly {count} tokens")


def batch_lengths(batch: int, longest: int, seed: int) -> list[int]:
    """``batch`` lengths, the first ``longest`` and the others shorter, so that batches are padded."""
    rng = random.Random(seed)
    return [longest] + [rng.randint(min(5, longest), longest) for _ in range(batch - 1)]


# --------------------------------------------------------------------------- engines and references


def deadline(seconds: float = 120.0) -> Any:
    from mii_azure.tasks.base import Deadline

    return Deadline(seconds)


def request(inputs: Sequence[Any], parameters: Any) -> Any:
    from mii_azure.tasks.base import ScoringRequest

    return ScoringRequest(inputs=list(inputs), parameters=parameters)


def reset_deepspeed_process_state() -> None:
    """Make the next kernel-injected model start as in a fresh serving process.

    DeepSpeed numbers injected layers with class-level counters and keeps one KV-cache workspace per
    process; ``InferenceEngine.destroy()`` resets them, but the engine keeps only the injected module,
    so a second model in one process would get layer ids 2, 3... and the first model's workspace.
    A serving process holds one engine; these tests load many, so they reset between models.
    """
    try:
        from deepspeed.model_implementations.transformers.ds_transformer import DeepSpeedTransformerInference
        from deepspeed.ops.transformer.inference.ds_attention import DeepSpeedSelfAttention
    except ImportError:
        return
    DeepSpeedTransformerInference.layer_id = 0
    DeepSpeedSelfAttention.num_layers = 0
    workspace = DeepSpeedTransformerInference.workspace
    if workspace is not None and getattr(workspace, "is_allocated", lambda: False)():
        workspace.release_workspace()
    DeepSpeedTransformerInference.workspace = None


def free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def reference_task(engine: Any, model_dir: Path, *, device: str = "cuda", dtype: str = "float16") -> Any:
    """The engine's task class loaded from the same folder as Hugging Face eager fp16 on the GPU,
    with no plan applied: the same request handling around the unoptimized model."""
    from mii_azure.models import find_model_folder
    from mii_azure.tasks import get_task
    from mii_azure.tasks.base import LoadOptions

    folder = find_model_folder(Path(model_dir))
    return get_task(engine.task_name).load(folder, engine.facts, engine.settings, LoadOptions(device=device, dtype=dtype))


def deepspeed_module_types(*roots: Any) -> Counter:
    """Class names of the modules under ``roots`` that DeepSpeed put there (its injected kernels)."""
    found: Counter = Counter()
    for root in roots:
        if not isinstance(root, torch.nn.Module):
            continue
        for module in root.modules():
            if type(module).__module__.startswith("deepspeed."):
                found[type(module).__name__] += 1
    return found


def injected_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """DeepSpeed's fused transformer layers (``DeepSpeedTransformerInference`` and subclasses:
    ``DeepSpeedGPTInference``, ``DeepSpeedBERTInference``...) in ``model``."""
    from deepspeed.model_implementations.transformers.ds_transformer import DeepSpeedTransformerInference

    return [module for module in model.modules() if isinstance(module, DeepSpeedTransformerInference)]


def unwrap(model: Any) -> Any:
    """The module a CUDA-graph wrapper holds (or ``model`` itself)."""
    inner = getattr(model, "_modules", {}).get("module") if type(model).__name__ == "GraphedModule" else None
    return inner if inner is not None else model


# --------------------------------------------------------------------------- generation checks


def cut_at_eos(tokens: Sequence[int], eos_ids: set[int]) -> list[int]:
    """Generated tokens up to and including the first end-of-text (what generate really chose)."""
    kept = []
    for token in tokens:
        kept.append(int(token))
        if token in eos_ids:
            break
    return kept


def prompt_ids(task: Any, prompt: str) -> torch.Tensor:
    return task.tokenizer(prompt, return_tensors="pt")["input_ids"].to(task.device)


def reference_logits(reference: Any, prompt: str, continuation: Sequence[int]) -> torch.Tensor:
    """The reference model's fp32 logits for each position of ``continuation`` after ``prompt``,
    unpadded and in one pass: row i scores the choice of ``continuation[i]``."""
    ids = prompt_ids(reference, prompt)
    tail = torch.tensor([list(continuation)], dtype=ids.dtype, device=ids.device)
    sequence = torch.cat([ids, tail], dim=1)
    with torch.inference_mode():
        logits = reference.model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits[0].float()
    start = ids.shape[1] - 1
    return logits[start : start + len(continuation)]


def generate_with_logits(task: Any, prompts: Sequence[str], parameters: Any) -> tuple[list[list[int]], torch.Tensor]:
    """The task's own ``generate`` call (``run_generate``'s inputs and keyword arguments) that also
    returns the logits of every step: the new tokens of each prompt, and a (prompt, step, vocabulary)
    tensor of fp32 logits."""
    encoded = task.encode(list(prompts))
    with torch.inference_mode():
        output = task.model.generate(
            **encoded, **task.generate_kwargs(parameters, deadline()), output_logits=True, return_dict_in_generate=True
        )
    rows = output.sequences[:, encoded["input_ids"].shape[1] :].tolist()
    return rows, torch.stack(output.logits, dim=1).float()


def greedy_gap(reference: Any, prompt: str, tokens: Sequence[int]) -> tuple[float, int]:
    """Teacher forcing: how far below the reference's best logit each chosen token lies (the worst,
    and where). 0 means the reference would have chosen the same token at every step."""
    if not tokens:
        return 0.0, -1
    logits = reference_logits(reference, prompt, tokens)
    chosen = logits.gather(1, torch.tensor(list(tokens), device=logits.device)[:, None]).squeeze(1)
    gaps = logits.max(dim=1).values - chosen
    worst = int(gaps.argmax())
    return float(gaps[worst]), worst


def tie_or_mismatch(reference: Any, prompt: str, first: Sequence[int], second: Sequence[int]) -> Optional[str]:
    """None when two greedy continuations are equal, or first differ where the reference scores both
    tokens within :data:`TIE` of each other (a numerical tie, which fp16 GEMMs of different shapes
    may break either way); else what differs."""
    first, second = list(first), list(second)
    if first == second:
        return None
    position = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
    if position >= min(len(first), len(second)):
        return f"one answer stops early at token {position}: {first} vs {second}"
    logits = reference_logits(reference, prompt, first[: position + 1])[position]
    gap = abs(float(logits[first[position]] - logits[second[position]]))
    if gap <= TIE:
        return None
    return (
        f"answers differ at new token {position} ({first[position]} vs {second[position]}), where the reference "
        f"scores them {gap:.3f} apart (more than the tie tolerance {TIE}): {first} vs {second}"
    )


@contextmanager
def recorded_generations(task: Any) -> Iterator[list[tuple[list[str], list[list[int]]]]]:
    """Record the new token ids of every ``generate`` call of ``task`` (one entry per batch:
    its prompts and one list of new ids per prompt). ``predict`` calls ``run_generate``."""
    records: list[tuple[list[str], list[list[int]]]] = []
    lock = threading.Lock()
    original = task.run_generate

    def recording(inputs: list[str], parameters: Any, deadline: Any) -> Any:
        input_ids, output = original(inputs, parameters, deadline)
        new = output[:, input_ids.shape[1] :].tolist()
        with lock:
            records.append((list(inputs), new))
        return input_ids, output

    task.run_generate = recording
    try:
        yield records
    finally:
        del task.run_generate


def new_tokens_by_prompt(records: list[tuple[list[str], list[list[int]]]], eos_ids: set[int]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for inputs, rows in records:
        for prompt, row in zip(inputs, rows):
            found[prompt] = cut_at_eos(row, eos_ids)
    return found


# --------------------------------------------------------------------------- images


def decode_png(entry: dict[str, Any]) -> Any:
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(entry["image_png_base64"])))
    return np.asarray(image.convert("RGB"), dtype="float32")


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    """One JSON line per finding in the file named by ``MII_GPU_REPORT`` (appended, so that pytest-xdist
    workers can share it); the terminal summary and scripts/gpu_check.sh read it back."""

    path: Path

    def add(self, test: str, **facts: Any) -> None:
        line = json.dumps({"test": test, **facts}, default=str)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def report_path(default_dir: Path) -> Path:
    return Path(os.environ.get("MII_GPU_REPORT") or default_dir / "gpu_report.jsonl")
