"""Generator inversion into a pool (CMI, FastDFKD): a generator and its latents are optimised
against the teacher for a few steps, and the batch they end on goes to the image pool.

The loss of one inner step is a weighted sum of named terms (losses/terms.py):

- ``target_ce``: cross-entropy of the teacher on the global view against the batch's target classes
- ``bn``: BatchNorm-statistics matching on that forward
- ``adversarial_kl_agreement``: minus KL(T || S) at temperature 1, only where teacher and
  student agree on the class (``loss.temperature`` is the student's KD temperature; at T=20
  the T^2 factor would swamp the other terms)
"""


import torch
from torch import nn

from .. import stop
from ..config import ConfigError
from ..losses.registry import Lazy, compute_terms
from ..losses.weighting import weighted_sum
from ..models.generators import Generator
from .base import LowestLoss, inner_step
from .bn_hooks import BNStatHooks
from .objectives import balanced_classes, forked_seed
from .pool import PoolSynthesizer
from .views import global_view


def dcgan_init(m: nn.Module):
    """Weights N(0, 0.02), BN scales N(1, 0.02), biases 0: a fresh generator starts from
    near-grey images instead of saturated noise."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def keep_pytorch_init(m: nn.Module):
    """Leave the weights PyTorch drew."""


# synthesizer.init: what each module of a generator gets after PyTorch built or reset it
# (module-level functions, so a synthesizer still pickles, e.g. for spawned DDP processes)
INITIALISERS = {"default": keep_pytorch_init, "dcgan": dcgan_init}


class GeneratorInversion(PoolSynthesizer):
    terms = ("target_ce", "bn", "adversarial_kl_agreement")

    def __init__(self, nz: int = 256, ngf: int = 64, lr_g: float = 1e-3, lr_z: float = 1e-3,
                 betas: tuple = (0.5, 0.999), view_pad: int = 2, view_flip: bool = False,
                 init: str = "default", bn_momentum: float = 0.0, **pool):
        super().__init__(**pool)
        if init not in INITIALISERS:
            raise ConfigError(f"method.synthesizer.init must be one of {sorted(INITIALISERS)}, got {init!r}")
        if not 0 <= bn_momentum < 1:
            raise ConfigError(f"method.synthesizer.bn_momentum must be in [0, 1), got {bn_momentum}")
        self.bn_momentum = bn_momentum
        self.bn_ema: dict = {}  # per BN layer (mean, var) of earlier batches, when bn_momentum > 0
        self.initialise = INITIALISERS[init]
        self.nz, self.ngf = nz, ngf
        self.lr_g, self.lr_z, self.betas = lr_g, lr_z, tuple(betas)
        self.view_pad, self.view_flip = view_pad, view_flip

    def setup(self, image_shape, num_classes, value_range, teacher):
        super().setup(image_shape, num_classes, value_range, teacher)
        channels, size, _ = image_shape
        self.generator = Generator(self.nz, self.ngf, size, channels, out="sigmoid")
        self.generator.apply(self.initialise)

    def reinitialise(self, module: nn.Module):
        """Fresh weights drawn from this synthesizer's RNG (so a resumed run draws the same),
        in place (so the memory format the module chose is kept)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(forked_seed(self.rng))
            for m in module.modules():
                if m is not module and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                self.initialise(m)

    def inner_optimizer(self, generator, z) -> torch.optim.Optimizer:
        return torch.optim.Adam([{"params": generator.parameters(), "lr": self.lr_g},
                                 {"params": [z], "lr": self.lr_z}], betas=self.betas)

    def targets(self, n: int, device) -> torch.Tensor:
        """Balanced target classes, shuffled."""
        return balanced_classes(n, self.num_classes, self.rng).to(device)

    def to_pixels(self, x01: torch.Tensor) -> torch.Tensor:
        """Map the generator's [0, 1] output to the dataset's normalised pixel range."""
        low, high = self.value_low.to(x01.device, x01.dtype), self.value_high.to(x01.device, x01.dtype)
        return low + x01 * (high - low)

    def step_inputs(self, ctx, x, targets, bn: BNStatHooks) -> dict:
        """What the terms of one inner step read: the teacher on the global view of ``x``;
        subclasses add theirs."""
        view = global_view(x, self.view_pad, self.view_flip, self.rng)
        t_logits = ctx.teacher(view)
        ctx.cost.add(teacher_forwards=1)
        return {"teacher_logits": t_logits, "target_classes": targets,
                "bn_layer_losses": Lazy(lambda: bn.layer_losses()),
                "student_logits": Lazy(lambda: ctx.student(view))}

    def step_terms(self, ctx, x, targets) -> dict:
        """The weighted terms of one inner step."""
        with self.bn_hooks(ctx) as bn:
            return compute_terms(self.terms, ctx.weights, self.step_inputs(ctx, x, targets, bn))

    def bn_hooks(self, ctx) -> BNStatHooks:
        """The teacher's BN hooks; with ``bn_momentum`` > 0 each batch's statistics are blended
        with an EMA over earlier batches first (FastDFKD, NAYER): a batch from a few steps of
        optimisation is too small a sample of the distribution."""
        if not self.bn_momentum:
            return BNStatHooks(ctx.teacher)
        self.bn_ema = {i: (m.to(ctx.device), v.to(ctx.device)) for i, (m, v) in self.bn_ema.items()}
        return BNStatHooks(ctx.teacher, momentum=self.bn_momentum, ema=self.bn_ema)

    def optimise(self, ctx, generator, z, targets, steps: int, optimizers, after_backward=None):
        """Run ``steps`` inner steps; return the lowest-loss batch (detached) and its terms."""
        best = LowestLoss()
        for _ in range(steps):
            stop.check()  # honour SIGTERM/SIGINT within one inner step, not at the end of the round
            x = self.to_pixels(generator(z))
            terms = self.step_terms(ctx, x, targets)
            loss = weighted_sum(terms, ctx.weights)
            best.offer(loss, x, terms)
            inner_step(ctx, loss, optimizers, after_backward)
        ctx.student.zero_grad(set_to_none=True)  # the adversarial term must not leak into the student
        return best.images, best.terms

    def get_extra_state(self):
        ema = {i: (m.cpu(), v.cpu()) for i, (m, v) in self.bn_ema.items()}
        return {**super().get_extra_state(), "bn_ema": ema}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.bn_ema = dict(state.get("bn_ema", {}))  # checkpoints from before the EMA moved here have none
