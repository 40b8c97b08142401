"""What each inversion method asks of the teacher's output: the objectives that plug into
``InversionSynthesizer``'s one optimisation loop.

An objective draws a per-batch goal (target classes, soft targets, activation samples),
offers what its named loss terms (losses/terms.py) read from the teacher's output on the
jittered batch, and says which soft targets (if any) are stored with the images in the pool.
"""

from contextlib import ExitStack

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ConfigError
from ..losses.registry import Lazy
from ..models.modes import eval_mode
from ..models.taps import FeatureTap


def balanced_classes(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Every class equally often (up to n % num_classes), in random order."""
    return torch.randperm(n, generator=generator) % num_classes


def balanced_pick(labels: torch.Tensor, n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``n`` rows of ``labels``, taken round-robin over the classes in random order:
    every class equally often as far as its rows allow, the others filling in for a rare one."""
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels.cpu()[order]
    rank = torch.empty_like(shuffled)  # how many rows of the same class come before this one
    for c in range(num_classes):
        mask = shuffled == c
        rank[mask] = torch.arange(int(mask.sum()))
    return order[torch.argsort(rank, stable=True)[:n]]


def classifier(teacher: nn.Module) -> nn.Linear:
    head = getattr(teacher, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"{type(teacher).__name__} has no final nn.Linear named 'classifier', whose weight this "
                          "method reads (its class vectors): name the teacher's final layer classifier")
    return head


def forked_seed(generator: torch.Generator) -> int:
    """A seed drawn from ``generator``, for samplers that only use the global RNG."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


class Objective(nn.Module):
    #: names in ``loss.weights`` this objective produces, in the order they are summed
    terms: tuple = ()
    #: whether the goal is a soft target stored with each image (the student's ``soft`` term reads it)
    stores_soft_targets: bool = False

    def setup(self, synth, teacher: nn.Module):
        self.rng, self.num_classes = synth.rng, synth.num_classes

    def bind_run(self, cfg):
        """Run-level settings (e.g. the teacher's zoo entry); most objectives need none."""

    def build_optimizers(self) -> list:
        return []

    def goal(self, n: int, ctx):
        raise NotImplementedError

    def taps(self, ctx, stack: ExitStack):
        """Enter the feature taps the terms read (hooks removed when the batch is done); None
        when the terms read only the logits."""

    def inputs(self, ctx, view, logits, taps, goal) -> dict:
        """What this objective's terms read, by input name (``Lazy`` for what costs a forward)."""
        raise NotImplementedError

    def soft_targets(self, goal):
        return goal if self.stores_soft_targets else None

    def after_batch(self, ctx, images):
        """Update anything learned across batches from the finished batch."""


class ClassTargets(Objective):
    """DeepInversion: ``target_ce`` = cross-entropy to balanced target classes. Adaptive
    DeepInversion adds ``comp`` = 1 - JS(T(x), S(x)) at ``comp_temperature``: images on which
    the frozen current student disagrees with the teacher are preferred."""

    terms = ("target_ce", "comp")

    def __init__(self, comp_temperature: float = 3.0):
        super().__init__()
        self.comp_temperature = comp_temperature

    def goal(self, n, ctx):
        return balanced_classes(n, self.num_classes, self.rng).to(ctx.device)

    def inputs(self, ctx, view, logits, taps, goal):
        def frozen_student():
            with eval_mode(ctx.student):
                return ctx.student(view)

        return {"teacher_logits": logits, "target_classes": goal, "student_logits": Lazy(frozen_student),
                "comp_temperature": self.comp_temperature}


class DirichletTargets(Objective):
    """ZSKD (Nayak et al. 2019): class similarity = cosine similarity of the classifier's weight
    vectors, min-max normalised per row; per image a target class c and a soft target drawn
    from Dirichlet(beta * similarity[c]), an equal share of the batch for each beta. ``match``
    = KL(target || softmax(T(x)/T)) * T^2; the soft targets are stored with the images."""

    terms = ("match",)
    stores_soft_targets = True

    def __init__(self, betas: tuple = (1.0, 0.1), temperature: float = 20.0, min_concentration: float = 1e-3):
        super().__init__()
        if not betas or min(betas) <= 0:
            raise ConfigError(f"method.synthesizer.objective.betas must be positive scales, got {betas}")
        self.betas, self.temperature, self.min_concentration = tuple(betas), temperature, min_concentration

    def setup(self, synth, teacher):
        super().setup(synth, teacher)
        w = F.normalize(classifier(teacher).weight.detach().float(), dim=1)
        sim = w @ w.t()
        low, high = sim.min(1, keepdim=True).values, sim.max(1, keepdim=True).values
        self.register_buffer("similarity", (sim - low) / (high - low).clamp_min(1e-12), persistent=False)

    def goal(self, n, ctx):
        classes = balanced_classes(n, self.num_classes, self.rng)
        beta = torch.tensor(self.betas)[torch.arange(n) * len(self.betas) // n]
        alpha = (beta[:, None] * self.similarity.cpu()[classes]).clamp_min(self.min_concentration)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(forked_seed(self.rng))
            targets = torch.distributions.Dirichlet(alpha).sample()
        return targets.to(ctx.device)

    def inputs(self, ctx, view, logits, taps, goal):
        return {"teacher_logits": logits, "soft_targets": goal, "match_temperature": self.temperature}


class FeatureGaussian(Objective):
    """Wang (2021), soft targeted transfer set synthesis. The teacher's pre-classifier feature
    is modelled as f = sum_c a_c w_c/|w_c| with a ~ N(0, D R D): R = cosine similarity of the
    classifier's weight vectors, D = diag(exp(log_d)) learned by maximum likelihood of the
    coefficients of the teacher's own features on the synthesised images. Sampled features
    through the classifier give soft targets; ``match`` = KL(target || softmax(T(x))) and
    ``activation`` = -mean |last conv output| (strong activations, as in DAFL).

    ``oversample`` > 1 (not in the paper) draws that many times more features than needed and
    keeps a class-balanced share by the targets' argmax: the learned scales drift towards the
    classes the images already look like, and a class the targets stop naming is one the
    student forgets. 1 samples as the paper does."""

    terms = ("match", "activation")
    stores_soft_targets = True

    def __init__(self, lr_d: float = 0.05, d_steps: int = 5, oversample: int = 1):
        super().__init__()
        if oversample < 1:
            raise ConfigError(f"method.synthesizer.objective.oversample must be >= 1, got {oversample}")
        self.lr_d, self.d_steps, self.oversample = lr_d, d_steps, oversample

    def setup(self, synth, teacher):
        super().setup(synth, teacher)
        head = classifier(teacher)
        self.head = [head]  # a plain list: the teacher's layer must not become part of this module
        directions = F.normalize(head.weight.detach().float(), dim=1)
        correlation = directions @ directions.t()
        eye = torch.eye(correlation.shape[0])
        self.register_buffer("directions", directions, persistent=False)
        self.register_buffer("chol", torch.linalg.cholesky(correlation + 1e-4 * eye), persistent=False)
        self.log_d = nn.Parameter(torch.zeros(correlation.shape[0]))
        convs = [name for name, m in teacher.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{type(teacher).__name__} has no Conv2d layer for the activation term")
        self.last_conv = convs[-1]

    def build_optimizers(self):
        return [torch.optim.Adam([self.log_d], lr=self.lr_d)]

    def goal(self, n, ctx):
        z = torch.randn(n * self.oversample, self.directions.shape[0], generator=self.rng).to(ctx.device)
        with torch.no_grad():
            a = (z @ self.chol.t()) * self.log_d.exp()
            head = self.head[0]
            logits = (a @ self.directions) @ head.weight.float().t() + head.bias.float()
        if self.oversample > 1:
            logits = logits[balanced_pick(logits.argmax(1), n, self.num_classes, self.rng).to(logits.device)]
        return F.softmax(logits, dim=1)

    def taps(self, ctx, stack):
        return stack.enter_context(FeatureTap(ctx.teacher, [self.last_conv]))

    def inputs(self, ctx, view, logits, taps, goal):
        return {"teacher_logits": logits, "soft_targets": goal, "match_temperature": 1.0,
                "teacher_feature": Lazy(lambda: taps.features[0])}

    def after_batch(self, ctx, images):
        """A few Adam steps on log D: the Gaussian log-likelihood of the coefficients of the
        teacher's features of ``images`` (least squares on the class directions)."""
        with torch.no_grad(), FeatureTap(ctx.teacher, ["classifier"], capture="input") as tap:
            ctx.teacher(images)
            features = tap.features[0].float()
            coeffs = torch.linalg.lstsq(self.directions.t(), features.t()).solution.t()
        opt = ctx.optimizers[0]
        for _ in range(self.d_steps):
            scaled = torch.linalg.solve_triangular(self.chol, (coeffs / self.log_d.exp()).t(), upper=False)
            nll = 0.5 * scaled.pow(2).sum(0).mean() + self.log_d.sum()
            opt.zero_grad()
            ctx.backward(nll)
            opt.step()
        ctx.cost.add(teacher_forwards=1)
