"""The fast CIFAR network of Jordan, *94% on CIFAR-10 in 3.29 Seconds on a Single GPU* (2024):
a frozen patch-whitening convolution and three conv-pool-BatchNorm groups (widths 64, 256,
256). Its per-image cost is WRN-16-2's, but it reaches a given accuracy in a fraction of the
epochs, which is what a CIFAR-10 teacher trained on a CPU needs (docs/cifar10_cpu.md).

The whitening layer is fitted to training images (``fit_to_images``) before training starts;
its weights are then fixed (they travel in the state dict like any other)."""

import torch
from torch import nn

from .registry import register


def dirac_conv(cin: int, cout: int) -> nn.Conv2d:
    """A 3x3 convolution whose first ``cin`` filters start as the identity: an implicit residual
    path at initialisation, which lets a plain (unbranched) stack train fast."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    nn.init.dirac_(conv.weight.data[: min(cin, cout)])
    return conv


def shift_only_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with its scale fixed at 1 and only its shift learned; its running statistics
    follow the last few batches (a run of a few hundred steps has no time for a slow average)."""
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    norm.weight.requires_grad_(False)
    return norm


class ConvGroup(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            dirac_conv(cin, cout), nn.MaxPool2d(2), shift_only_norm(cout), nn.GELU(),
            dirac_conv(cout, cout), shift_only_norm(cout), nn.GELU(),
        )


class AirBench(nn.Module):
    feature_layers = ("group1", "group2", "group3")
    #: the logits are scaled down so that a high learning rate does not saturate the softmax
    logit_scale = 1 / 9
    patch = 2  # the whitening kernel's size
    #: the BatchNorm shifts learn this many times faster than the weights (their scale is fixed)
    norm_shift_lr_scale = 64

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(64, 256, 256)):
        super().__init__()
        whitened = 2 * in_channels * self.patch**2
        self.whiten = nn.Conv2d(in_channels, whitened, self.patch, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        self.group1 = ConvGroup(whitened, widths[0])
        self.group2 = ConvGroup(widths[0], widths[1])
        self.group3 = ConvGroup(widths[1], widths[2])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Linear(widths[2], num_classes, bias=False)

    @torch.no_grad()
    def fit_to_images(self, images: torch.Tensor, eps: float = 5e-4):
        """Set the whitening filters from the images' patch covariance: each eigenvector scaled
        by 1/sqrt(eigenvalue), and its negative (the GELU after it keeps both signs)."""
        c, k = images.shape[1], self.patch
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def parameter_groups(self) -> list[dict]:
        """The optimiser's groups: the BatchNorm shifts at ``norm_shift_lr_scale`` times the
        learning rate (optim.py reads ``lr_scale``), every other trained weight at 1x."""
        shifts = [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        shift_ids = {id(s) for s in shifts}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in shift_ids]
        return [{"params": shifts, "lr_scale": self.norm_shift_lr_scale}, {"params": rest}]

    def forward(self, x):
        x = self.group3(self.group2(self.group1(self.act(self.whiten(x)))))
        return self.classifier(self.pool(x).flatten(1)) * self.logit_scale


@register("airbench")
def airbench(num_classes=10, in_channels=3):
    return AirBench(num_classes, in_channels)
