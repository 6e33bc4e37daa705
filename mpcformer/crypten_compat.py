"""Everything CrypTen 0.4.1 (its last release) needs to run on torch 2.x, applied in one place.

Import CrypTen through `crypten_compat.crypten()` (or call `apply()` before `import crypten`):

1. `torch.onnx._internal.registration` moved to `torch.onnx._internal.torchscript_exporter.registration`;
   CrypTen imports the old name, so it is aliased before CrypTen is imported.
2. `crypten.nn.from_pytorch` exports through `torch.onnx.export`, whose default is now the dynamo exporter;
   CrypTen's converter needs the TorchScript exporter, so `dynamo=False` is passed.
3. `FixedPointEncoder.decode` divides negative values by `scale - 1` and then corrects the remainder, which
   leaves some negative values exactly 1.0 too low; it is replaced by an exact floor division.
4. Parties forked after a multi-threaded torch op hang: `party_threads()` sets torch to one thread.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

_APPLIED = False


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
    from torch.onnx import OperatorExportTypes

    from crypten.nn import onnx_converter

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


def apply() -> None:
    """Apply every fix once; safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _alias_onnx_registration()
    import crypten.encoder
    import crypten.nn.onnx_converter

    crypten.encoder.FixedPointEncoder.decode = exact_decode
    crypten.nn.onnx_converter._export_pytorch_model = _export_torchscript
    _APPLIED = True


def crypten() -> ModuleType:
    """The CrypTen module with every fix applied."""
    apply()
    import crypten as _crypten

    return _crypten


def party_threads(n: int = 1) -> None:
    """Use `n` torch threads in this process (1 before parties are forked, or they may hang)."""
    torch.set_num_threads(n)
