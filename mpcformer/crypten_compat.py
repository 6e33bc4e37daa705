"""Everything CrypTen 0.4.1 (its last release) needs to run on torch 2.x, applied in one place.

Import CrypTen through `crypten_compat.crypten()` (or call `apply()` before `import crypten`):

1. `torch.onnx._internal.registration` moved to `torch.onnx._internal.torchscript_exporter.registration`;
   CrypTen imports the old name, so it is aliased before CrypTen is imported.
2. `crypten.nn.from_pytorch` exports through `torch.onnx.export`, whose default is now the dynamo exporter;
   CrypTen's converter needs the TorchScript exporter, so `dynamo=False` is passed.
3. `FixedPointEncoder.decode` divides negative values by `scale - 1` and then corrects the remainder, which
   leaves some negative values exactly 1.0 too low; it is replaced by an exact floor division.
4. Parties forked after a multi-threaded torch op hang: `party_threads()` sets torch to one thread.
5. CrypTen's communicator forms its process group without a timeout, so a party that dies leaves the
   others waiting forever; the group is formed with `comm_timeout_s()` (env `CRYPTEN_COMM_TIMEOUT_S`,
   default 300 s), which bounds the rendezvous and every collective.

`join_party()` sets the environment CrypTen's communicator reads and joins a computation as a party or as
the trusted third party (TTP) that deals multiplication triples.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import os
import sys
from types import ModuleType

import torch

_APPLIED = False
ORIGINALS: dict = {}  # what `apply()` replaced, kept so that tests can show each fix is needed
TIMEOUT_ENV = "CRYPTEN_COMM_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 300.0
PROVIDERS = ("TTP", "TFP")


def _alias_onnx_registration() -> None:
    old, new = "torch.onnx._internal.registration", "torch.onnx._internal.torchscript_exporter.registration"
    if old in sys.modules:
        return
    try:
        importlib.import_module(old)
    except ModuleNotFoundError:
        sys.modules[old] = importlib.import_module(new)


def exact_decode(self, tensor):
    """Fixed point to float: floor(t / scale) + (t mod scale) / scale, exact for negative values too."""
    if tensor is None:
        return None
    if tensor.is_floating_point():
        raise TypeError("input must be a LongTensor")
    if self._scale > 1:
        quotient = tensor.div(self._scale, rounding_mode="floor")
        remainder = tensor - quotient * self._scale
        tensor = quotient.float() + remainder.float() / self._scale
    else:
        tensor = tensor.float() if self._scale == 1 else tensor
    return tensor.data


def _export_torchscript(f, pytorch_model, dummy_input):
    from crypten.nn import onnx_converter
    from torch.onnx import OperatorExportTypes

    torch.onnx.export(
        pytorch_model,
        dummy_input,
        f,
        do_constant_folding=False,
        export_params=True,
        input_names=["input"],
        operator_export_type=OperatorExportTypes.ONNX,
        output_names=["output"],
        opset_version=onnx_converter._OPSET_VERSION,
        dynamo=False,
    )
    return f


def comm_timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def _communicator_init(self, init_ttp: bool = False) -> None:
    """CrypTen's `DistributedCommunicator.__init__` with a timeout on the group and on every collective."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    for key in ["distributed_backend", "rendezvous", "world_size", "rank"]:
        if key.upper() not in os.environ:
            raise ValueError(f"Environment variable {key.upper()} must be set.")
        setattr(self, key, os.environ[key.upper()])
    self.world_size, self.rank = int(self.world_size), int(self.rank)
    self.reset_communication_stats()
    self._name = f"rank{self.rank}"
    timeout = _dt.timedelta(seconds=comm_timeout_s())
    total = self.world_size + 1 if init_ttp else self.world_size
    dist.init_process_group(
        backend=self.distributed_backend, init_method=self.rendezvous, world_size=total, rank=self.rank, timeout=timeout
    )
    self.ttp_group = dist.new_group(list(range(total)), timeout=timeout)
    if total > 1:
        self.ttp_comm_group = dist.new_group([0, total - 1], timeout=timeout)
    self.main_group = dist.new_group(list(range(self.world_size)), timeout=timeout)
    self.ttp_initialized = init_ttp


def apply() -> None:
    """Apply every fix once; safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _alias_onnx_registration()
    import crypten.communicator.distributed_communicator as dc
    import crypten.encoder
    import crypten.nn.onnx_converter

    ORIGINALS.update(
        decode=crypten.encoder.FixedPointEncoder.decode,
        export=crypten.nn.onnx_converter._export_pytorch_model,
        communicator_init=dc.DistributedCommunicator.__init__,
    )
    crypten.encoder.FixedPointEncoder.decode = exact_decode
    crypten.nn.onnx_converter._export_pytorch_model = _export_torchscript
    dc.DistributedCommunicator.__init__ = _communicator_init
    _APPLIED = True


def crypten() -> ModuleType:
    """The CrypTen module with every fix applied."""
    apply()
    import crypten as _crypten

    return _crypten


def party_threads(n: int = 1) -> None:
    """Use `n` torch threads in this process (1 before parties are forked, or they may hang)."""
    torch.set_num_threads(n)


def join_party(
    rank: int,
    parties: int,
    rendezvous: str,
    provider: str = "TTP",
    timeout_s: float | None = None,
    verbose: bool = True,
) -> ModuleType | None:
    """Join a CrypTen computation of `parties` parties at `rendezvous` (e.g. 'tcp://127.0.0.1:29500').

    With provider "TTP" rank `parties` is the dealer: it serves triples until party 0 ends the computation
    and returns None. Parties get the CrypTen module back (communication statistics on when `verbose`).
    "TFP" (a trusted first party generates the randomness) measures the online phase only.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown CrypTen provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if timeout_s is not None:
        os.environ[TIMEOUT_ENV] = str(timeout_s)
    os.environ.update(
        {"DISTRIBUTED_BACKEND": "gloo", "RENDEZVOUS": rendezvous, "WORLD_SIZE": str(parties), "RANK": str(rank)}
    )
    party_threads(1)
    ct = crypten()
    ct.cfg.mpc.provider = provider
    ct.cfg.communicator.verbose = verbose
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    if provider == "TTP" and rank == parties:
        ct.mpc.provider.TTPServer()  # returns when party 0 says "terminate" or a party is gone
        return None
    ct.init()
    return ct


def leave_party() -> None:
    """Leave the computation (party 0 also stops the dealer)."""
    import crypten as _crypten

    if _crypten.communicator.is_initialized():
        _crypten.uninit()
