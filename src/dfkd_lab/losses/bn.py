"""BatchNorm-statistics matching (DeepInversion's feature loss)."""

import torch


def channel_reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Every dimension of a BN input but the channel one (dim 1)."""
    return (0, *range(2, x.dim()))


def batch_stats(x: torch.Tensor):
    """Per-channel mean and biased variance of a BN input: over (N, H, W) for BatchNorm2d, over N
    for BatchNorm1d."""
    x = x.float()
    dims = channel_reduce_dims(x)
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=False)
    return mean, var


def bn_stat_loss(mean, var, running_mean, running_var):
    """||mu - running_mean||_2 + ||var - running_var||_2 for one layer (norms, not squared)."""
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)
