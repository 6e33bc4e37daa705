"""Each fix in crypten_compat is needed: without it CrypTen fails on this torch, and with it it works."""

import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from common.distributed import free_port, run_processes
from mpcformer import crypten_compat


def test_import_needs_the_onnx_alias():
    without = subprocess.run([sys.executable, "-c", "import crypten"], capture_output=True, text=True, timeout=120)
    assert without.returncode != 0 and "torch.onnx._internal.registration" in without.stderr
    with_fix = subprocess.run(
        [sys.executable, "-c", "from mpcformer import crypten_compat as c; c.crypten()"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert with_fix.returncode == 0, with_fix.stderr[-2000:]


def test_from_pytorch_needs_the_torchscript_exporter():
    ct = crypten_compat.crypten()
    model, x = torch.nn.Linear(4, 2), torch.randn(1, 4)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch's new exporter raises on CrypTen's path
        crypten_compat.ORIGINALS["export"](io.BytesIO(), model, x)
    assert type(ct.nn.from_pytorch(model, x)).__name__ == "Graph"


def test_decode_is_exact_for_negative_values():
    crypten_compat.apply()
    from crypten.encoder import FixedPointEncoder

    enc = FixedPointEncoder(precision_bits=16)
    x = torch.tensor([-8.99994, -0.5, -1.0, -3.00002, 2.5, 0.0, -7.99999])
    encoded = enc.encode(x)
    torch.testing.assert_close(enc.decode(encoded), x, atol=2e-5, rtol=0)
    wrong = crypten_compat.ORIGINALS["decode"](enc, encoded)
    assert (wrong - x).abs().max() > 0.99  # the original decode is 1.0 too low on some of them
    # a 64x64 fixed-point product, truncated as CrypTen does, decodes right everywhere
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 64, generator=g) * 4, torch.randn(64, 64, generator=g) * 4
    product = (enc.encode(a) @ enc.encode(b)).div(enc.scale, rounding_mode="floor")
    torch.testing.assert_close(enc.decode(product), a @ b, atol=5e-3, rtol=0)
    assert (crypten_compat.ORIGINALS["decode"](enc, product) - a @ b).abs().max() > 0.99


def _lonely_party(rank, world_size, port, out_dir):
    """Rank 0 joins with the timeout fix, rank 1 with CrypTen's original communicator; neither has a peer."""
    crypten_compat.apply()
    import crypten.communicator.distributed_communicator as dc

    if rank == 1:
        dc.DistributedCommunicator.__init__ = crypten_compat.ORIGINALS["communicator_init"]
    start = time.monotonic()
    try:
        crypten_compat.join_party(0, 2, f"tcp://127.0.0.1:{port + rank}", "TFP", timeout_s=3)
    finally:
        (Path(out_dir) / f"rank{rank}.done").write_text(f"{time.monotonic() - start:.2f}")


@pytest.mark.timeout(120)
def test_a_missing_peer_ends_the_wait_within_the_timeout():
    with tempfile.TemporaryDirectory() as out:
        with pytest.raises(Exception):  # noqa: B017 - the party fails with whatever CrypTen raises on timeout
            run_processes(_lonely_party, 2, args=(free_port(), out), init_group=False, timeout_s=60, grace_s=4)
        waited = float((Path(out) / "rank0.done").read_text())
        assert 2.5 < waited < 30  # the fixed communicator gave up after its 3 s timeout
        assert not (Path(out) / "rank1.done").exists()  # the original was still waiting when killed
