"""Image priors for input optimisation."""

import torch


def total_variation_l1(x: torch.Tensor):
    """Mean absolute difference between neighbouring pixels (both directions)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def total_variation_l2(x: torch.Tensor):
    """Root of summed squared neighbour differences per image, averaged over the batch."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).sum(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).sum(1)
    return (dh + dw).sqrt().mean()


def l2_norm(x: torch.Tensor):
    """Batch mean of each image's L2 norm."""
    return x.flatten(1).norm(dim=1).mean()
