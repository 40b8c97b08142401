"""Feature-based distillation: FitNet hints through a learned projection."""

import torch
from torch.nn import functional as F


def match_spatial(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Average-pool ``x`` to the spatial size of ``like`` when they differ."""
    if x.dim() == 4 and x.shape[-2:] != like.shape[-2:]:
        return F.adaptive_avg_pool2d(x, like.shape[-2:])
    return x


def hint_mse(projected_student: torch.Tensor, teacher_feature: torch.Tensor):
    """MSE between the projected student feature and the teacher feature (same shape)."""
    return F.mse_loss(match_spatial(projected_student.float(), teacher_feature), teacher_feature.float())
