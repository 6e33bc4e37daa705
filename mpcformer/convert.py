"""From a Hugging Face BERT-family model to its MPC-friendly student, weights copied from the teacher.

The `transformers` model object is changed in place of a fork: each layer's GeLU module is swapped for Quad,
and attention runs through an attention function registered with transformers' `AttentionInterface` under
the name "mpcformer", which normalises the scores with the layer's `normaliser` (softmax, 2Quad or 2ReLU).
With `output_attentions=True` such a model returns the raw attention scores (before normalisation), which
is what stage 1 of distillation matches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from common.errors import UserError

from .approximations import ACTIVATIONS, NORMALISERS, AttentionNormaliser, QuadGELU

ATTN_IMPLEMENTATION = "mpcformer"
APPROXIMATIONS = ("quad+2quad", "quad+2relu", "gelu+2quad", "quad+softmax", "gelu+2relu", "gelu+softmax")


@dataclass(frozen=True)
class Approximation:
    """A pair (GeLU replacement, softmax replacement), named like the paper: 'quad+2quad'."""

    activation: str = "gelu"
    softmax: str = "softmax"

    @classmethod
    def parse(cls, name: str | Approximation) -> Approximation:
        if isinstance(name, Approximation):
            return name
        parts = str(name).lower().replace(" ", "").split("+")
        if len(parts) != 2 or parts[0] not in ACTIVATIONS or parts[1] not in NORMALISERS:
            raise UserError(f"unknown approximation {name!r}; choose one of {', '.join(APPROXIMATIONS)}")
        return cls(parts[0], parts[1])

    @property
    def name(self) -> str:
        return f"{self.activation}+{self.softmax}"

    @property
    def label(self) -> str:
        """The paper's spelling: 'Quad+2Quad', 'GeLU+Softmax'."""
        pretty = {"gelu": "GeLU", "quad": "Quad", "softmax": "Softmax", "2quad": "2Quad", "2relu": "2ReLU"}
        return f"{pretty[self.activation]}+{pretty[self.softmax]}"


EXACT = Approximation("gelu", "softmax")


def mpcformer_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
):
    """Attention whose normaliser is `module.normaliser`; returns (output, raw scores)."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    mask = None
    if attention_mask is not None:  # (batch, 1, queries, keys), bool (True = attend) or additive float
        m = attention_mask[:, 0, 0, :]
        mask = m.to(scores.dtype) if m.dtype == torch.bool else (m > torch.finfo(m.dtype).min / 2).to(scores.dtype)
    normaliser = getattr(module, "normaliser", None) or AttentionNormaliser("softmax")
    probs = normaliser(scores, mask)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, scores


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, mpcformer_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if all(hasattr(m, a) for a in ("query", "key", "value")) and hasattr(m, "attention_head_size")
    ]


def _mlp_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "intermediate_act_fn")]


def to_student(model: nn.Module, approximation: str | Approximation, copy_model: bool = True) -> nn.Module:
    """The MPC-friendly student of a BERT-family `transformers` model: same weights, approximations swapped in.

    `approximation` names the pair, e.g. 'quad+2quad'; 'gelu+softmax' keeps the exact functions but still
    routes attention through the MPCFormer attention function (so the teacher returns raw scores too).
    """
    approx = Approximation.parse(approximation)
    attn, mlps = _attention_modules(model), _mlp_modules(model)
    if not attn or not mlps or not hasattr(model, "config"):
        raise UserError(
            f"{type(model).__name__} is not a BERT-family transformers model "
            "(no self-attention with query/key/value or no intermediate activation found)"
        )
    if copy_model:
        model = copy.deepcopy(model)
        attn, mlps = _attention_modules(model), _mlp_modules(model)
    _register()
    for m in attn:
        m.normaliser = AttentionNormaliser(approx.softmax)
    if approx.activation == "quad":
        for m in mlps:
            m.intermediate_act_fn = QuadGELU()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    model.approximation = approx
    return model


def approximation_of(model: nn.Module) -> Approximation:
    """The approximation pair a converted model runs (exact for an unconverted one)."""
    return getattr(model, "approximation", EXACT)
