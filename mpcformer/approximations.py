"""MPC-friendly replacements for GeLU and softmax, and the exact functions they replace.

Every function here takes a torch tensor or a CrypTen tensor and returns the same kind, so the plaintext
student and its private twin run the very same arithmetic:

- Quad GeLU: 0.125 x^2 + 0.25 x + 0.5 (one multiplication instead of tanh or erf).
- 2Quad softmax: (x + c)^2, masked, divided by its row sum (c = 5).
- 2ReLU softmax: relu(x), masked, divided by its row sum.
- GeLU (tanh form) and softmax as CrypTen computes them (max, exp, reciprocal): the exact model under MPC.

Two fixed-point traps shape how each function is written (the plaintext result is the same formula):

- CrypTen's reciprocal is accurate only for inputs of moderate size (garbage from about 256), while row sums
  grow with the sequence length. Each normaliser therefore divides the row sum by a public constant before
  the reciprocal and multiplies back after: the same cost, and accurate at every length.
- With two parties CrypTen truncates every product by dividing each share locally, which goes wrong by 2^32
  (a logit of 1e9) with probability |v| / 2^32 per element whose product is v: rare per element, frequent over
  the millions of products of a Transformer once values reach thousands. So nothing squares a value that can
  be large: 2Quad squares (x + c) / 32 (the normalisation cancels the scale), Quad squares (x + 1) / 4, and
  the reciprocal's Newton step is r (2 - t r), whose products are about 1 and 1/t, instead of CrypTen's
  2r - t r^2, which forms 1/t^2. `private_inference.truncation_risk` measures the expected number of such
  failures for a model on given inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

QUAD_C = 5.0
# an integer (exact to multiply by under MPC); masked scores sit this far below the row max: exp() of them is ~1e-28
SOFTMAX_MASK_SHIFT = 64


def _is_plain(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


RECIPROCAL_NR_ITERS = 10  # CrypTen's default number of Newton steps


def reciprocal(x):
    """1 / x. Under MPC CrypTen's method (sign, then Newton from 3 exp(1 - 2x) + 0.003) with the Newton step
    written r (2 - x r): the same rounds, but no product as large as CrypTen's r^2 = 1/x^2 (see above)."""
    if _is_plain(x):
        return x.clamp_min(1e-12).reciprocal()
    from .crypten_compat import crypten

    if not crypten().cfg.functions.reciprocal_all_pos:
        sign = x.sign()
        return sign * _newton_reciprocal(sign * x)
    return _newton_reciprocal(x)


def _newton_reciprocal(x):
    r = (1 - 2 * x).exp() * 3 + 0.003
    for _ in range(RECIPROCAL_NR_ITERS):
        r = r * (2 - x * r)
    return r


def _normalise(y, mask, divisor: float):
    """y / y.sum(-1) with masked keys zeroed; the sum is divided by `divisor` before the reciprocal."""
    if mask is not None:
        y = y * mask
    total = y.sum(-1, keepdim=True) / divisor
    # y * (divisor / sum) is at most `divisor`: fixed point keeps its precision; dividing after is exact enough
    return (y * reciprocal(total)) / divisor


def _key_mask(mask, shape):
    """A (batch, keys) 0/1 mask broadcast to attention scores of `shape` (batch, heads, queries, keys)."""
    if mask is None:
        return None
    m = mask.unsqueeze(1).unsqueeze(1)
    return m.expand(*shape) if not _is_plain(m) else m


def quad_gelu(x):
    """Quad: 0.125 x^2 + 0.25 x + 0.5, MPCFormer's replacement for GeLU, computed as 2 ((x + 1) / 4)^2 + 0.375:
    one multiplication, whose product is 16 times smaller than x^2 (see above)."""
    return ((x + 1) / 4).square() * 2 + 0.375


SIGMOID_EXP_HALVINGS = 3  # exp(-y) = exp(-y / 8) ** 8: CrypTen's exp is garbage below about -512


