"""Generator-based synthesis (DAFL, ZSKT, DFAD, DFQ): a fresh batch from G(z) at every step.

The generator loss is a weighted sum of named terms (losses/terms.py); which ones a method
uses is only a matter of ``loss.weights``:

- ``argmax_ce``: cross-entropy of the teacher against its own argmax (confident samples)
- ``ie``: minus the entropy of the batch-mean prediction (class balance)
- ``activation``: minus the mean absolute pre-logit feature of the teacher (DAFL)
- ``ent``: mean per-sample entropy (DFQ)
- ``bn``: BatchNorm-statistics matching (DFQ)
- ``adversarial_kl``: minus KL(T || S): seek samples where the student disagrees (ZSKT, DFQ)
- ``adversarial_l1``: minus the L1 distance between logits (DFAD)

``n_generators`` > 1 trains an ensemble (DFQ); each generator makes an equal share of a batch.
``augment_mixup`` gives the student blends of generated images (data/augment.py) instead of
the images; ``replay`` > 0 keeps that many past generated images and fills half of each
student batch from them, so the student does not forget what earlier generators showed it
(adversarial methods chase the student's current weaknesses and drift).
"""

from contextlib import nullcontext

import torch
from torch import nn

from ..config import ConfigError
from ..data.augment import mixup
from ..losses.registry import Lazy, compute_terms, reads
from ..losses.weighting import weighted_sum
from ..models.generators import Generator
from ..models.modes import eval_mode
from ..models.taps import penultimate_tap
from .base import SynthBatch, Synthesizer
from .bn_hooks import BNStatHooks
from .pool import ImagePool


class GeneratorSynthesizer(Synthesizer):
    terms = ("argmax_ce", "ie", "activation", "ent", "bn", "adversarial_kl", "adversarial_l1")

    def __init__(self, nz: int = 100, ngf: int = 64, out: str = "tanh_bn", lr: float = 1e-3,
                 betas: tuple = (0.5, 0.999), n_generators: int = 1, reuse: int = 1,
                 grad_clip: float = 0.0, preview_size: int = 64, augment_mixup: bool = False, replay: int = 0):
        super().__init__()
        if n_generators < 1 or reuse < 1:
            raise ConfigError("method.synthesizer.n_generators and method.synthesizer.reuse must be >= 1")
        self.nz, self.ngf, self.out = nz, ngf, out
        self.lr, self.betas = lr, tuple(betas)
        self.n_generators, self.reuse, self.grad_clip = n_generators, reuse, grad_clip
        self.preview_size, self.augment_mixup = preview_size, augment_mixup
        if replay < 0:
            raise ConfigError(f"method.synthesizer.replay must be >= 0 (images kept), got {replay}")
        self.memory = ImagePool(replay) if replay else None
        self._cache: SynthBatch | None = None
        self._cache_uses = 0

    def setup(self, image_shape, num_classes, value_range, teacher):
        super().setup(image_shape, num_classes, value_range, teacher)
        channels, size, _ = image_shape
        self.generators = nn.ModuleList(
            Generator(self.nz, self.ngf, size, channels, self.out) for _ in range(self.n_generators)
        )
        fixed = torch.randn(self.preview_size, self.nz, generator=torch.Generator().manual_seed(1234))
        self.register_buffer("fixed_z", fixed)

    def build_optimizers(self):
        return [torch.optim.Adam(g.parameters(), lr=self.lr, betas=self.betas) for g in self.generators]

    def generate(self, n: int, device) -> torch.Tensor:
        """``n`` fresh images, shared out over the generators."""
        shares = [n // self.n_generators + (i < n % self.n_generators) for i in range(self.n_generators)]
        return torch.cat([g(self.randn(k, self.nz, device=device)) for g, k in zip(self.generators, shares) if k])

    def synthesize(self, ctx):
        w = ctx.weights
        self.generators.train()
        x = self.generate(ctx.batch_size, ctx.device)
        use_bn, use_feature = reads(self.terms, w, "bn_layer_losses"), reads(self.terms, w, "teacher_feature")
        with (penultimate_tap(ctx.teacher) if use_feature else nullcontext()) as feat, \
                (BNStatHooks(ctx.teacher) if use_bn else nullcontext()) as bn:
            t_logits = ctx.teacher(x)
            terms = compute_terms(self.terms, w, {
                "teacher_logits": t_logits,
                "teacher_feature": Lazy(lambda: feat.features[0]),
                "bn_layer_losses": Lazy(lambda: bn.layer_losses()),
                # a student ensemble (DFQ) stacks its members' logits: the terms take their mean
                "student_logits": Lazy(lambda: ctx.student(x)),
                "temperature": ctx.temperature,
            })
        loss = weighted_sum(terms, w)
        for opt in ctx.optimizers:
            opt.zero_grad()
        ctx.backward(loss)
        for g, opt in zip(self.generators, ctx.optimizers):
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(g.parameters(), self.grad_clip)
            opt.step()
        ctx.student.zero_grad(set_to_none=True)  # the adversarial term must not leak into the student
        ctx.cost.add(images=x.shape[0], teacher_forwards=1)
        self._cache, self._cache_uses = SynthBatch(x.detach(), t_logits.detach()), 0
        if self.memory is not None:
            self.memory.add(x.detach())
        return {k: v.detach() for k, v in terms.items()}

    def batch(self, n, ctx):
        if self._cache is None or self._cache_uses >= self.reuse or self._cache.images.shape[0] != n:
            with torch.no_grad():
                self._cache = SynthBatch(self.generate(n, ctx.device))
            self._cache_uses = 0
            ctx.cost.add(images=n)
        self._cache_uses += 1
        if self.memory is None and not self.augment_mixup:
            return self._cache
        images = self._cache.images
        if self.memory is not None:  # half fresh, half from earlier generators
            images = torch.cat([images[: n - n // 2], self.memory.sample(n // 2, self.rng)[0].to(images.device)])
        if self.augment_mixup:
            images = mixup(images, generator=self.rng)[0]
        return SynthBatch(images)  # the teacher labels these in the student step

    def get_extra_state(self):
        state = super().get_extra_state()
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        return state

    def set_extra_state(self, state):
        super().set_extra_state(state)
        if self.memory is not None and "memory" in state:
            self.memory.load_state_dict(state["memory"])

    @torch.no_grad()
    def preview(self, n, device):
        per = max(1, n // self.n_generators)
        with eval_mode(self.generators):
            return torch.cat([g(self.fixed_z[:per].to(device)) for g in self.generators])[:n]
