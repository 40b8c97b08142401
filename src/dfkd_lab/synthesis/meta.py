"""FastDFKD (Fang et al. 2022): meta-learned generator for fast synthesis.

One meta generator is kept for the whole run. For each batch a copy of it is adapted for
only ``g_steps`` steps together with a fresh latent batch, and the adapted copy's images go
to the pool. The meta generator then moves so that adaptation from it gets faster:
first-order MAML (``meta=maml``: the sum of the copy's gradients over its steps) or REPTILE
(``meta=reptile``: towards the adapted weights). BatchNorm statistics are matched after
blending with an EMA over batches (``bn_momentum``, GeneratorInversion.bn_hooks), since a
batch from 2 steps of adaptation is too small a sample of the distribution. The meta generator, its optimiser
(held by Lightning) and the EMA travel in the checkpoint.
"""

import copy

import torch

from ..config import ConfigError
from .generator_inversion import GeneratorInversion


class MetaSynthesizer(GeneratorInversion):
    def __init__(self, g_steps: int = 2, meta: str = "maml", lr_meta: float | None = None,
                 bn_momentum: float = 0.9, **kwargs):
        super().__init__(bn_momentum=bn_momentum, **kwargs)
        if g_steps < 1:
            raise ConfigError(f"method.synthesizer.g_steps must be >= 1, got {g_steps}")
        if meta not in ("maml", "reptile"):
            raise ConfigError(f"method.synthesizer.meta={meta!r}: choose maml or reptile")
        self.g_steps, self.meta = g_steps, meta
        self.lr_meta = lr_meta if lr_meta is not None else self.lr_g * g_steps  # as the paper's code

    def build_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=self.lr_meta, betas=self.betas)]

    def make(self, ctx):
        meta_opt = ctx.optimizers[0]
        fast = copy.deepcopy(self.generator)
        z = self.randn(ctx.batch_size, self.nz, device=ctx.device).requires_grad_()
        targets = self.targets(ctx.batch_size, ctx.device)
        meta_opt.zero_grad()
        pairs = list(zip(self.generator.parameters(), fast.parameters()))

        def accumulate():  # first-order MAML: the copy's gradients, summed over its steps
            for p, q in pairs:
                if q.grad is not None:
                    p.grad = q.grad.clone() if p.grad is None else p.grad + q.grad

        images, self.last_terms = self.optimise(
            ctx, fast, z, targets, self.g_steps, [self.inner_optimizer(fast, z)],
            accumulate if self.meta == "maml" else None,
        )
        if self.meta == "reptile":
            for p, q in pairs:
                p.grad = (p - q).detach()
        meta_opt.step()
        return images, None
