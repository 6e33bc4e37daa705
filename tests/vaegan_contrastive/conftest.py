import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every DC-VAE test on one torch thread: small tensors, and OpenMP spin-waiting on a shared 2-core
    machine otherwise makes them minutes slower."""
    yield
