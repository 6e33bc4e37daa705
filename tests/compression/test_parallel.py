"""Tensor and pipeline parallelism on real processes equal the one-process model: with the identity
compressor for TP=2, PP=2 (GPipe and 1F1B) and TP2xPP2, and with the all-reduce compressors (auto-encoder,
Random-K, PowerSGD) under TP=2, whose codes commute with the sum. Loss and every gradient are compared
(float64). The module is the shared runtime (`common.parallel`) with compressors in its hooks."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from common.distributed import run_processes
from compression.bench import network_times
from compression.compressors import AutoEncoder, CompressorSpec
from compression.cost_model import messages
from compression.models import BertConfig, BertModel, Plan
from compression.parallel import Parallel, setup, shard, sync_partial_grads
from compression.train import forward_backward, seed_replicas

CFG = BertConfig(vocab=40, hidden=16, heads=4, ffn=32, layers=4, max_positions=12, dropout=0.0)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CFG.vocab, (8, 6), generator=g)
    mask = torch.ones(8, 6, dtype=torch.long)
    mask[::3, 4:] = 0
    return ids, mask, torch.randint(0, 2, (8,), generator=g)


def _compare(tp, pp, spec, start_layer=0, micro=2, schedule="gpipe"):
    """Loss and gradients of this rank's model minus those of the one-process model (max abs error)."""
    torch.set_default_dtype(torch.float64)
    plan = Plan(spec, start_layer=start_layer, seed=3)
    torch.manual_seed(0)
    ref = BertModel(CFG, Parallel(), plan)
    init = copy.deepcopy(ref.state_dict())
    ids, mask, labels = _batch()
    ref_loss = forward_backward(ref, Parallel(), ids, mask, labels)
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    par = setup(tp, pp)
    model = BertModel(CFG, par, plan)
    model.load_state_dict(shard(model, init, tp, par.tp_rank))
    loss = forward_backward(model, par, ids, mask, labels, micro, schedule)
    want = shard(model, ref_grads, tp, par.tp_rank)
    grad_err = max((p.grad - want[k]).abs().max().item() for k, p in model.named_parameters())
    n_grads = sum(1 for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0)
    return {
        "loss_err": None if loss is None else abs(loss - ref_loss),
        "grad_err": grad_err,
        "n_grads": n_grads,
        "n_params": len(list(model.parameters())),
        "bytes": sum(c.total_bytes() for c in par.comms()),
    }


def _two_ranks(rank, world):
    out = {}
    for name, spec in [
        ("tp_identity", CompressorSpec("identity")),
        ("tp_autoencoder", CompressorSpec("autoencoder", d=6, shared=True)),
        ("tp_randk", CompressorSpec("randk", ratio=0.3)),
        ("tp_powersgd", CompressorSpec("powersgd", rank=3)),
    ]:
        out[name] = _compare(2, 1, spec, start_layer=2 if name != "tp_identity" else 0)
    out["pp_identity"] = _compare(1, 2, CompressorSpec("identity"))
    out["pp_identity_1f1b"] = _compare(1, 2, CompressorSpec("identity"), micro=4, schedule="1f1b")
    out["pp_topk_1f1b"] = _compare(1, 2, CompressorSpec("topk", ratio=0.3), micro=4, schedule="1f1b")
    out["pp_topk_gpipe"] = _compare(1, 2, CompressorSpec("topk", ratio=0.3), micro=4, schedule="gpipe")
    net = network_times(setup(2, 1), "tp", [4, 4096], repeats=2) + network_times(
        setup(1, 2), "pp", [4, 4096], repeats=2
    )
    return out, _counted_vs_model(rank, world), _dropout_logits(rank, world), _partial_grads(rank), net


class _PrivateAE(AutoEncoder):
    """Marks its encoder `tp_partial` like a shared one, but declares itself private: sync must skip it."""

    def __init__(self, hidden, d):
        super().__init__(hidden, d, shared=True)
        self.shared_across_tp = False  # each tensor-parallel rank trains its own copy


def _partial_grads(rank):
    """Encoder gradients after `sync_partial_grads`: summed for a shared compressor, kept for a private one."""
    model = nn.ModuleDict({"shared": AutoEncoder(8, 3, shared=True), "private": _PrivateAE(8, 3)})
    for p in model.parameters():
        p.grad = torch.full_like(p, rank + 1.0)
    sync_partial_grads(model, setup(2, 1).tp_comm)
    return {
        k: (m.encoder.weight.grad.unique().tolist(), m.decoder.weight.grad.unique().tolist()) for k, m in model.items()
    }


