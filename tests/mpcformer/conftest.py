"""Shared fixtures: a tiny random BERT classifier (2 layers, hidden 32) and padded token ids."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification


def tiny_bert(vocab_size: int = 100, seed: int = 0, **kw) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        **kw,
    )
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Tiny models run faster on one thread, and much faster on a shared machine."""
    yield


@pytest.fixture
def tiny():
    return tiny_bert()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 6:] = 0
    ids[0, 6:] = 0
    return ids, mask
