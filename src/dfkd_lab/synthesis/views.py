"""Differentiable random views of a synthetic batch (CMI's global and local views).

Gradients flow back to the images, so a generator can be optimised through the views.
Randomness comes from the caller's ``torch.Generator``, so a resumed run draws the same views.
"""

import math

import torch
from torch.nn import functional as F

from ..data.augment import crop_flip


def global_view(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding, and random horizontal flip."""
    return crop_flip(x, pad, flip, generator)


def local_view(x: torch.Tensor, generator: torch.Generator, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3),
               flip: bool = True) -> torch.Tensor:
    """Random resized crop: a box covering ``scale`` of the area at aspect ``ratio``, resized
    back to the input size (bilinear), optionally flipped."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the full side
    height = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)  # box centre in [-1, 1] coords
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
