"""Configuration facts (never weights) of well-known models, so they can be planned and costed offline.

These are the families of the DeepSpeed-MII results. Each entry holds the fields of the model's
published ``config.json`` that planning needs; parameter counts are then estimated from the shape
(within a fraction of a percent of the published totals for these models), except for the Stable
Diffusion pipeline, whose per-component sizes are the published ones.
"""

from __future__ import annotations

from typing import Any, Optional

from .models import ModelFacts, ModelRef, ModelSource, config_facts, pipeline_facts

__all__ = ["KNOWN_MODELS", "known_model_facts", "CATALOG_NOTE"]

CATALOG_NOTE = "catalog of well-known models shipped with mii_azure (configuration only, no weights)"

_BLOOM = {"architectures": ["BloomForCausalLM"], "model_type": "bloom", "vocab_size": 250880}
_OPT = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "vocab_size": 50272, "max_position_embeddings": 2048, "torch_dtype": "float16"}
_LLAMA2 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}

#: Hub id (lower case) -> config fields.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    # BLOOM's published configs declare no dtype.
    "bigscience/bloom": {**_BLOOM, "hidden_size": 14336, "n_layer": 70, "n_head": 112},
    "bigscience/bloom-7b1": {**_BLOOM, "hidden_size": 4096, "n_layer": 30, "n_head": 32},
    "eleutherai/gpt-j-6b": {
        "architectures": ["GPTJForCausalLM"],
        "model_type": "gptj",
        "n_embd": 4096,
        "n_layer": 28,
        "n_head": 16,
        "n_positions": 2048,
        "vocab_size": 50400,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    },
    "eleutherai/gpt-neox-20b": {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": 6144,
        "num_hidden_layers": 44,
        "num_attention_heads": 64,
        "intermediate_size": 24576,
        "max_position_embeddings": 2048,
        "vocab_size": 50432,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    },
    "facebook/opt-30b": {**_OPT, "hidden_size": 7168, "ffn_dim": 28672, "num_hidden_layers": 48, "num_attention_heads": 56},
    "facebook/opt-66b": {**_OPT, "hidden_size": 9216, "ffn_dim": 36864, "num_hidden_layers": 64, "num_attention_heads": 72},
    "meta-llama/llama-2-7b-hf": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "meta-llama/llama-2-13b-hf": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40},
    "meta-llama/llama-2-70b-hf": {**_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8},
    "bert-base-uncased": {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "vocab_size": 30522,
    },
    "roberta-base": {
        "architectures": ["RobertaForMaskedLM"],
        "model_type": "roberta",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
        "vocab_size": 50265,
    },
}

_ALIASES = {
    "bloom": "bigscience/bloom",
    "bloom-7b1": "bigscience/bloom-7b1",
    "gpt-j-6b": "eleutherai/gpt-j-6b",
    "gpt-neox-20b": "eleutherai/gpt-neox-20b",
    "opt-30b": "facebook/opt-30b",
    "opt-66b": "facebook/opt-66b",
    "meta-llama/llama-2-7b-chat-hf": "meta-llama/llama-2-7b-hf",
    "meta-llama/llama-2-13b-chat-hf": "meta-llama/llama-2-13b-hf",
    "meta-llama/llama-2-70b-chat-hf": "meta-llama/llama-2-70b-hf",
    "google-bert/bert-base-uncased": "bert-base-uncased",
    "facebookai/roberta-base": "roberta-base",
}

_STABLE_DIFFUSION_IDS = {"runwayml/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5"}
_STABLE_DIFFUSION_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
}
# Published component sizes of Stable Diffusion v1.5 (parameters).
_STABLE_DIFFUSION_COUNTS = {
    "unet": 859_520_964,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "safety_checker": 303_956_880,
}


def known_model_facts(ref: ModelRef) -> Optional[ModelFacts]:
    """Facts of a well-known hub model from the shipped catalog; None if it is not in it."""
    if ref.source is not ModelSource.HUB:
        return None
    key = ref.name.lower()
    key = _ALIASES.get(key, key)
    if key in KNOWN_MODELS:
        return config_facts(ref, KNOWN_MODELS[key], config_source=CATALOG_NOTE)
    if key in _STABLE_DIFFUSION_IDS:
        counts = {name: (count, "published", "float32") for name, count in _STABLE_DIFFUSION_COUNTS.items()}
        return pipeline_facts(
            ref,
            _STABLE_DIFFUSION_INDEX,
            counts,
            sample_size=64,
            config_source=CATALOG_NOTE,
            count_source="published component sizes",
        )
    return None
