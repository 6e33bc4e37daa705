"""The approximations compute the paper's formulas, respect the attention mask, and carry gradients."""

import math

import pytest
import torch

from mpcformer import approximations as A


def test_quad_is_the_papers_polynomial():
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(A.quad_gelu(x), 0.125 * x**2 + 0.25 * x + 0.5)
    torch.testing.assert_close(A.QuadGELU()(x), A.quad_gelu(x))


def test_gelu_tanh_form_is_close_to_erf_gelu():
    x = torch.linspace(-30, 30, 2001)
    assert (A.gelu(x) - torch.nn.functional.gelu(x)).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["2quad", "2relu", "softmax"])
def test_normalisers_are_distributions_that_ignore_masked_keys(name):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 5, 7, generator=g) * 3
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    p = A.NORMALISERS[name](scores, mask)
    assert (p >= 0).all()
    expected = torch.ones(2, 3, 5)
    if name == "2relu":  # a row whose unmasked scores are all <= 0 has no weight at all
        expected = ((scores.relu() * mask[:, None, None, :]).sum(-1) > 0).float()
    torch.testing.assert_close(p.sum(-1), expected, atol=1e-5, rtol=0)
    assert p[1, :, :, 4:].abs().max() == 0
    changed = scores.clone()
    changed[1, :, :, 4:] = 100.0  # masked keys: their scores must not matter
    torch.testing.assert_close(A.NORMALISERS[name](changed, mask), p)


def test_two_quad_and_two_relu_formulas():
    x = torch.tensor([[[[-6.0, -1.0, 0.0, 2.0]]]])
    q = (x + 5) ** 2
    torch.testing.assert_close(A.two_quad(x), q / q.sum(-1, keepdim=True))
    r = x.relu()
    torch.testing.assert_close(A.two_relu(x), r / r.sum(-1, keepdim=True))
    torch.testing.assert_close(A.softmax(x), torch.softmax(x, -1))


def test_gradients_flow_through_every_approximation():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    for f in (A.two_quad, A.two_relu, A.softmax):
        (f(x) * torch.arange(4.0)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        x.grad = None
    y = torch.randn(5, requires_grad=True)
    A.quad_gelu(y).sum().backward()
    torch.testing.assert_close(y.grad, 0.25 * y.detach() + 0.25)


def test_unknown_normaliser_is_rejected():
    with pytest.raises(ValueError, match="2quad"):
        A.AttentionNormaliser("3quad")


def test_constants():
    assert A.QUAD_C == 5.0 and math.isclose(A.quad_gelu(torch.tensor(0.0)).item(), 0.5)