def sigmoid(x):
    """Logistic sigmoid. Under MPC as CrypTen computes it (sign, exp(-|x|), reciprocal), except that
    exp(-|x|) is taken as exp(-|x| / 8) squared three times: CrypTen's limit-approximation exp is garbage below
    about -512, which the tanh-form GeLU reaches on real activations (|x| of 25 gives a sigmoid argument of
    1100); this is valid to |x| ~ 4000, and more squarings would lose precision."""
    if _is_plain(x):
        return torch.sigmoid(x)
    from .crypten_compat import crypten

    ltz = x._ltz()
    pos = x * (1 - 2 * ltz)
    e = (pos * (-1.0 / 2**SIGMOID_EXP_HALVINGS)).exp()
    for _ in range(SIGMOID_EXP_HALVINGS):
        e = e.square()
    with crypten().cfg.temp_override({"functions.reciprocal_all_pos": True}):
        pos_out = (e + 1).reciprocal()
    return pos_out.where(1 - ltz, 1 - pos_out)


def tanh(x):
    """tanh(x) = 2 sigmoid(2x) - 1, with the robust sigmoid above under MPC."""
    return sigmoid(x * 2.0) * 2.0 - 1.0


def gelu(x):
    """GeLU in its tanh form, x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) (CrypTen's erf is wrong beyond
    |x| ~ 2.5); differs from the erf form by < 1e-3."""
    inner = x * (x.square() * 0.044715 + 1) * (2.0 * math.sqrt(2.0 / math.pi))  # no product as large as x^3
    return x * sigmoid(inner)


TWO_QUAD_SHIFT = 32  # 2Quad squares (x + c) / 32, a public power of two: (x + c)^2 reaches 10^4 on real scores


def two_quad(scores, mask=None, c: float = QUAD_C):
    """2Quad: (x + c)^2 / sum (x + c)^2 over the keys; masked keys get weight 0."""
    y = ((scores + c) / TWO_QUAD_SHIFT).square()
    # row means of (x + c)^2 reach thousands on real first-layer scores (-97 to 48): divided by 4c^2 they stay
    # inside [0.01, 250], where CrypTen's reciprocal is accurate
    return _normalise(y, _key_mask(mask, scores.size()), divisor=scores.size(-1) * (2 * c / TWO_QUAD_SHIFT) ** 2)


def two_relu(scores, mask=None):
    """2ReLU: relu(x) / sum relu(x) over the keys; masked keys get weight 0."""
    return _normalise(scores.relu(), _key_mask(mask, scores.size()), divisor=math.sqrt(scores.size(-1)))


def softmax(scores, mask=None):
    """Exact softmax over the keys: in plaintext torch's; under MPC CrypTen's max, exp and reciprocal."""
    m = _key_mask(mask, scores.size())
    if _is_plain(scores):
        if m is not None:
            scores = scores.masked_fill(m == 0, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)
    if m is not None:
        scores = scores + (m - 1.0) * SOFTMAX_MASK_SHIFT
    shifted = scores - scores.max(dim=-1, keepdim=True)[0]
    # exp-sums lie in [1, n]; divided by sqrt(n) they stay where CrypTen's reciprocal is accurate
    return _normalise(shifted.exp(), m, divisor=math.sqrt(scores.size(-1)))


ACTIVATIONS = {"gelu": gelu, "quad": quad_gelu}
NORMALISERS = {"softmax": softmax, "2quad": two_quad, "2relu": two_relu}


class QuadGELU(nn.Module):
    """Quad as a drop-in replacement for a transformers GeLU activation module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quad_gelu(x)


class AttentionNormaliser(nn.Module):
    """Turns attention scores (batch, heads, queries, keys) and a 0/1 key mask into attention weights."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in NORMALISERS:
            raise ValueError(f"unknown attention normaliser {kind!r}; choose one of {', '.join(NORMALISERS)}")
        self.kind = kind

    def forward(self, scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return NORMALISERS[self.kind](scores, mask)

    def extra_repr(self) -> str:
        return self.kind


class TwoQuad(AttentionNormaliser):
    def __init__(self):
        super().__init__("2quad")


class TwoReLU(AttentionNormaliser):
    def __init__(self):
        super().__init__("2relu")


class Softmax(AttentionNormaliser):
    def __init__(self):
        super().__init__("softmax")
