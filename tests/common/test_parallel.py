"""The parallel runtime on real processes (gloo): with plain communication, TP2, PP2 (GPipe and 1F1B), DP2 and
TP2xPP2 equal the one-process model in loss and every gradient (float64); 1F1B gives GPipe's gradients bit for
bit; hooks run at every communication point, forward and backward; the link micro-benchmark fits."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.collectives import CountingComm
from common.distributed import run_processes
from common.parallel import (
    Boundary,
    ColumnParallelLinear,
    RowParallelLinear,
    all_reduce_gradients,
    build_grid,
    coords,
    copy_to_tp,
    gather_from_tp,
    in_flight,
    link_bench,
    pipeline_step,
    rank_grid,
    schedule_order,
    shard_state,
)

VOCAB, D, FFN, LAYERS, SEQ, BATCH = 12, 8, 16, 4, 5, 8


class Block(nn.Module):
    """A pre-LN Megatron MLP block: the model's only tensor-parallel knowledge is in its layers."""

    def __init__(self, tp: int, comm, hooks=(None, None)):
        super().__init__()
        self.comm, self.bwd_hook = comm, hooks[1]
        self.ln = nn.LayerNorm(D)
        self.fc1 = ColumnParallelLinear(D, FFN, tp)
        self.fc2 = RowParallelLinear(FFN, D, tp, comm, hooks[0])

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(copy_to_tp(self.ln(x), self.comm, self.bwd_hook))))


class Head(nn.Module):
    """Vocabulary-parallel output layer: each rank's logits shard, gathered."""

    def __init__(self, tp: int, comm):
        super().__init__()
        self.comm = comm
        self.out = ColumnParallelLinear(D, VOCAB, tp, bias=False)

    def forward(self, x):
        return gather_from_tp(self.out(copy_to_tp(x, self.comm)), self.comm)


def build(tp=1, comm=None, hooks=(None, None)) -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList([nn.Embedding(VOCAB, D), *[Block(tp, comm, hooks) for _ in range(LAYERS)], Head(tp, comm)])


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g), torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def reference():
    model = build()
    x, y = data()
    h = x
    for layer in model:
        h = layer(h)
    loss = F.cross_entropy(h.flatten(0, 1), y.flatten())
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


