"""FastDFKD (Fang et al. 2022): meta-learned generator for fast synthesis.

One meta generator is kept for the whole run. For each batch a copy of it is adapted for
only ``g_steps`` steps together with a fresh latent batch, and the adapted copy's images go
to the pool. The meta generator then moves so that adaptation from it gets faster:
first-order MAML (``meta=maml``: the sum of the copy's gradients over its steps) or REPTILE
(``meta=reptile``: towards the adapted weights). BatchNorm statistics are matched after
blending with an EMA over batches (``bn_momentum``), since a batch from 2 steps of
adaptation is too small a sample of the distribution. The meta generator, its optimiser
(held by Lightning) and the EMA travel in the checkpoint.
"""

import copy

import torch

from .bn_hooks import BNStatHooks
from .generator_inversion import GeneratorInversion


class MetaSynthesizer(GeneratorInversion):
    def __init__(self, g_steps: int = 2, meta: str = "maml", lr_meta: float | None = None,
                 bn_momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        if g_steps < 1:
            raise ValueError(f"synthesizer.g_steps must be >= 1, got {g_steps}")
        if meta not in ("maml", "reptile"):
            raise ValueError(f"synthesizer.meta={meta!r}: choose maml or reptile")
        if not 0 <= bn_momentum < 1:
            raise ValueError(f"synthesizer.bn_momentum must be in [0, 1), got {bn_momentum}")
        self.g_steps, self.meta = g_steps, meta
        self.lr_meta = lr_meta if lr_meta is not None else self.lr_g * g_steps  # as the paper's code
        self.bn_momentum = bn_momentum
        self.bn_ema: dict = {}

    def build_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=self.lr_meta, betas=self.betas)]

    def bn_hooks(self, ctx):
        self.bn_ema = {i: (m.to(ctx.device), v.to(ctx.device)) for i, (m, v) in self.bn_ema.items()}
        return BNStatHooks(ctx.teacher, momentum=self.bn_momentum, ema=self.bn_ema)

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

    def get_extra_state(self):
        ema = {i: (m.cpu(), v.cpu()) for i, (m, v) in self.bn_ema.items()}
        return {**super().get_extra_state(), "bn_ema": ema}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.bn_ema = dict(state["bn_ema"])
