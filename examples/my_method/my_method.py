"""my_method: a small data-free method written outside dfkd-lab (see docs/extending.md).

Each synthesis step draws a target class per image, starts the batch from noise and takes a
few Adam steps on the pixels so the teacher picks the target class by a clear margin
(``logit_margin``, registered below) with its BatchNorm statistics matched (``bn``, built in);
the batch joins the pool the student distils from.
"""

import torch

from dfkd_lab.losses.registry import Lazy, compute_terms, register_loss
from dfkd_lab.losses.weighting import weighted_sum
from dfkd_lab.synthesis.bn_hooks import BNStatHooks
from dfkd_lab.synthesis.pool import PoolSynthesizer


@register_loss("logit_margin")
def logit_margin(teacher_logits, target_classes, margin):
    """Hinge on the target logit's lead over the best other class: zero once it leads by ``margin``."""
    logits = teacher_logits.float()
    target = logits.gather(1, target_classes[:, None]).squeeze(1)
    best_other = logits.scatter(1, target_classes[:, None], float("-inf")).amax(1)
    return torch.relu(margin - (target - best_other)).mean()


class MarginInversion(PoolSynthesizer):
    #: the loss.weights names this synthesizer optimises, in the order they are summed
    terms = ("target_ce", "bn", "logit_margin")

    def __init__(self, steps: int = 20, lr: float = 0.1, margin: float = 5.0, **pool):
        super().__init__(**pool)
        if steps < 1:
            raise ValueError(f"method.synthesizer.steps must be >= 1, got {steps}")
        self.steps, self.lr, self.margin = steps, lr, margin

    def make(self, ctx):
        targets = self.randint(self.num_classes, (ctx.batch_size,), device=ctx.device)
        x = self.randn(ctx.batch_size, *self.image_shape, device=ctx.device).requires_grad_()
        opt = torch.optim.Adam([x], lr=self.lr)
        with BNStatHooks(ctx.teacher) as bn:
            for _ in range(self.steps):
                bn.reset()
                terms = compute_terms(self.terms, ctx.weights, {
                    "teacher_logits": ctx.teacher(x), "target_classes": targets, "margin": self.margin,
                    "bn_layer_losses": Lazy(bn.layer_losses),
                })
                opt.zero_grad()
                ctx.backward(weighted_sum(terms, ctx.weights))
                opt.step()
                with torch.no_grad():
                    x.copy_(self.clip(x))  # stay in the data's normalised pixel range
        ctx.cost.add(teacher_forwards=self.steps)
        self.last_terms = {name: value.detach() for name, value in terms.items()}  # logged as synth/NAME
        return x.detach(), None  # images, and no soft targets to store with them
