"""Output-distribution terms used by generator and inversion methods."""

import torch
from torch.nn import functional as F


def one_hot_ce(logits: torch.Tensor):
    """Cross-entropy against the teacher's own argmax: rewards confident outputs (DAFL)."""
    return F.cross_entropy(logits.float(), logits.argmax(1))


def instance_entropy(logits: torch.Tensor):
    """Mean entropy of each sample's prediction (minimise for confident samples)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


def batch_entropy(logits: torch.Tensor):
    """Entropy of the batch-mean prediction (maximise for class balance)."""
    p = F.softmax(logits.float(), dim=1).mean(0)
    return -(p * p.clamp_min(1e-12).log()).sum()


def activation_l1(features: torch.Tensor):
    """Mean absolute activation (DAFL's 'a' term uses its negative)."""
    return features.float().abs().mean()
