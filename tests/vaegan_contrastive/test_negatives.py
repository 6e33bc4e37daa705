"""InfoNCE over negatives gathered across ranks: 2 processes with batch B/2 each give the loss and gradients
of 1 process with batch B, and every rank ends with the same queue (the single process's queue)."""

import pytest
import torch

from common.distributed import run_processes, world_size
from common.parallel import all_reduce_gradients
from vaegan_contrastive.models import Discriminator, ModelConfig
from vaegan_contrastive.negatives import ContrastiveNegatives

B = 8
CFG = ModelConfig(resolution=32, channels=1, latent_dim=4, enc_ch=4, dec_ch=4, disc_ch=4, cont_dim=8)
TOL = dict(rtol=1e-9, atol=1e-12)  # float64: equal up to summation order


def _infonce_steps(rank: int, world: int) -> dict:
    """One InfoNCE step with queue-only negatives and one with in-batch negatives too, in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return {in_batch: _step(rank, world, in_batch) for in_batch in (False, True)}
    finally:
        torch.set_default_dtype(previous)


def _step(rank: int, world: int, in_batch: bool) -> dict:
    torch.manual_seed(0)  # same networks, queue and images on every rank
    disc = Discriminator(CFG)
    negs = ContrastiveNegatives(disc, dim=CFG.cont_dim, queue_size=4 * B, in_batch=in_batch, global_batch=B)
    negs.update_key_encoder(disc)
    real = torch.randn(B, 1, 32, 32)
    recon = torch.randn(B, 1, 32, 32)
    n = B // world
    mine = slice(rank * n, (rank + 1) * n)
    x_hat = recon[mine].clone().requires_grad_(True)  # stands in for the decoder's output
    keys = negs.keys(real[mine])
    loss, _ = negs.loss(disc.features(x_hat), keys)
    loss.backward()
    params = list(disc.parameters())
    all_reduce_gradients(params, torch.distributed.group.WORLD if world > 1 else None)
    mean_loss = loss.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(mean_loss)
        mean_loss /= world
    negs.enqueue(keys)
    return {
        "loss": mean_loss.item(),
        "grads": [p.grad.clone() for p in params if p.grad is not None],
        "x_grad": x_hat.grad / world,
        "rows": (mine.start, mine.stop),  # d(global mean)/d(own rows)
        "queues": {k: negs.queue(k).clone() for k in negs.layers},
        "ptr": int(negs.ptr),
    }


@pytest.fixture(scope="module")
def one_and_two():
    return _infonce_steps(0, 1), run_processes(_infonce_steps, 2, timeout_s=60)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("in_batch", [False, True])
def test_two_ranks_equal_one_process(one_and_two, in_batch):
    one, two = one_and_two[0][in_batch], [r[in_batch] for r in one_and_two[1]]
    for r in two:
        assert r["loss"] == pytest.approx(one["loss"], rel=1e-6)
        for g1, g2 in zip(one["grads"], r["grads"]):
            torch.testing.assert_close(g2, g1, **TOL)
        lo, hi = r["rows"]
        torch.testing.assert_close(r["x_grad"], one["x_grad"][lo:hi], **TOL)
        assert r["ptr"] == one["ptr"] == B
        for k in one["queues"]:
            torch.testing.assert_close(r["queues"][k], one["queues"][k], **TOL)
            assert torch.equal(r["queues"][k], two[0]["queues"][k])  # every rank holds the same queue
    # in-batch negatives really couple the ranks: the loss differs from the queue-only loss
    assert one["loss"] != pytest.approx(one_and_two[0][not in_batch]["loss"], rel=1e-4)


def test_queue_wraps_and_rejects_indivisible_sizes():
    from common.errors import UserError

    torch.manual_seed(0)
    disc = Discriminator(CFG)
    with pytest.raises(UserError, match="not divisible"):
        ContrastiveNegatives(disc, dim=CFG.cont_dim, queue_size=10, global_batch=4)
    negs = ContrastiveNegatives(disc, dim=CFG.cont_dim, queue_size=8)
    assert world_size() == 1
    for step in range(3):
        keys = {k: torch.full((4, CFG.cont_dim), float(step)) for k in negs.layers}
        negs.enqueue(keys)
    q = negs.queue("final")
    assert int(negs.ptr) == 4  # 0 -> 4 -> 0 -> 4
    assert torch.all(q[:4] == 2) and torch.all(q[4:] == 1)


def test_key_encoder_is_a_momentum_average():
    torch.manual_seed(0)
    disc = Discriminator(CFG)
    negs = ContrastiveNegatives(disc, dim=CFG.cont_dim, queue_size=8, momentum=0.9)
    before = [p.clone() for p in negs.key_disc.parameters()]
    with torch.no_grad():
        for p in disc.parameters():
            p.add_(1.0)
    negs.update_key_encoder(disc)
    for p_k, p0, p in zip(negs.key_disc.parameters(), before, disc.parameters()):
        torch.testing.assert_close(p_k, 0.9 * p0 + 0.1 * p)
        assert not p_k.requires_grad
    assert negs.keys(torch.randn(3, 1, 32, 32))["b1"].norm(dim=1).sub(1).abs().max() < 1e-5
