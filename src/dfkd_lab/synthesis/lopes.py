"""Lopes et al. (2017): metadata recorded when the teacher is made, inverted later.

At teacher time one pass over the real training data records, per class, the mean and
standard deviation of every Conv2d / Linear layer's output (per channel: spatial means for
conv layers). It is stored in the teacher's zoo entry (``metadata["activations"]``). Later
``ActivationMetadata`` draws a target class and, per layer, a target activation from that
class's statistics, and the inversion loop optimises inputs so the teacher's activations
match them (``meta``). This is the only method that keeps anything from the real data.
"""

import torch
from torch import nn

from ..config import ConfigError
from ..losses.registry import register_loss
from ..models.modes import eval_mode
from ..models.taps import FeatureTap
from ..zoo import zoo_entry
from .objectives import Objective, balanced_classes

KEY = "activations"


def activation_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def summarise(feature: torch.Tensor) -> torch.Tensor:
    """One number per unit: the spatial mean for a conv feature map."""
    feature = feature.float()
    return feature.mean(dim=(2, 3)) if feature.dim() == 4 else feature


@torch.no_grad()
def record_activation_stats(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            num_classes: int, batch_size: int = 1024) -> dict:
    """Per-class mean/std of each layer's (summarised) output over one pass of ``images``."""
    layers = activation_layers(model)
    device = next(model.parameters()).device
    sums, squares = {}, {}
    counts = torch.bincount(labels, minlength=num_classes).double()
    with eval_mode(model), FeatureTap(model, layers) as tap:
        for start in range(0, len(images), batch_size):
            y = labels[start:start + batch_size]
            model(images[start:start + batch_size].to(device))
            for name, feature in zip(layers, tap.features):
                v = summarise(feature).double().cpu()
                if name not in sums:
                    sums[name] = torch.zeros(num_classes, v.shape[1], dtype=torch.float64)
                    squares[name] = torch.zeros_like(sums[name])
                sums[name].index_add_(0, y, v)
                squares[name].index_add_(0, y, v * v)
    stats = {}
    for name in layers:
        mean = sums[name] / counts[:, None].clamp_min(1)
        std = (squares[name] / counts[:, None].clamp_min(1) - mean.pow(2)).clamp_min(0).sqrt()
        stats[name] = {"mean": mean.float().round(decimals=5).tolist(), "std": std.float().round(decimals=5).tolist()}
    return {"layers": stats, "class_counts": counts.long().tolist(),
            "note": "per-class mean/std of each Conv2d/Linear output (conv: spatial mean per channel), "
                    "one pass over the real training split"}


@register_loss("meta")
def meta(layer_activations, activation_targets, activation_stds):
    """Per layer, the mean squared distance between the teacher's (summarised) activations and
    their sampled targets, over the layer's mean recorded variance so every layer counts alike."""
    total = 0.0
    for feature, target, std in zip(layer_activations, activation_targets, activation_stds):
        total = total + (summarise(feature) - target).pow(2).mean() / std.pow(2).mean().clamp_min(1e-8)
    return total


class ActivationMetadata(Objective):
    """``meta``: the teacher's activations against targets sampled from the recorded statistics
    of the image's target class."""

    terms = ("meta",)

    def bind_run(self, cfg):
        t = cfg.teacher
        if not t.zoo or t.ckpt:
            raise ConfigError("method=lopes reads activation metadata from a zoo teacher: set teacher=<zoo entry> "
                              "(with no teacher.ckpt override)")
        self.load(zoo_entry(t.zoo, cfg.paths.zoo_dir).metadata.get(KEY), t.zoo)

    def load(self, metadata: dict | None, name: str = "the teacher"):
        if not metadata:
            raise ConfigError(f"teacher.zoo={name} has no recorded activation metadata: run "
                              f"`python -m dfkd_lab.record_metadata {name}` (or train it with method.export.record_metadata=true)")
        self.layers = list(metadata["layers"])
        for i, layer in enumerate(self.layers):
            stats = metadata["layers"][layer]
            self.register_buffer(f"mean{i}", torch.tensor(stats["mean"]), persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(stats["std"]), persistent=False)

    def goal(self, n, ctx):
        classes = balanced_classes(n, self.num_classes, self.rng)
        targets = []
        for i in range(len(self.layers)):
            mean, std = getattr(self, f"mean{i}").cpu(), getattr(self, f"std{i}").cpu()
            noise = torch.randn(n, mean.shape[1], generator=self.rng)
            targets.append((mean[classes] + std[classes] * noise).to(ctx.device))
        return targets

    def taps(self, ctx, stack):
        return stack.enter_context(FeatureTap(ctx.teacher, self.layers))

    def inputs(self, ctx, view, logits, taps, goal):
        return {"layer_activations": taps.features, "activation_targets": goal,
                "activation_stds": [getattr(self, f"std{i}") for i in range(len(self.layers))]}
