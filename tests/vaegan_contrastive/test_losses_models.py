"""Losses, networks and metrics: values against hand computations, shapes, spectral norm, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from vaegan_contrastive import evaluate as E
from vaegan_contrastive.losses import (
    d_hinge,
    g_hinge,
    info_nce,
    kl_divergence,
    pixel_reconstruction,
    positive_rank_accuracy,
    reconstruction_spread,
)
from vaegan_contrastive.models import DCVAE, ModelConfig


def test_hinge_losses_weights_real_samples_and_reconstructions():
    real, fake, recon = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 1.0]), torch.tensor([0.5, -0.5])
    # relu(1-real).mean = 0.5; relu(1+fake).mean = 1.0; relu(1+recon).mean = 1.0
    assert d_hinge(real, fake, recon).item() == pytest.approx(0.5 + 0.5 * 1.0 + 0.5 * 1.0)
    assert d_hinge(real, fake).item() == pytest.approx(0.5 + 1.0)
    assert g_hinge(fake, recon).item() == pytest.approx(-(0.5 * -0.5 + 0.5 * 0.0))


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum()
    torch.testing.assert_close(kl_divergence(mu, logvar), ref)
    assert kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)).item() == 0.0
    # the release's reconstruction loss: torch.mean((x_recon - x) ** 2)
    assert pixel_reconstruction(torch.full((2, 1, 2, 2), 2.0), torch.zeros(2, 1, 2, 2)).item() == 4.0


def test_info_nce_is_cross_entropy_against_positive_and_negatives():
    q, k = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    queue = F.normalize(torch.randn(16, 8), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / 0.07
    torch.testing.assert_close(info_nce(q, k, queue, 0.07), F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)))
    # in-batch negatives: the other rows of the global batch, never the query itself
    glob = torch.cat([F.normalize(torch.randn(2, 8), dim=1), q])  # this process holds rows 2..5
    own_excluded = torch.cat(
        [logits, (q @ glob.t()).index_put((torch.arange(4), torch.arange(4) + 2), torch.tensor(float("-inf"))) / 0.07],
        1,
    )
    expected = F.cross_entropy(own_excluded, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(info_nce(q, k, queue, 0.07, in_batch=glob, offset=2), expected)
    # a perfect positive among orthogonal negatives gives a loss near zero
    eye = torch.eye(8)
    assert info_nce(eye[:2], eye[:2], eye[2:], 0.07).item() < 1e-5


def test_positive_rank_accuracy_counts_negatives_above_the_positive():
    logits = torch.tensor(
        [
            [5.0, 1.0, 2.0, 3.0],  # positive first: top-1
            [2.0, 3.0, 1.0, 0.0],  # one negative above: top-5 only
            [0.0, 1.0, 2.0, 3.0],
        ]
    )  # three above: top-5 only (4 columns)
    acc = positive_rank_accuracy(logits, ks=(1, 2, 5))
    assert acc == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 5: pytest.approx(1.0)}
    same = torch.zeros(4, 1, 3, 3)
    assert reconstruction_spread(same) == 0.0 and reconstruction_spread(torch.randn(64, 1, 3, 3)) > 0.5


@pytest.mark.parametrize("res,channels", [(16, 1), (28, 1), (32, 1), (32, 3), (64, 3)])
def test_shapes_at_supported_resolutions(res, channels):
    torch.manual_seed(0)
    m = DCVAE(ModelConfig(resolution=res, channels=channels, latent_dim=6, enc_ch=8, dec_ch=8, disc_ch=8, cont_dim=5))
    x = torch.rand(3, channels, res, res) * 2 - 1
    z, mu, logvar = m.reparameterize(x)
    assert z.shape == mu.shape == logvar.shape == (3, 6)
    out = m.decoder(z)
    assert out.shape == x.shape and out.abs().max() <= 1
    assert m.disc(x).shape == (3,)
    feats = m.disc.features(x)
    assert feats["b1"].shape == feats["final"].shape == (3, 5)
    assert m.sample(4).shape == (4, channels, res, res)


def test_unsupported_resolution_and_sizes_are_user_errors():
    with pytest.raises(UserError, match="unsupported resolution 30"):
        ModelConfig(resolution=30)
    with pytest.raises(UserError, match="latent_dim"):
        ModelConfig(latent_dim=0)


def test_discriminator_is_spectrally_normalized():
    torch.manual_seed(0)
    m = DCVAE(ModelConfig(resolution=32, channels=1, latent_dim=4, enc_ch=8, dec_ch=8, disc_ch=8))
    for _ in range(30):  # power iterations run on each training-mode forward
        m.disc(torch.randn(2, 1, 32, 32))
    w = m.disc.embed.weight
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=1e-3)
    assert not any("parametrizations" in n for n, _ in m.decoder.named_parameters())


def test_ema_decoder_moves_toward_decoder():
    torch.manual_seed(0)
    m = DCVAE(ModelConfig(resolution=32, channels=1, latent_dim=4, enc_ch=4, dec_ch=4, disc_ch=4))
    p0 = m.decoder_ema.fc.weight.clone()
    m.decoder.to_rgb[0].running_mean.fill_(3.0)
    with torch.no_grad():
        m.decoder.fc.weight.add_(1.0)
    m.update_ema(0.75)
    torch.testing.assert_close(m.decoder_ema.fc.weight, p0 + 0.25)
    assert torch.equal(m.decoder_ema.to_rgb[0].running_mean, torch.full((4,), 3.0))  # buffers: the live decoder's


def test_fid_and_inception_score_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert E.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-4)
    shift = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    assert E.fid_from_features(a, a + shift) == pytest.approx(25.0, abs=1e-3)  # |mean difference|^2
    b = torch.randn(4000, 3, generator=g, dtype=torch.float64) * 2  # cov 4I vs I: 3 * (1 + 4 - 2*2) = 3
    assert E.fid_from_features(a, b) == pytest.approx(3.0, rel=0.05)
    assert E.inception_score(torch.zeros(100, 10)) == pytest.approx((1.0, 0.0))
    confident = torch.eye(10).repeat(10, 1) * 50  # each class equally often, each prediction certain
    assert E.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-3)
    # 10 shuffled splits: the classes spread unevenly over splits, so each split scores below 10, with a spread
    mean, std = E.inception_score(confident, splits=10)
    assert 4.0 < mean < 10.0 and std > 0


def test_faithfulness_counts_class_agreement_and_nearest_own_input():
    class Fixed:
        name = "fixed"

        def extract(self, images):  # features and logits: the pixels
            f = images.flatten(1)
            return f, f

    x = torch.eye(4).view(4, 1, 2, 2)
    recon = x.clone()
    recon[3] = x[0]  # the last reconstruction is another input's image
    out = E.faithfulness(Fixed(), x, recon, labels=torch.tensor([0, 1, 2, 3]))
    assert out["nearest own"] == 0.75 and out["same class"] == 0.75
    assert out["label acc"] == 0.75 and out["real label acc"] == 1.0


def test_lenet_features_are_deterministic_and_probe_separates():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 1, 32, 32, generator=g) * 0.1 + y.view(-1, 1, 1, 1).float() - 0.5
    f1 = E.train_lenet(x, y, x, y, epochs=1, batch=50, seed=3)
    f2 = E.train_lenet(x, y, epochs=1, batch=50, seed=3)
    assert torch.equal(f1.extract(x)[0], f2.extract(x)[0])
    assert f1.test_accuracy == 1.0
    assert E.linear_probe(x.flatten(1), y, x.flatten(1), y) == 1.0


def test_inception_path_needs_a_weights_file(tmp_path):
    with pytest.raises(UserError, match="Inception weights file not found"):
        E.InceptionFeatures(str(tmp_path / "missing.pth"))
    assert math.isfinite(E.reconstruction_mse(torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)))


@pytest.mark.parametrize("pool", ["sum", "mean", "flatten"])
def test_encoder_pooling_options(pool):
    torch.manual_seed(0)
    for res in (28, 32):
        m = DCVAE(
            ModelConfig(
                resolution=res,
                channels=1,
                latent_dim=6,
                enc_ch=4,
                dec_ch=4,
                disc_ch=4,
                encoder_pool=pool,
                spectral_norm_encoder=False,
            )
        )
        mu, logvar = m.encoder(torch.randn(2, 1, res, res))
        assert mu.shape == logvar.shape == (2, 6)
    with pytest.raises(UserError, match="encoder_pool"):
        ModelConfig(encoder_pool="max")


def test_fast_nearest_upsampling_equals_interpolate():
    """The decoder's broadcast upsampling gives F.interpolate's values and gradients (2x and the skips' 4x)."""
    from vaegan_contrastive.models import upsample_nearest

    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    for f in (2, 4):
        ref = F.interpolate(x, scale_factor=f, mode="nearest")
        out = upsample_nearest(x, f, f)
        assert torch.equal(out, ref)
        w = torch.randn_like(ref)
        g_ref, g = (torch.autograd.grad((y * w).sum(), x)[0] for y in (ref, out))
        assert torch.allclose(g, g_ref, atol=1e-6)
