"""The model and training match the authors' released code (mlpc-ucsd/DC-VAE: train.py, models_32.py,
utils/misc.py, utils/eval.py) in each point that once differed: no z clamp in training, the evaluation paths,
the KL reduction, the decoder's structure and initialisation, and the parameter counts at 32 px."""

import pytest
import torch
from torch import nn

from vaegan_contrastive.losses import kl_divergence
from vaegan_contrastive.models import DCVAE, ModelConfig
from vaegan_contrastive.train import TrainConfig, Trainer

TINY = ModelConfig(resolution=32, channels=1, latent_dim=4, enc_ch=4, dec_ch=4, disc_ch=4, cont_dim=4)


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return DCVAE(ModelConfig())  # the released CIFAR-10 widths at 32 px


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_release(paper_model):
    # released: decoder 4.41M, encoder 1.09M, discriminator 1.06M (its unused heads b2-b4 add 3.5k)
    assert _count(paper_model.decoder) == pytest.approx(4.41e6, rel=0.01)
    assert _count(paper_model.encoder) == pytest.approx(1.09e6, rel=0.01)
    assert _count(paper_model.disc) == pytest.approx(1.06e6, rel=0.01)


def test_decoder_structure_is_the_release(paper_model):
    dec = paper_model.decoder
    assert [c.mode for c in dec.cells] == ["nearest", "bilinear", "nearest"]
    assert [len(c.skips) for c in dec.cells] == [0, 1, 2]  # cross-scale skips from every earlier cell
    assert [c.sc is not None for c in dec.cells] == [True, True, False]
    norms = [m for m in dec.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d))]
    assert len(norms) == 1 and norms[0] is dec.to_rgb[0]  # BatchNorm in to_rgb only, none in the cells
    # a skip really feeds the last cell: zeroing its 1x1 conv changes the output
    z = torch.randn(2, 128)
    dec.eval()
    before = dec(z)
    with torch.no_grad():
        saved = dec.cells[2].skips[0].weight.clone()
        dec.cells[2].skips[0].weight.zero_()
    try:
        assert not torch.allclose(before, dec(z))
    finally:
        with torch.no_grad():
            dec.cells[2].skips[0].weight.copy_(saved)
        dec.train()


def test_every_conv_is_xavier_uniform(paper_model):
    convs = [m for m in paper_model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for m in convs:
        w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        fan_in, fan_out = w.shape[1] * w[0, 0].numel(), w.shape[0] * w[0, 0].numel()
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert w.abs().max() <= bound + 1e-7
        if w.numel() > 1000:  # uniform on [-bound, bound]: the largest of many draws is near the bound
            assert w.abs().max() > 0.95 * bound
    torch.manual_seed(0)
    plain = DCVAE(ModelConfig(xavier_init=False, latent_dim=8, enc_ch=32, dec_ch=32, disc_ch=32))
    w = plain.decoder.cells[0].c1.weight
    assert w.abs().max() < (6.0 / (2 * w[0].numel())) ** 0.5 * 0.8  # the option really switches it off


def test_training_never_clamps_z():
    torch.manual_seed(0)
    m = DCVAE(TINY)
    x = torch.randn(8, 1, 32, 32)
    with torch.no_grad():
        m.encoder.out.parametrizations.weight.original.mul_(200.0)  # latent means far outside [-1, 1]
        m.encoder.out.parametrizations.weight.original.requires_grad_(True)
    z, mu, logvar = m.reparameterize(x)
    assert z.abs().max() > 1.5
    # every entry of the latent mean gets a gradient (a clamp would zero those beyond [-1, 1])
    mu.retain_grad()
    m.decoder(z).sum().backward()
    assert (mu.grad != 0).float().mean() == 1.0


class _Record(nn.Module):
    """Stands in for the decoder: records its input z, returns an image-shaped tensor."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, z):
        self.seen.append(z.clone())
        return torch.zeros(len(z), 1, 32, 32)


def test_evaluation_paths_are_the_release():
    torch.manual_seed(0)
    m = DCVAE(TINY)
    m.decoder_ema = _Record()
    # sampling FID: z ~ N(0, I) clamped to [-1, 1]
    m.sample(2000)
    z = m.decoder_ema.seen[-1]
    assert z.abs().max() == 1.0 and (z.abs() == 1.0).float().mean() > 0.25  # ~32% of N(0,1) lies beyond 1
    # reconstruction FID: a posterior sample, not clamped, not the mean
    m.encoder.forward = lambda x: (torch.full((len(x), 4), 3.0), torch.full((len(x), 4), -1.0))
    x = torch.zeros(500, 1, 32, 32)
    m.reconstruct(x, generator=torch.Generator().manual_seed(0))
    z = m.decoder_ema.seen[-1]
    assert z.max() > 3.5 and z.min() < 2.5  # unclamped, and noisy around the mean 3 (std exp(-0.5))
    assert (z - 3.0).std().item() == pytest.approx(float(torch.exp(torch.tensor(-0.5))), rel=0.1)


def test_kl_is_summed_over_the_batch_as_released():
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    released = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    torch.testing.assert_close(kl_divergence(mu, logvar), released)
    torch.testing.assert_close(kl_divergence(mu, logvar, reduction="mean"), released / 6)
    t = Trainer(TINY, TrainConfig(kl_weight=1e-6, queue_size=16, batch_size=8))
    torch.testing.assert_close(t._kl(mu, logvar), 1e-6 * released)  # one process: the release's term
