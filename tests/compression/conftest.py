import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(autouse=True)
def _eager_quantizer(monkeypatch):
    """The quantizer runs eagerly in tests (no compile time in each test process, spawned ones included);
    tests/compression/test_fused.py checks the compiled path against it."""
    from compression import fused

    monkeypatch.setenv("COMPRESSION_COMPILE", "0")
    monkeypatch.setitem(fused._state, "compiled", None)
    yield
