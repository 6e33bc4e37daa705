"""The privacy audit (`mpcformer.audit`) on real private inference runs: an honest run reveals only the logits,
only to the input owner, and no message holds a plaintext secret; a run with a deliberate leak in each batch
(the input to the model owner, an activation and a weight to the input owner, an activation to every party,
a plaintext send outside the protocol) is caught once per leak, with the line that leaked; TFP is refused."""

import numpy as np
import pytest
import torch

from common.errors import UserError
from mpcformer.audit import INPUT_OWNER, MODEL_OWNER, OPENING, PROTOCOL, REVEAL, find_leaks
from mpcformer.convert import to_student
from mpcformer.private_inference import PartyView, export_weights, private_inference


def _fixed_point(t: torch.Tensor) -> bytes:
    return torch.round(t.double() * 2**16).long().numpy().tobytes()


def _found(needle: bytes, messages: list[bytes], itemsize: int = 8) -> bool:
    """Whether `needle` occurs in a message at an element boundary (a byte-shifted match inside a tensor of
    random bits is a coincidence, not the value)."""
    for msg in messages:
        i = msg.find(needle)
        while i >= 0:
            if i % itemsize == 0:
                return True
            i = msg.find(needle, i + 1)
    return False


def test_search_finds_a_planted_secret_and_only_at_element_boundaries():
    secret = torch.randn(8)
    noise = np.random.default_rng(0).bytes(4096)
    assert _found(_fixed_point(secret), [noise + _fixed_point(secret)])
    assert not _found(_fixed_point(secret + 1), [noise + _fixed_point(secret)])
    assert not _found(_fixed_point(secret), [noise + b"\x00\x00" + _fixed_point(secret)])


@pytest.mark.timeout(180)
def test_an_honest_run_reveals_only_the_logits_to_the_input_owner(tiny, batch):
    ids, mask = batch
    student = to_student(tiny, "quad+2quad")
    with torch.no_grad():  # no all-zero biases or all-one LayerNorm weights: every weight is a distinct secret
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    res = private_inference(student, ids, mask, batch_size=2, timeout_s=90, audit=True, keep_bytes=True)
    assert res.leaks() == []
    traces = {r.rank: r.trace for r in res.reports}
    # the audit saw the whole protocol: masked openings, dealer traffic, and one reveal per batch
    assert {OPENING, PROTOCOL, REVEAL} <= {s.kind for t in traces.values() for s in t.sent}
    reveals = traces[INPUT_OWNER].revealed
    assert [r.shape for r in reveals] == [(2, 2), (1, 2)] and all(r.dst == INPUT_OWNER for r in reveals)
    assert torch.equal(torch.cat([r.value for r in reveals]), res.logits)
    assert all(r.value is None for r in traces[MODEL_OWNER].revealed)  # the model owner learned nothing

    # and no message holds a secret in plaintext or fixed point
    sent = {r.rank: r.sent for r in res.reports}
    assert sum(map(len, sent[1])) >= 0.5 * res.party(1).bytes  # the capture sees the traffic CrypTen counts
    one_hot = torch.nn.functional.one_hot(ids, 100).float()
    for b in range(ids.shape[0]):
        # (the raw 0/1 mask is not searched: ten 0/1 values occur by chance in messages of random bits)
        for needle in (ids[b].numpy().tobytes(), _fixed_point(mask[b].float())):
            assert not _found(needle, sent[1])
        for t in range(ids.shape[1]):
            assert not _found(_fixed_point(one_hot[b, t]), sent[1])
            assert not _found(one_hot[b, t].numpy().tobytes(), sent[1], itemsize=4)
    for name, w in export_weights(student).items():
        row = w.reshape(-1, w.shape[-1])[0] if w.dim() > 1 else w
        for rank in (0, 2):
            assert not _found(row.numpy().tobytes(), sent[rank], itemsize=4), f"{name} in what rank {rank} sent"
            assert not _found(_fixed_point(row), sent[rank]), f"{name} (fixed point) in what rank {rank} sent"


def leak_input_to_model_owner(view: PartyView) -> None:
    view.inputs.get_plain_text(dst=MODEL_OWNER)


def leak_activation_to_input_owner(view: PartyView) -> None:
    view.hidden.get_plain_text(dst=INPUT_OWNER)


def leak_weights_to_input_owner(view: PartyView) -> None:
    view.model.cls.weight.get_plain_text(dst=INPUT_OWNER)


def leak_activation_to_everyone(view: PartyView) -> None:
    view.hidden[:, 0].get_plain_text()


def send_outside_the_protocol(view: PartyView) -> None:
    """The model owner sends plaintext values straight through torch.distributed."""
    import torch.distributed as dist

    buf = torch.zeros(4)
    if view.rank == MODEL_OWNER:
        dist.send(buf + 1.0, dst=INPUT_OWNER)
    elif view.rank == INPUT_OWNER:
        dist.recv(buf, src=MODEL_OWNER)


MUTATIONS = [  # (the leak, what the audit must report)
    (leak_input_to_model_owner, "a (1, 10, 100) value was revealed to party 0"),
    (leak_activation_to_input_owner, "party 1 learned a (1, 10, 32) value that is not the logits"),
    (leak_weights_to_input_owner, "party 1 learned a (2, 32) value that is not the logits"),
    (leak_activation_to_everyone, "a (1, 32) value was revealed to every party"),
    (send_outside_the_protocol, "party 0 sent 4 values to party 1 outside the protocol"),
]


def every_leak(view: PartyView) -> None:
    if view.layer == 1:
        for leak, _ in MUTATIONS:
            leak(view)


@pytest.mark.timeout(180)
def test_the_audit_catches_each_deliberate_leak(tiny):
    """One run (one process start) in which every leak of MUTATIONS happens: each is reported, with its line."""
    g = torch.Generator().manual_seed(2)
    ids, mask = torch.randint(5, 100, (1, 10), generator=g), torch.ones(1, 10)
    res = private_inference(to_student(tiny, "quad+2quad"), ids, mask, timeout_s=90, audit=True, hook=every_leak)
    leaks = res.leaks()
    for fn, finding in MUTATIONS:
        assert any(finding in leak and f"test_privacy.py:{fn.__name__}" in leak for leak in leaks), (fn, leaks)
    assert len(leaks) == len(MUTATIONS), leaks  # nothing else is reported: the honest part of the run is clean


def test_tfp_is_refused_for_private_inference_and_flagged_by_the_audit(tiny, batch):
    ids, mask = batch
    with pytest.raises(UserError, match="timing only"):
        private_inference(to_student(tiny, "quad+2quad"), ids, mask, provider="TFP")
    assert any("TFP" in leak for leak in find_leaks({}, None, "TFP"))