def _counted_vs_model(rank, world):
    """Bytes a real TP=2 / PP=2 iteration sends, and what `cost_model.messages` says it sends."""
    out = []
    ids, mask, labels = _batch()
    for layout in ("tp", "pp"):
        par = setup(2, 1) if layout == "tp" else setup(1, 2)
        for spec, backward in [
            (CompressorSpec("none"), False),
            (CompressorSpec("topk", ratio=0.2), True),
            (CompressorSpec("quantize", bits=2), True),
            (CompressorSpec("autoencoder", d=5), False),
            (CompressorSpec("powersgd", rank=2), True),
        ]:
            plan = Plan(spec, start_layer=1, backward=backward, tp_sites=layout == "tp", pp_cuts=layout == "pp")
            torch.manual_seed(0)
            model = BertModel(CFG, par, plan)
            for c in par.comms():
                c.reset()
            forward_backward(model, par, ids, mask, labels, 2)
            counted = sum(c.total_wire_bytes() for c in par.comms())
            msgs, _ = messages(CFG, plan, layout, 2, 8, 6, micro=2, dtype=torch.get_default_dtype())
            out.append((layout, spec.name, counted, sum(m.wire for m in msgs)))
    return out


def _dropout_logits(rank, world):
    """Training-mode logits with dropout under TP=2 (both ranks must draw the same masks)."""
    torch.set_default_dtype(torch.float64)
    par = setup(2, 1)
    torch.manual_seed(0)
    model = BertModel(dataclasses.replace(CFG, dropout=0.3), par, Plan(CompressorSpec("none")))
    seed_replicas(0)
    ids, mask, _ = _batch()
    return model(ids, mask).detach()


def _four_ranks(rank, world):
    return [
        _compare(2, 2, CompressorSpec("identity")),
        _compare(2, 2, CompressorSpec("identity"), micro=4, schedule="1f1b"),
    ]


def _check(r, last_stage):
    assert r["grad_err"] < 1e-10, r
    assert r["n_grads"] == r["n_params"]  # every parameter received a (non-zero) gradient
    if last_stage:
        assert r["loss_err"] < 1e-12, r
    else:
        assert r["loss_err"] is None
    assert r["bytes"] > 0


@pytest.mark.timeout(150)
def test_tp2_and_pp2_equal_one_process():
    results = run_processes(_two_ranks, 2, timeout_s=140)
    counts = [r[1] for r in results]
    assert torch.equal(results[0][2], results[1][2])  # replicated dropout stays in step across TP ranks
    for rank, r in enumerate(results):  # only a shared compressor's partial (encoder) gradients are summed
        assert r[3] == {"shared": ([3.0], [rank + 1.0]), "private": ([rank + 1.0], [rank + 1.0])}
        assert [(n["layout"], n["bytes"]) for n in r[4]] == [("tp", 4), ("tp", 4096), ("pp", 4), ("pp", 4096)]
        assert all(n["seconds"] > 0 for n in r[4])
    results = [r[0] for r in results]
    # 1F1B sends what GPipe sends (a Top-K cut both ways) and gives the same gradients
    for r in results:
        assert r["pp_topk_1f1b"]["grad_err"] == r["pp_topk_gpipe"]["grad_err"]
        assert r["pp_topk_1f1b"]["bytes"] == r["pp_topk_gpipe"]["bytes"]
    for rank, res in enumerate(results):
        for name, r in res.items():
            if "topk" not in name:  # Top-K is lossy: compared between schedules below
                _check(r, last_stage=not name.startswith("pp") or rank == 1)
    # the auto-encoder (d=6 of hidden 16) all-reduces its codes: fewer bytes than the identity
    assert results[0]["tp_autoencoder"]["bytes"] < results[0]["tp_identity"]["bytes"]
    # the cost model's message list predicts the bytes exactly: TP per rank, PP summed over the two stages
    for (layout, name, c0, model0), (_, _, c1, _) in zip(*counts):
        assert (c0 if layout == "tp" else c0 + c1) == pytest.approx(model0), (layout, name)
        if layout == "tp":
            assert c0 == pytest.approx(c1)
    assert len({round(c[3]) for c in counts[0][:5]}) == 5  # each compressor sends a different amount


@pytest.mark.timeout(150)
def test_tp2_x_pp2_on_four_processes_equals_one_process():
    results = run_processes(_four_ranks, 4, timeout_s=140)
    for rank, res in enumerate(results):
        for r in res:  # GPipe with 2 micro-batches, 1F1B with 4
            _check(r, last_stage=rank >= 2)
