"""Relation-based distillation: FSP matrices between pairs of layers (Yim et al. 2017)."""

import torch

from .feature import match_spatial


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """G[i, j] = mean over positions of a_i * b_j; ``a`` is pooled to ``b``'s spatial size."""
    a = match_spatial(a.float(), b)
    n, ca, h, w = a.shape
    return torch.bmm(a.reshape(n, ca, h * w), b.float().reshape(n, b.shape[1], h * w).transpose(1, 2)) / (h * w)


def fsp_loss(student_feats, teacher_feats):
    """Sum over consecutive layer pairs of mean squared difference of FSP matrices."""
    total = 0.0
    for i in range(len(teacher_feats) - 1):
        gs = fsp_matrix(student_feats[i], student_feats[i + 1])
        gt = fsp_matrix(teacher_feats[i], teacher_feats[i + 1])
        total = total + (gs - gt).pow(2).mean()
    return total
