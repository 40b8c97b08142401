"""One BatchNorm-statistics hook for every method that matches BN statistics.

Hooks on each BatchNorm (1d or 2d) of the (eval-mode) teacher read the layer's input, compute
the batch mean and biased variance per channel and compare them with the running statistics.
Under DDP the moments are all-reduced (with gradients) so the statistics are those of the
global batch, not of each GPU's slice.
"""

import torch
import torch.distributed as dist
from torch import nn

from ..losses.bn import batch_stats, bn_stat_loss, channel_reduce_dims
from .base import is_distributed


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward passes the gradient through unchanged.

    Every rank computes the same loss from the summed moments; torch's differentiable
    all_reduce would sum those identical gradients again, scaling the BN term by the world
    size relative to the per-rank terms. Each rank's pixels get exactly the gradient the
    single-process loss on the global batch would give them.
    """

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


def _global_stats(x: torch.Tensor):
    if not is_distributed():
        return batch_stats(x)
    x = x.float()
    dims = channel_reduce_dims(x)
    count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
    dist.all_reduce(count)
    moments = _SumOverRanks.apply(torch.stack([x.sum(dim=dims), x.pow(2).sum(dim=dims)]))
    mean = moments[0] / count
    return mean, moments[1] / count - mean.pow(2)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers (1d and 2d), in module order: those whose statistics are matched."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class BNStatHooks:
    """Context manager: ``with BNStatHooks(teacher) as bn: teacher(x); loss = bn.loss()``.

    ``momentum`` > 0 blends each batch's statistics with an EMA of earlier batches before
    comparing (FastDFKD); the EMA lives in ``self.ema`` and can be saved and restored.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.0, ema: dict | None = None):
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm layer to match statistics of")
        self.momentum = momentum
        self.ema = ema if ema is not None else {}
        self.losses: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        self._handles = []

    def __enter__(self):
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._hook(index)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.losses, self.inputs = [], []

    def _hook(self, index):
        def hook(module, args, output):
            x = args[0]
            self.inputs.append(x)
            mean, var = _global_stats(x)
            if self.momentum > 0:
                if index in self.ema:
                    old_mean, old_var = self.ema[index]
                    mean = self.momentum * old_mean + (1 - self.momentum) * mean
                    var = self.momentum * old_var + (1 - self.momentum) * var
                self.ema[index] = (mean.detach(), var.detach())
            self.losses.append(bn_stat_loss(mean, var, module.running_mean.float(), module.running_var.float()))
        return hook

    def reset(self):
        """Forget the last forward (call between two forwards inside one context)."""
        self.losses, self.inputs = [], []

    def layer_losses(self) -> list[torch.Tensor]:
        """One statistics gap per BN layer of the last forward (the ``bn`` term sums them)."""
        if not self.losses:
            raise RuntimeError("BNStatHooks: no teacher forward inside the context yet")
        return self.losses