def run(tp=1, pp=1, dp=1, schedule="gpipe", micro=4, hooks=(None, None), boundary=None):
    """This rank's loss (last stage, else None) and gradients, keyed as in the one-process model."""
    grid = build_grid(tp=tp, pp=pp, dp=dp)
    full = build()
    model = build(tp, grid.tp_comm, hooks)
    model.load_state_dict(shard_state(model, full.state_dict(), tp, grid.tp_rank))
    per_stage = (LAYERS + 2) // pp
    mine = list(range(grid.stage * per_stage, (grid.stage + 1) * per_stage))
    x, y = (t.chunk(dp)[grid.dp_rank] for t in data())
    xs, ys = x.chunk(micro), y.chunk(micro)

    def stage_fn(h, i):
        h = xs[i] if h is None else h
        for j in mine:
            h = model[j](h)
        return h

    loss = pipeline_step(
        stage_fn,
        lambda out, i: F.cross_entropy(out.flatten(0, 1), ys[i].flatten()) / micro,
        grid.pp_comm,
        grid.stage,
        pp,
        micro,
        (BATCH // dp // micro, SEQ, D),
        None if grid.first else grid.peer(grid.stage - 1),
        None if grid.last else grid.peer(grid.stage + 1),
        boundary,
        boundary,
        schedule,
    )
    params = [p for j in mine for p in model[j].parameters()]
    all_reduce_gradients(params, grid.dp_comm)
    ref_loss, ref_grads = reference()
    names = {f"{j}.{n}" for j in mine for n, _ in model[j].named_parameters()}
    want = shard_state(model, ref_grads, tp, grid.tp_rank)
    grads = {k: p.grad for k, p in model.named_parameters() if k in names}
    return {
        "loss": None if loss is None else float(loss),
        "ref_loss": ref_loss,
        "grad_err": max((grads[k] - want[k]).abs().max().item() for k in names),
        "n_grads": len(names),
        "grads": grads,
        "stage": grid.stage,
        "bytes": sum(c.total_wire_bytes() for c in grid.comms()),
    }


class CountingHook:
    """A plain sum that counts its calls (what a compressor's `reduce` replaces)."""

    def __init__(self):
        self.calls = 0

    def reduce(self, x, comm):
        self.calls += 1
        return comm.all_reduce(x.clone()) if comm is not None and comm.world_size > 1 else x.clone()


class HalfCodec:
    """A stage-boundary hook (what a compressor is): sends float32 copies of float64 tensors, counting calls."""

    trainable = False

    def __init__(self):
        self.encodes = self.decodes = 0

    def encode(self, x):
        self.encodes += 1
        return [x.detach().to(torch.float32)]

    def decode(self, payload, shape, dtype):
        self.decodes += 1
        return payload[0].to(dtype).reshape(shape)

    def payload_spec(self, shape, dtype):
        return [(shape, torch.float32)]


def _two(rank, world):
    torch.set_default_dtype(torch.float64)
    out = {"tp2": run(tp=2), "pp2_gpipe": run(pp=2), "pp2_1f1b": run(pp=2, schedule="1f1b"), "dp2": run(dp=2)}
    fwd, bwd = CountingHook(), CountingHook()
    run(tp=2, hooks=(fwd, bwd))
    out["tp_hook_calls"] = (fwd.calls, bwd.calls)
    codec_f, codec_b = HalfCodec(), HalfCodec()
    r = run(pp=2, schedule="1f1b", boundary=Boundary(codec_f, codec_b))
    out["pp_codec"] = (codec_f.encodes, codec_f.decodes, codec_b.encodes, codec_b.decodes, r["grad_err"])
    sizes = [4, 4096, 1 << 20]
    out["p2p"] = link_bench.ping_pong(sizes, repeats=5)
    out["all_reduce"] = link_bench.all_reduce(sizes, repeats=5)
    return out


def _four(rank, world):
    torch.set_default_dtype(torch.float64)
    return {
        "tp2xpp2_gpipe": run(tp=2, pp=2),
        "tp2xpp2_1f1b": run(tp=2, pp=2, schedule="1f1b"),
        "dp2xpp2_1f1b": run(dp=2, pp=2, schedule="1f1b"),
        "tp2xdp2": run(tp=2, dp=2),
    }


def _check(r, dp=1):
    assert r["grad_err"] < 1e-12, r["grad_err"]
    if r["loss"] is not None and dp == 1:  # a data-parallel replica's loss is that of its half of the batch
        assert abs(r["loss"] - r["ref_loss"]) < 1e-12


@pytest.fixture(scope="module")
def two():
    return run_processes(_two, 2, timeout_s=100)


@pytest.mark.timeout(120)
def test_tp2_pp2_dp2_equal_one_process_and_1f1b_equals_gpipe(two):
    for rank, res in enumerate(two):
        for name in ("tp2", "pp2_gpipe", "pp2_1f1b"):
            _check(res[name])
            assert (res[name]["loss"] is not None) == (name == "tp2" or rank == 1)
        assert res["dp2"]["grad_err"] < 1e-12  # the averaged gradient of the two halves is the full one
        assert res["tp2"]["bytes"] > 0 and res["pp2_gpipe"]["bytes"] > 0
        a, b = res["pp2_gpipe"]["grads"], res["pp2_1f1b"]["grads"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    dp_losses = [res["dp2"]["loss"] for res in two]
    assert sum(dp_losses) / 2 == pytest.approx(two[0]["dp2"]["ref_loss"], abs=1e-12)


@pytest.mark.timeout(120)
def test_hooks_run_at_every_communication_point_forward_and_backward(two):
    micro = 4
    for res in two:
        assert res["tp_hook_calls"] == (micro * LAYERS, micro * LAYERS)  # one reduce forward, one backward a block
    enc_f, dec_f, enc_b, dec_b, err = two[0]["pp_codec"]
    assert (enc_f, dec_b) == (micro, micro) and dec_f == enc_b == 0  # stage 0 encodes activations, decodes grads
    enc_f, dec_f, enc_b, dec_b, err = two[1]["pp_codec"]
    assert (dec_f, enc_b) == (micro, micro) and enc_f == dec_b == 0
    assert 0 < err < 1e-5  # the float32 boundary changes the float64 gradients a little: the hook was on the wire


@pytest.mark.timeout(120)
def test_link_micro_benchmark_times_grow_with_size_and_fit(two):
    for op in ("p2p", "all_reduce"):
        rows = two[0][op]
        assert rows == two[1][op] or op == "all_reduce"  # ping-pong rows are rank 0's, on every rank
        assert [r["bytes"] for r in rows] == [4, 4096, 1 << 20]
        assert all(r["seconds"] > 0 for r in rows) and rows[-1]["seconds"] > rows[0]["seconds"]
        fit = link_bench.fit_link(rows)
        assert fit.link.bandwidth_Bps > 0 and fit.link.latency_s >= 0


@pytest.fixture(scope="module")
def four():
    return run_processes(_four, 4, timeout_s=140)


@pytest.mark.timeout(150)
def test_tp2_x_pp2_and_dp_combinations_equal_one_process(four):
    for _rank, res in enumerate(four):
        for name, r in res.items():
            _check(r, dp=2 if "dp2" in name else 1)
    for name in ("dp2xpp2_1f1b", "tp2xdp2"):
        losses = [res[name]["loss"] for res in four if res[name]["loss"] is not None]
        assert len(losses) == (2 if name.startswith("dp2xpp2") else 4)
        assert sum(losses) / len(losses) == pytest.approx(four[0][name]["ref_loss"], abs=1e-12)
        a, b = res["tp2xpp2_gpipe"]["grads"], res["tp2xpp2_1f1b"]["grads"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_rank_layout_is_tensor_fastest_then_data_then_pipeline():
    g = rank_grid(pp=2, dp=3, tp=4)
    assert g.shape == (2, 3, 4) and g[1, 2, 3] == 23 and g[0, 1, 0] == 4 and g[1, 0, 0] == 12
    assert all(g[coords(r, 2, 3, 4)] == r for r in range(24))


def test_fit_link_recovers_latency_and_bandwidth():
    rows = [{"bytes": b, "seconds": 50e-6 + b / 2e9} for b in (4, 1 << 12, 1 << 16, 1 << 20, 1 << 23)]
    fit = link_bench.fit_link(rows)
    assert fit.link.latency_s == pytest.approx(50e-6, rel=1e-6)
    assert fit.link.bandwidth_Bps == pytest.approx(2e9, rel=1e-6) and fit.max_rel_error < 1e-6


@pytest.mark.parametrize("pp,micro", [(2, 4), (4, 8), (4, 2)])
def test_1f1b_order_runs_each_micro_batch_once_and_holds_fewer(pp, micro):
    for stage in range(pp):
        gp, fb = schedule_order("gpipe", pp, stage, micro), schedule_order("1f1b", pp, stage, micro)
        assert sorted(gp) == sorted(fb) and len(fb) == 2 * micro
        assert [i for k, i in fb if k == "B"] == list(range(micro))  # backwards in micro-batch order, as GPipe
        assert all(fb.index(("F", i)) < fb.index(("B", i)) for i in range(micro))
        assert in_flight("1f1b", pp, stage, micro) == min(pp - stage, micro) <= in_flight("gpipe", pp, stage, micro)
    assert schedule_order("1f1b", 4, 0, 8)[:5] == [("F", 0), ("F", 1), ("F", 2), ("F", 3), ("B", 0)]


def test_one_process_grid_needs_no_process_group():
    g = build_grid()
    assert (g.tp, g.pp, g.dp, g.first, g.last, g.comms()) == (1, 1, 1, True, True, [])
    with pytest.raises(Exception, match="must equal the number of processes"):
        build_grid(tp=2)
    assert isinstance(CountingComm(), CountingComm)
