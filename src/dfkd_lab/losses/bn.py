"""BatchNorm-statistics matching (DeepInversion's feature loss)."""

import torch


def batch_stats(x: torch.Tensor):
    """Per-channel mean and biased variance over (N, H, W) of a BN input."""
    x = x.float()
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    return mean, var


def bn_stat_loss(mean, var, running_mean, running_var):
    """||mu - running_mean||_2 + ||var - running_var||_2 for one layer (norms, not squared)."""
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)
