"""DataFreeDistillation: the one training loop shared by every data-free method.

Per training batch: the synthesizer improves itself against the frozen teacher (and the
student); then the student takes ``student_steps`` updates on synthetic batches. Each
optimiser updates only its own parameters (manual optimisation).
The real training split is never built; evaluation uses the real test split.

A "step" (``trainer.global_step``, ``trainer.max_steps``, every logged step) is one student
update: the synthesizer's optimisers step through the strategy without being counted.
"""

import copy
import math
import time
from contextlib import contextmanager

import hydra
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, IterableDataset

from .. import stop
from ..config import ConfigError
from ..data.augment import adversarial_push
from ..losses.registry import compute_terms, reads
from ..losses.weighting import weighted_sum
from ..models.taps import with_stages
from ..optim import build_optimizer, build_schedule
from ..synthesis.base import CostMeter, SynthContext, is_distributed
from ..synthesis.proxy import seed_pool_with_proxy
from .base import DistillationModule


def as_list(items) -> list:
    """Lightning hands back a single optimiser or schedule bare, several in a list."""
    return items if isinstance(items, list) else [items]


class SynthesisDiverged(RuntimeError):
    """A collapsed generator: stop before the checkpoints are spoiled."""


class UncountedOptimizer:
    """A synthesizer's optimiser, stepped through the strategy (so mixed precision's loss
    scaling still applies) but not counted as a training step: steps are student updates."""

    def __init__(self, optimizer, module):
        self.optimizer, self.module = optimizer, module

    def step(self, closure=None):
        return self.module.trainer.strategy.optimizer_step(self.optimizer, closure or (lambda: None), self.module)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


# A synthesis round that took longer than this may be stopped half-way by SIGTERM/SIGINT: the
# state from before it is kept in memory and put back before the checkpoint is written.
ABORTABLE_AFTER_S = 1.0


class StepStream(IterableDataset):
    """Data-free training iterates over steps, not data. Iterable, so under DDP every rank
    runs every step (each on its own synthetic batch) instead of a shard of them."""

    def __init__(self, steps: int):
        self.steps = steps

    def __iter__(self):
        return iter(range(self.steps))

    def __len__(self):
        return self.steps


