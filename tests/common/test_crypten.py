"""CrypTen 0.4.1 imports on torch 2.x through mpcformer.crypten_compat, and two real parties multiply."""

import pytest
import torch

from common.distributed import free_port, run_processes


def _party(rank, world_size, port, a, b):
    import os

    from mpcformer import crypten_compat

    crypten_compat.party_threads(1)
    os.environ.update(
        {
            "DISTRIBUTED_BACKEND": "gloo",
            "RENDEZVOUS": f"tcp://127.0.0.1:{port}",
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
        }
    )
    crypten = crypten_compat.crypten()
    crypten.init()
    x = crypten.cryptensor(a, src=0)  # party 0 owns a
    y = crypten.cryptensor(b, src=1)  # party 1 owns b
    z = (x * y).get_plain_text()
    m = (x @ y.t()).get_plain_text()
    crypten.uninit()
    return z, m


@pytest.mark.timeout(180)
def test_two_party_multiply_decrypts_to_plaintext():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 6, generator=g) * 3, torch.randn(4, 6, generator=g) * 3
    results = run_processes(_party, 2, args=(free_port(), a, b), init_group=False, timeout_s=150)
    for z, m in results:
        torch.testing.assert_close(z, a * b, atol=1e-3, rtol=0)
        torch.testing.assert_close(m, a @ b.t(), atol=5e-3, rtol=0)
