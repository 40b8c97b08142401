"""Attention transfer (Zagoruyko & Komodakis 2017), as used by ZSKT."""

import torch
from torch.nn import functional as F

from .feature import match_spatial


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """Mean over channels of a^2, flattened and L2-normalised per sample."""
    return F.normalize(a.float().pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student_feats, teacher_feats):
    """Sum over layers of the batch-mean L2 distance between normalised attention maps."""
    total = 0.0
    for s, t in zip(student_feats, teacher_feats):
        total = total + (attention_map(match_spatial(s, t)) - attention_map(t)).norm(dim=1).mean()
    return total
