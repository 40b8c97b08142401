"""What every method shares: a student, an optional frozen teacher, the student's optimiser,
and evaluation on the real test split."""

import atexit
import math

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from ..losses.registry import loss_term
from ..losses.weighting import check_weights
from ..optim import build_optimizer, build_schedule, network_groups
from ..quiet import silence_known_noise
from ..zoo import freeze


def plain(node):
    """A config node as plain dicts/lists: Lightning resumes with torch.load(weights_only=True),
    which refuses a checkpoint holding OmegaConf objects."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


class TrainingDiverged(RuntimeError):
    """NaN/inf in a loss: the run stops before a spoiled state reaches its checkpoints."""


def _destroy_process_group():
    if dist.is_initialized():
        dist.destroy_process_group()


class DistillationModule(pl.LightningModule):
    """Base for all methods. ``student`` is the network being trained (for ``method=teacher``
    that is the future teacher). The teacher, when present, stays frozen: eval mode, no
    gradients, left out of checkpoints."""

    #: loss terms this method understands (names in ``loss.weights``), in the order they are summed
    loss_terms: tuple = ()

    @classmethod
    def config_blocks(cls, method) -> tuple:
        """The ``method.<block>`` configs (config.py) this method reads, beyond the common keys:
        validate.py asks for each of them and refuses any other before the run starts."""
        return ()

    def __init__(self, student: nn.Module, method, loss, num_classes: int, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.method, self.loss_cfg = method, loss
        self.weights = dict(loss.weights)
        for name in self.known_terms():
            loss_term(name)  # a term nobody registered fails here, before any work
        check_weights(self.weights, set(self.known_terms()), f"method={method.name}")
        self.save_hyperparameters({"method": plain(method), "loss": plain(loss)}, logger=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.teacher_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_best = MaxMetric()

    @classmethod
    def from_config(cls, cfg, student, teacher, data):
        """Build from the composed config; families that need more override this."""
        return cls(student, cfg.method, cfg.loss, data.num_classes, teacher)

    def train_dataloader_from(self, data):
        """Where training batches come from: the real training split by default."""
        return data.train_dataloader()

    def known_terms(self):
        return self.loss_terms

    def setup(self, stage=None):
        silence_known_noise()  # also in DDP-spawned processes, which never import dfkd_lab.train
        # Lightning destroys an NCCL process group at exit but not a gloo one (CPU DDP): its
        # threads are then torn down with the interpreter and abort the process ("terminate
        # called without an active exception") in about one trainer.test of five.
        if dist.is_initialized():
            atexit.register(_destroy_process_group)
        if self.method.channels_last:
            self.to(memory_format=torch.channels_last)

    # --- the teacher never changes -------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def on_save_checkpoint(self, checkpoint):
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")
        }
        # the global torch RNG drives data shuffling and augmentation: a resumed run must
        # continue it, or its remaining epochs see other batches than an uninterrupted run
        checkpoint["torch_rng"] = torch.get_rng_state()
        # the best evaluation so far: torchmetrics leaves a metric's state out of the state dict
        checkpoint["val_best"] = self.val_best.max_value.detach().cpu()

    def on_load_checkpoint(self, checkpoint):
        if self.teacher is not None:  # the frozen teacher comes from the zoo, not the checkpoint
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        if "torch_rng" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng"])
        if "val_best" in checkpoint:
            self.val_best.update(checkpoint["val_best"])

    # --- one meaning of "step" -----------------------------------------------------------
    def log_step(self, **kwargs):
        """Log ``global_step`` (student updates) as "step": Lightning then uses it as every
        logger's x-axis instead of its count of training batches, so the CSV, W&B and
        curve.jsonl agree with each other and with ``trainer.max_steps``."""
        self.log("step", float(self.global_step), **kwargs)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.log_step()

    # --- evaluation on the real test split ------------------------------------------------
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc.update(self.student(x).argmax(1), y)

    def on_validation_epoch_end(self):
        acc = self.val_acc.compute()
        self.val_acc.reset()
        self.val_best.update(acc)
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)
        self.log("val/acc_best", self.val_best.compute(), sync_dist=True)
        self.log_step(sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc.update(self.student(x).argmax(1), y)
        if self.teacher is not None:
            self.teacher_acc.update(self.teacher(x).argmax(1), y)

    def on_test_epoch_end(self):
        self.log("test/acc", self.test_acc.compute(), sync_dist=True)
        self.test_acc.reset()
        if self.teacher is not None:
            self.log("teacher/acc", self.teacher_acc.compute(), sync_dist=True)
            self.teacher_acc.reset()
        self.log_step(sync_dist=True)

    def check_finite(self, terms: dict, where: str, total=None):
        """Stop the run at the first NaN/inf loss term, or ``total`` (their weighted sum, where a
        weight can be NaN): a run that trained on one must not end as finished."""
        terms = terms if total is None else {**terms, "weighted sum": total}
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        if bad:
            raise TrainingDiverged(
                f"non-finite loss {bad} in {where} at epoch {self.current_epoch}: lower the learning "
                "rates or the loss weights"
            )

    # --- the student's optimiser ----------------------------------------------------------
    def student_parameters(self) -> list[dict]:
        """What the optimiser trains, as parameter groups (optim.py)."""
        return network_groups(self.student)

    def total_student_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self):
        opt = build_optimizer(self.student_parameters(), self.method)
        steps = self.total_student_steps()
        if not math.isfinite(steps):
            steps = 1
        schedule = build_schedule(opt, self.method, steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def quantised_student(self) -> tuple[nn.Module, int] | None:
        """``(int8 model, bits)`` for a method whose student is quantised: what the run exports
        instead of the float weights (export.py)."""
        return None

    def end_warnings(self, max_epochs: int) -> list[str]:
        """What the user should know about the finished run that its figures do not say. Told the
        trainer's ``max_epochs``: after a spawned run this module is no longer attached to it."""
        return []

    #: what can end a run before its last epoch, for those warnings
    EARLY_ENDS = "trainer.max_time, trainer.max_steps, a teacher-pass budget or a search's pruner"

    def on_run_end(self, output_dir, metrics: dict):
        """Hook after testing, on rank zero: add metrics or write artefacts."""
