"""Batch-wise tensor augmentation: random crop with padding, horizontal flip, mixup, and the
adversarial push that moves synthetic inputs toward teacher-student disagreement.

Tensor ops on the whole batch cost far less than per-image PIL transforms at this scale,
and they serve real batches and synthetic pools alike.
"""

import torch
from torch.nn import functional as F

from ..losses.kd import kd_kl
from ..models.modes import eval_mode


def crop_flip(x: torch.Tensor, pad: int = 0, flip: bool = False, generator=None) -> torch.Tensor:
    n, _, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def mixup(x: torch.Tensor, soft_targets: torch.Tensor | None = None, generator=None):
    """Each image blended with another of the batch, weight ~ Uniform(0, 1) per image.

    For distillation from a pool the teacher labels the blend itself, so every draw is a new
    input between two synthetic ones: the pool's few thousand images cover far more of the
    teacher's input space. Stored soft targets are blended with the same weights.
    """
    n = x.shape[0]
    partner = torch.randperm(n, generator=generator).to(x.device)
    lam = torch.rand(n, generator=generator).to(x.device, x.dtype)
    mixed = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner]
    if soft_targets is not None:
        lam = lam.to(soft_targets.dtype).view(-1, 1)
        soft_targets = lam * soft_targets + (1 - lam) * soft_targets[partner]
    return mixed, soft_targets


def adversarial_push(x, teacher, student, eps: float, temperature: float = 1.0, generator=None):
    """One signed-gradient step up the teacher-student KL, of size ~ U(0, eps) per image.

    A synthetic pool covers few of the inputs where the student still disagrees with the
    teacher; each draw moved toward them is a new, informative input for the teacher to label.
    Only the images get gradients: neither network's ``.grad`` nor a student BatchNorm's
    running statistics are touched (the student is evaluated in eval mode for this step)."""
    with eval_mode(student), torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = kd_kl(student(x), teacher(x), temperature)
        (grad,) = torch.autograd.grad(loss, x)
    size = eps * torch.rand(x.shape[0], generator=generator).to(x.device, x.dtype)
    return (x + size.view(-1, 1, 1, 1) * grad.sign()).detach()
