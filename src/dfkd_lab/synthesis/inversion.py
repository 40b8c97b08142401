"""Input optimisation ("model inversion"): the one loop every inversion method shares.

Per batch: start from noise, then for ``iterations`` steps apply a random jitter
(``torch.roll`` by up to ``jitter`` pixels) and a random flip, run the frozen teacher on the
jittered input, and take an Adam step on the pixels for the weighted sum of

- the method's objective terms (``objective``: see ``synthesis/objectives.py``),
- ``bn``: BatchNorm-statistics matching (DeepInversion's feature loss),
- ``tv`` / ``tv_l2`` / ``l2``: image priors of the jittered view (losses/terms.py),

clipping the pixels to the valid normalised range after each step. The iterate with the
lowest loss is kept and goes to the pool. BN hooks live only for one batch. Losses are
computed in float32 even under bf16 autocast (the loss functions cast their inputs).
"""

from contextlib import ExitStack

import torch

from .. import stop
from ..config import ConfigError
from ..losses.registry import Lazy, compute_terms, reads
from ..losses.weighting import weighted_sum
from .base import LowestLoss, inner_step
from .bn_hooks import BNStatHooks
from .pool import PoolSynthesizer

PRIORS = ("tv", "tv_l2", "l2")


class InversionSynthesizer(PoolSynthesizer):
    def __init__(self, objective, iterations: int = 200, lr: float = 0.1, betas: tuple = (0.5, 0.9),
                 jitter: int = 2, flip: bool = True, init: str = "randn", **pool):
        super().__init__(**pool)
        if iterations < 1:
            raise ConfigError(f"method.synthesizer.iterations must be >= 1, got {iterations}")
        if init not in ("randn", "uniform"):
            raise ConfigError(f"method.synthesizer.init={init!r}: choose randn (normalised space) or uniform (pixels in [0, 1])")
        self.objective = objective
        self.terms = (*objective.terms, "bn", *PRIORS)
        self.iterations, self.lr, self.betas = iterations, lr, tuple(betas)
        self.jitter, self.flip, self.init = jitter, flip, init

    @property
    def stores_soft_targets(self) -> bool:
        return self.objective.stores_soft_targets

    def setup(self, image_shape, num_classes, value_range, teacher):
        super().setup(image_shape, num_classes, value_range, teacher)
        self.objective.setup(self, teacher)

    def bind_run(self, cfg):
        super().bind_run(cfg)
        self.objective.bind_run(cfg)

    def start(self, n: int, device) -> torch.Tensor:
        if self.init == "randn":
            return self.randn(n, *self.image_shape, device=device)
        low, high = self.value_low.to(device), self.value_high.to(device)
        return low + torch.rand(n, *self.image_shape, generator=self.rng).to(device) * (high - low)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """Random jitter and flip of the whole batch: the loss is taken on this view."""
        if self.jitter:
            dy, dx = (int(v) for v in torch.randint(-self.jitter, self.jitter + 1, (2,), generator=self.rng))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        if self.flip and bool(torch.rand((), generator=self.rng) < 0.5):
            x = x.flip(3)
        return x

    def make(self, ctx):
        w = ctx.weights
        goal = self.objective.goal(ctx.batch_size, ctx)
        x = self.start(ctx.batch_size, ctx.device).requires_grad_()
        opt = torch.optim.Adam([x], lr=self.lr, betas=self.betas)
        best = LowestLoss()
        with ExitStack() as stack:
            bn = stack.enter_context(BNStatHooks(ctx.teacher)) if reads(self.terms, w, "bn_layer_losses") else None
            taps = self.objective.taps(ctx, stack)
            for _ in range(self.iterations):
                stop.check()  # a batch takes minutes: honour SIGTERM/SIGINT within one iteration
                view = self.view(x)
                if bn is not None:
                    bn.reset()
                logits = ctx.teacher(view)
                inputs = self.objective.inputs(ctx, view, logits, taps, goal)
                terms = compute_terms(self.terms, w, {**inputs, "images": view,
                                                      "bn_layer_losses": Lazy(lambda: bn.layer_losses())})
                loss = weighted_sum(terms, w)
                best.offer(loss, x, terms)
                inner_step(ctx, loss, [opt])
                with torch.no_grad():
                    x.copy_(self.clip(x))
        ctx.student.zero_grad(set_to_none=True)  # a student term must not leak into the student update
        ctx.cost.add(teacher_forwards=self.iterations)
        self.objective.after_batch(ctx, best.images)
        self.last_terms = best.terms
        return best.images, self.objective.soft_targets(goal)

    def build_optimizers(self):
        return self.objective.build_optimizers()
