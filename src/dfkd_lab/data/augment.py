"""Batch-wise tensor augmentation (random crop with padding, horizontal flip).

Tensor ops on the whole batch cost far less than per-image PIL transforms at this scale,
and they serve real batches and synthetic pools alike.
"""

import torch
from torch.nn import functional as F


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
