"""The claims are decided from the measured metrics (a flipped measurement flips the verdict); the benchmark's
timed worker reports images/s and peak memory for the release's 5-iteration cycle."""

import copy

import pytest

from common.claims import DOES_NOT_HOLD, HOLDS, NOT_MEASURED
from vaegan_contrastive.claims import decide_claims

METRICS = {  # the paper's ordering: VAE worst, DC-VAE best, reconstructions faithful
    "vae": {"sample FID": 300.0, "recon FID": 80.0, "same class": 0.9, "nearest own": 0.4},
    "vaegan": {"sample FID": 150.0, "recon FID": 60.0, "same class": 0.9, "nearest own": 0.5},
    "vae_contrastive": {"sample FID": 250.0, "recon FID": 50.0, "same class": 0.9, "nearest own": 0.6},
    "dcvae": {"sample FID": 100.0, "recon FID": 40.0, "same class": 0.9, "nearest own": 0.7},
}


def _verdicts(metrics, **kw):
    return {c.key: c.verdict for c in decide_claims(metrics, **kw)}


def test_claims_hold_on_the_papers_ordering():
    v = _verdicts(METRICS)
    assert set(v.values()) == {HOLDS}, v
    assert len(v) == 6


@pytest.mark.parametrize(
    "variant,key,value,claim",
    [
        ("vaegan", "sample FID", 90.0, "dcvae_best_sampling_fid"),
        ("vae", "recon FID", 30.0, "dcvae_best_recon_fid"),
        ("vaegan", "sample FID", 400.0, "vaegan_beats_vae_sampling"),
        ("vae_contrastive", "recon FID", 90.0, "contrastive_improves_vae"),
        ("dcvae", "same class", 0.84, "faithful_class"),
    ],
)
def test_a_flipped_measurement_flips_its_claim(variant, key, value, claim):
    m = copy.deepcopy(METRICS)
    m[variant][key] = value
    assert _verdicts(m)[claim] == DOES_NOT_HOLD


def test_missing_variants_are_not_measured():
    v = _verdicts({"dcvae": METRICS["dcvae"]})
    assert v["dcvae_best_sampling_fid"] == v["vaegan_beats_vae_sampling"] == NOT_MEASURED
    assert v["faithful_class"] == HOLDS


def test_bench_worker_times_a_release_cycle(one_torch_thread):
    from vaegan_contrastive.bench import _worker
    from vaegan_contrastive.models import ModelConfig
    from vaegan_contrastive.train import TrainConfig

    mc = ModelConfig(resolution=16, channels=3, latent_dim=4, enc_ch=4, dec_ch=4, disc_ch=4)
    tc = TrainConfig(batch_size=4, gen_batch_size=8, queue_size=16, progress=False)
    out = _worker(0, 1, mc, tc, 5, 1)
    assert out["images_per_s"] > 0 and out["peak_rss_gib"] > 0.05
    # the cycle is 4 discriminator-only iterations and one full one, each kind timed
    cycle = 4 * out["s_disc_iteration"] + out["s_full_iteration"]
    assert out["images_per_s"] == pytest.approx(5 * 4 / cycle)
    assert out["s_full_iteration"] > out["s_disc_iteration"] > 0
    quick = _worker(0, 1, mc, tc, 5, 1, quick=True)  # one iteration of each kind
    assert quick["s_full_iteration"] > quick["s_disc_iteration"] > 0