class StepLoader(DataLoader):
    """The epoch's synthesis rounds. A round does not depend on its index, so the loader has no
    position to save: a mid-epoch resume runs the rounds Lightning's own progress says are left.
    Declaring that (an empty state) tells Lightning the loader resumes, and keeps its warning
    that a mid-epoch resume is unreliable out of every data-free resume."""

    def __init__(self, steps: int):
        super().__init__(StepStream(steps), batch_size=None)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class DataFreeDistillation(DistillationModule):
    student_terms = ("kd", "soft", "l1", "at")

    @classmethod
    def config_blocks(cls, method) -> tuple:
        return ("synthesis",)

    def __init__(self, student, method, loss, num_classes, teacher, synthesizer, image_shape,
                 value_range, seed: int = 0):
        if method.synthesis.adversarial_eps < 0:
            raise ConfigError(f"method.synthesis.adversarial_eps={method.synthesis.adversarial_eps}: give a step size >= 0 (0 = off)")
        self.synthesizer_terms = synthesizer.terms
        super().__init__(student, method, loss, num_classes, teacher)
        synthesizer.setup(image_shape, num_classes, value_range, teacher)
        self.synthesizer = synthesizer
        self.cost = CostMeter()
        self.seed = seed
        self.automatic_optimization = False
        self._collapsed_rounds = 0
        self._last_round_s = None  # seconds of the last synthesis round
        self.proxy_record: dict = {}  # what a proxy= seeded the pool with, for the run's metrics

    def known_terms(self):
        return (*self.student_terms, *self.synthesizer_terms)

    @classmethod
    def unbound(cls, cfg, student, teacher, data):
        """The module as configured, not yet tied to a run dir: its transfer set is not opened
        (what reads a finished run without writing to it needs)."""
        if cfg.method.synthesizer is None:
            raise ValueError(f"method={cfg.method.name} is data-free but has no method.synthesizer")
        synthesizer = hydra.utils.instantiate(cfg.method.synthesizer, _convert_="all")
        return cls(student, cfg.method, cfg.loss, data.num_classes, teacher, synthesizer,
                   data.image_shape, data.value_range, cfg.seed)

    @classmethod
    def from_config(cls, cfg, student, teacher, data):
        module = cls.unbound(cfg, student, teacher, data)
        module.synthesizer.bind_run(cfg)
        if cfg.get("proxy") is not None:
            module.proxy_record = seed_pool_with_proxy(module.synthesizer, cfg, data, module.teacher, module.cost)
        return module

    def train_dataloader_from(self, data):
        if self.method.synthesis.steps_per_epoch < 1:
            raise ValueError("method.synthesis.steps_per_epoch must be >= 1 for a data-free method")
        return StepLoader(self.method.synthesis.steps_per_epoch)

    # --- set-up ---------------------------------------------------------------------------
    def setup(self, stage=None):
        super().setup(stage)
        # Per-rank seeds: with one shared seed every GPU would synthesise the same images.
        self.synthesizer.seed(self.seed * 1_000_003 + self.global_rank)

    def configure_optimizers(self):
        """The student's optimiser first, then the synthesizer's. With
        ``method.synthesis.follow_student_schedule`` the synthesizer's learning rates follow the student's
        schedule: an adversarial generator at full rate outruns a student whose rate has decayed."""
        student_opt = build_optimizer(self.student_parameters(), self.method)
        synth_opts = self.synthesizer.build_optimizers()
        scheduled = [student_opt, *(synth_opts if self.method.synthesis.follow_student_schedule else [])]
        steps = self.total_student_steps()
        return [student_opt, *synth_opts], [build_schedule(opt, self.method, steps) for opt in scheduled]

    def total_student_steps(self) -> int:
        batches = self.trainer.estimated_stepping_batches  # training batches, at most max_steps
        epochs = max(1, self.trainer.max_epochs or 1)
        if not math.isfinite(batches):
            batches = self.method.synthesis.steps_per_epoch * epochs
        trained = batches * max(0, epochs - self.method.synthesis.warmup_epochs) / epochs
        steps = int(trained * self.method.synthesis.student_steps)
        if self.trainer.max_steps not in (None, -1):
            steps = min(steps, self.trainer.max_steps)  # max_steps counts student updates too
        return max(1, steps)

    # --- the loop -------------------------------------------------------------------------
    def _context(self, synth_opts):
        return SynthContext(
            teacher=self.teacher, student=self.student, weights=self.weights,
            backward=self.manual_backward, optimizers=[UncountedOptimizer(o.optimizer, self) for o in synth_opts],
            cost=self.cost,
            device=self.device, batch_size=self.method.synthesis.batch_size,
            temperature=self.loss_cfg.temperature, epoch=self.current_epoch,
        )

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def training_step(self, step, batch_idx):
        student_opt, *synth_opts = as_list(self.optimizers())
        ctx = self._context(synth_opts)
        start = time.perf_counter()
        with self._stoppable_round():
            terms = self.synthesizer.synthesize(ctx)
        self._sync()
        self._last_round_s = time.perf_counter() - start
        self.cost.add(synthesis_s=self._last_round_s)
        self.check_finite(terms, "synthesis")
        self.log_dict({f"synth/{k}": v for k, v in terms.items()})
        if self.current_epoch < self.method.synthesis.warmup_epochs:
            return
        start = time.perf_counter()
        for _ in range(self.method.synthesis.student_steps):
            terms, t_logits = self._student_step(student_opt, ctx)
        self._sync()
        self.cost.add(kd_s=time.perf_counter() - start)
        self._check_collapse(t_logits)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True)

    @contextmanager
    def _stoppable_round(self):
        """A long synthesis round stops within one inner iteration of a stop signal: the state
        from before the round is put back and the run stops as Lightning does between two steps
        (saving last.ckpt). Not under DDP, where every rank must stop at the same point."""
        if is_distributed() or (self._last_round_s is not None and self._last_round_s < ABORTABLE_AFTER_S):
            yield
            return
        before = self._snapshot()
        try:
            with stop.abortable():
                yield
        except stop.StopRequested:
            self._restore(before)
            raise SIGTERMException from None

    def _tensors(self):
        """Weights and buffers a round may change (generators, the student's BatchNorm statistics,
        the cost counters); the frozen teacher's never change. Pools are not among them: a pool
        grows only once a round is complete."""
        return [(k, v) for k, v in [*self.named_parameters(), *self.named_buffers()] if not k.startswith("teacher.")]

    def _snapshot(self) -> dict:
        return {
            "tensors": {k: v.detach().clone() for k, v in self._tensors()},
            "optimizers": [copy.deepcopy(o.optimizer.state_dict()) for o in as_list(self.optimizers())[1:]],
            "synthesizer_rng": self.synthesizer.rng.get_state(),
            "rng": torch.get_rng_state(),
        }

    @torch.no_grad()
    def _restore(self, snapshot: dict):
        for name, value in self._tensors():
            value.copy_(snapshot["tensors"][name])
        for opt, state in zip(as_list(self.optimizers())[1:], snapshot["optimizers"]):
            opt.optimizer.load_state_dict(state)
        self.synthesizer.rng.set_state(snapshot["synthesizer_rng"])
        torch.set_rng_state(snapshot["rng"])

    def _student_step(self, opt, ctx):
        batch = self.synthesizer.batch(self.method.synthesis.batch_size, ctx)
        images, t_logits = batch.images, batch.teacher_logits
        if self.method.synthesis.adversarial_eps:
            images = self.synthesizer.clip(adversarial_push(
                images, self.teacher, self.student, self.method.synthesis.adversarial_eps,
                self.loss_cfg.temperature, generator=self.synthesizer.rng))
            self.cost.add(teacher_forwards=1)
            t_logits = None  # the teacher labels the moved images
        need_features = reads(self.student_terms, self.weights, "student_features")
        t_feats = None
        if t_logits is None or need_features:
            with torch.no_grad():
                t_logits, t_feats = with_stages(self.teacher, need_features, lambda: self.teacher(images))
            self.cost.add(teacher_forwards=1)
        (s_logits, t_logits), s_feats = with_stages(self.student, need_features,
                                                    lambda: self.student_logits(images, t_logits))
        terms = compute_terms(self.student_terms, self.weights, {
            "student_logits": s_logits, "teacher_logits": t_logits, "soft_targets": batch.soft_targets,
            "temperature": self.loss_cfg.temperature, "student_features": s_feats, "teacher_features": t_feats,
        })
        loss = weighted_sum(terms, self.weights)
        self.check_finite(terms, "the student update", total=loss)
        opt.zero_grad()
        self.manual_backward(loss)
        if self.method.synthesis.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.method.synthesis.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        for schedule in as_list(self.lr_schedulers()):
            schedule.step()
        return {k: v.detach() for k, v in terms.items()}, t_logits

    def student_logits(self, images, t_logits):
        """Logits of the network(s) trained on this batch and the teacher logits they must match
        (a student ensemble stacks its members' logits and repeats the teacher's)."""
        return self.student(images), t_logits

    # --- guards ---------------------------------------------------------------------------
    def _check_collapse(self, t_logits):
        counts = torch.bincount(t_logits.argmax(1), minlength=t_logits.shape[1]).float()
        frac_max = counts.max() / counts.sum()
        self.log("synth/class_frac_max", frac_max)
        patience = self.method.synthesis.collapse_patience
        self._collapsed_rounds = self._collapsed_rounds + 1 if frac_max >= 1.0 else 0
        if patience and self._collapsed_rounds >= patience:
            raise SynthesisDiverged(
                f"generator collapse: every synthetic image was classified as class "
                f"{int(counts.argmax())} for {patience} synthesis rounds; change the loss weights (e.g. raise "
                "loss.weights.ie) or the generator learning rate"
            )

    # --- reporting ------------------------------------------------------------------------
    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        self.log_dict(self.cost.as_dict(), sync_dist=True)

    def end_warnings(self, max_epochs):
        warmup, epochs = self.method.synthesis.warmup_epochs, max_epochs
        if self.cost.kd_s.item() > 0 or warmup == 0 or 0 < epochs <= warmup:  # trained; no warm-up; warned before
            return []
        return [(f"the student never trained: the run ended ({self.EARLY_ENDS}) within the synthesis warm-up "
                 f"(method.synthesis.warmup_epochs={warmup}: those epochs train only the synthesiser), so its "
                 "accuracy is the untrained student's. Give the run more time, or a shorter warm-up")]

    def on_run_end(self, output_dir, metrics):
        metrics.update(self.cost.as_dict())
        metrics.update(self.proxy_record)
        total = metrics["cost/synthesis_s"]
        metrics["cost/images_per_s"] = metrics["cost/images"] / total if total > 0 else 0.0
