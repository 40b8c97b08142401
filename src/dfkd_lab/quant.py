"""Quantised students for DFQ-style transfer: fake quantisation while training, int8 at the end.

Built on torch.ao.quantization's FX graph mode, so any traceable student works unchanged
(no QuantStub edits): weights are fake-quantised per output channel (symmetric) to ``bits``
bits, activations per tensor (affine) to ``bits`` bits but at most 7 (see ``ACTIVATION_BITS``).
``to_int8`` converts the trained fake-quant model into a real quantised model (int8 storage and
kernels, CPU only); with ``bits`` < 8 its values still lie on the ``bits``-bit grid, stored in int8.
"""

import copy
import io
import warnings
from contextlib import contextmanager

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize, FakeQuantizeBase, QConfig, QConfigMapping
from torch.ao.quantization.observer import (
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)
from torch.fx.proxy import TraceError

from .config import ConfigError

# x86 int8 kernels on CPUs without VNNI (AVX2 only) add pairs of 8-bit x 8-bit products in 16
# bits, which saturate: the int8 model then departs from the fake-quant student (a LeNet-5-half
# output off by 28% of its range). 7-bit activations cannot saturate there, so the int8 model
# computes what the student did on every CPU (torch's x86 qconfigs do the same: reduce_range).
ACTIVATION_BITS = 7


def bits_problem(bits: int) -> str | None:
    """Why ``method.dfq.quant_bits`` cannot be used, or None."""
    return None if bits == 0 or 2 <= bits <= 8 else f"method.dfq.quant_bits={bits}: choose 0 (float) or 2..8 bits"


def qat_qconfig(bits: int) -> QConfig:
    if not 2 <= bits <= 8:
        raise ValueError(f"method.dfq.quant_bits={bits}: quantisation takes 2..8 bits")
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=2 ** min(bits, ACTIVATION_BITS) - 1,
        dtype=torch.quint8, qscheme=torch.per_tensor_affine,
    )
    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, quant_min=-(2 ** (bits - 1)), quant_max=2 ** (bits - 1) - 1,
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
    )
    return QConfig(activation=activation, weight=weight)


@contextmanager
def _quiet():
    """torch marks FX quantisation as deprecated in favour of PT2E, whose quantizers live outside
    torch now; the FX path works in torch 2.14 on CPU and GPU, so silence the notice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def prepare_qat(model: nn.Module, bits: int, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with fake quantisation on weights and activations, in train mode."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    mapping = QConfigMapping().set_global(qat_qconfig(bits))
    with _quiet():
        try:
            prepared = prepare_qat_fx(copy.deepcopy(model).train(), mapping, example_inputs=(example,))
        except TraceError as err:
            raise ConfigError(
                f"the student ({type(model).__name__}) cannot be quantised: torch.fx cannot trace its forward "
                f"({err}); quantisation rewrites the traced graph, so its forward must not branch on tensor "
                "values. Make it traceable, or keep the student float with method.dfq.quant_bits=0"
            ) from err
    with torch.no_grad():  # per-channel weight ranges exist from the start, so eval works before training
        for module in prepared.modules():
            if hasattr(module, "weight_fake_quant"):
                module.weight_fake_quant(module.weight)
    prepared.feature_layers = getattr(model, "feature_layers", ())
    return prepared


def to_int8(model: nn.Module) -> nn.Module:
    """The real quantised model of a fake-quant model (a CPU copy; the original is untouched)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quiet():
        return convert_fx(copy.deepcopy(model).cpu().float().eval())


def fake_quant_on(model: nn.Module) -> bool:
    """Whether ``model`` computes with fake quantisation now (the flag is a buffer: it survives a resume)."""
    return any(bool(m.fake_quant_enabled[0]) for m in model.modules() if isinstance(m, FakeQuantizeBase))


def model_bytes(model: nn.Module) -> int:
    """Size of the serialised state dict: what a user would ship."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
