"""Fine-tuning: exact resume (weights, optimizer, RNG and compressor state) and the pretrained weights."""

import torch

from compression.models import BertModel, minilm_config
from compression.parallel import Parallel
from compression.train import (
    TrainConfig,
    batch_indices,
    finetune,
    initial_weights,
    load_data,
)


def _cfg(**kw):
    base = {"layers": 1, "seq_len": 12, "batch_size": 8, "steps": 4, "max_eval": 16, "dropout": 0.1, "start_layer": 0}
    return TrainConfig(**{**base, "compressor": {"name": "randk", "ratio": 0.5}, **kw})


def test_resume_is_exact(tmp_path):
    data = load_data(_cfg())
    straight = finetune(0, 1, _cfg(), data)
    first = finetune(0, 1, _cfg(checkpoint_dir=str(tmp_path), checkpoint_every=2, stop_after=2), data)
    assert first["steps_run"] == 2 and "test_acc" not in first
    resumed = finetune(0, 1, _cfg(checkpoint_dir=str(tmp_path), checkpoint_every=2), data)
    assert resumed["steps_run"] == 2
    assert first["losses"] + resumed["losses"] == straight["losses"]
    for k, v in straight["params"].items():
        assert torch.equal(v, resumed["params"][k]), k
    assert resumed["test_acc"] == straight["test_acc"]


def test_minilm_weights_load_and_match_transformers():
    """Our encoder with all-MiniLM-L6-v2's weights computes what transformers' BertModel computes."""
    from transformers import AutoModel

    from common.data import minilm_path

    cfg = TrainConfig(layers=6, dropout=0.0)
    model = BertModel(minilm_config(6, 0.0), Parallel(), cfg.plan())
    model.load_state_dict(initial_weights(cfg, model))
    model.eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 2307, 102, 0, 0]])
    mask = (ids != 0).long()
    hf = AutoModel.from_pretrained(str(minilm_path())).eval()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        x = model.stage.embeddings(ids)
        bias = torch.zeros(mask.shape).masked_fill(mask == 0, float("-inf"))[:, None, None, :]
        for layer in model.stage.layers.values():
            x = layer(x, bias)
    torch.testing.assert_close(x[mask.bool()], want[mask.bool()], atol=1e-4, rtol=1e-4)


def test_batches_are_a_function_of_the_step():
    a = [batch_indices(s, 100, 32, 0) for s in range(6)]
    assert all(len(b) == 32 for b in a)
    assert len(set(a[0]) | set(a[1]) | set(a[2])) == 96  # one epoch without repeats
    assert (batch_indices(4, 100, 32, 0) == a[4]).all() and not (a[3] == a[0]).all()


def _ae_step(rank, world):
    """One SGD step of a TP=2 model whose every all-reduce goes through an auto-encoder, per rank or shared."""
    from compression.compressors import CompressorSpec
    from compression.models import BertConfig, Plan
    from compression.parallel import setup
    from compression.train import forward_backward

    cfg = BertConfig(vocab=40, hidden=16, heads=4, ffn=32, layers=2, max_positions=12, dropout=0.0)
    par = setup(2, 1)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (4, 6), generator=g)
    out = {}
    for shared in (False, True):
        torch.manual_seed(rank)  # different shards on the two ranks (the auto-encoders start equal: their own seed)
        model = BertModel(cfg, par, Plan(CompressorSpec("autoencoder", d=4, shared=shared)))
        par.tp_comm.reset()
        forward_backward(model, par, ids, torch.ones_like(ids), torch.tensor([0, 1, 0, 1]))
        enc = model.stage.layers["0"].attn.o.compressor.encoder.weight
        out[shared] = (enc.grad.clone(), par.tp_comm.total_bytes())
    return out


def test_autoencoder_per_rank_encoders_train_apart_and_shared_ones_together():
    from common.distributed import run_processes

    r0, r1 = run_processes(_ae_step, 2, timeout_s=60)
    assert not torch.allclose(r0[False][0], r1[False][0])  # the study's: each rank's encoder sees its partial sum
    torch.testing.assert_close(r0[True][0], r1[True][0])  # shared: the summed gradient on every rank
    torch.testing.assert_close(r0[True][0], r0[False][0] + r1[False][0])
    # sharing costs one all-reduce of the encoder gradient (4 x 16 floats) per site: 2 layers x 2 sites
    assert r0[True][1] - r0[False][1] == 2 * 2 * 4 * 16 * 4


def test_warmup_steps_train_uncompressed_first():
    """`warmup_steps` (the study's warm-up): those steps see no compressor at all; compression starts after them."""
    from compression.compressors import CompressorSpec
    from compression.models import BertConfig, Plan, uncompressed

    cfg = BertConfig(vocab=40, hidden=16, heads=4, ffn=32, layers=2, max_positions=12, dropout=0.0)
    torch.manual_seed(0)
    plain = BertModel(cfg, Parallel(), Plan(CompressorSpec("none")))
    torch.manual_seed(0)
    squeezed = BertModel(cfg, Parallel(), Plan(CompressorSpec("quantize", bits=2), start_layer=0))
    squeezed.load_state_dict(plain.state_dict())
    ids, mask = torch.randint(0, 40, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    with uncompressed(squeezed):
        assert torch.equal(squeezed(ids, mask), plain(ids, mask))
    assert not torch.allclose(squeezed(ids, mask), plain(ids, mask))  # the compressors are back
    data = load_data(_cfg())
    spec = {"name": "quantize", "bits": 2}
    warm, none = (
        finetune(0, 1, _cfg(compressor=c, steps=2), data) for c in ({**spec, "warmup_steps": 2}, {"name": "none"})
    )
    assert warm["losses"] == none["losses"]  # every step inside the warm-up: as if uncompressed
    cold = finetune(0, 1, _cfg(compressor=spec, steps=2), data)
    assert cold["losses"] != none["losses"]
