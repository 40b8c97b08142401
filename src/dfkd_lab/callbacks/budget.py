"""Budgets: teacher passes (the same amount of teacher compute for every method, whatever the
hardware: a wall-clock budget alone favours whichever method suits the machine), and wall-clock
time that a stopped and resumed run spends exactly as an uninterrupted one."""

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.trainer.states import RunningStage

from ..config import ConfigError
from .metrics import TimeAtLastStep


class TeacherPassBudget(pl.Callback):
    """Stops training once the method's cost meter counts ``max_passes`` teacher passes.

    A pass is one teacher forward (with its backward where synthesis differentiates through the
    teacher) on one batch, as ``CostMeter.teacher_forwards`` counts it. Methods without a cost
    meter (``kd`` and ``scratch``, the real-data references) are not bound by it.
    """

    def __init__(self, max_passes: int):
        if max_passes <= 0:
            raise ConfigError(f"max_passes={max_passes}: give a positive number of teacher passes")
        self.max_passes = max_passes

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        cost = getattr(pl_module, "cost", None)
        if cost is not None and cost.teacher_forwards.item() >= self.max_passes:
            trainer.should_stop = True


class WallClockBudget(TimeAtLastStep, Timer):
    """``trainer.max_time``, as Lightning's ``Timer``, but a checkpoint records the training time
    at the last finished step or evaluation. A stop inside a long step (a DeepInversion batch)
    throws the step away; with the time at the stop, the resumed run would be charged for it
    twice and train less than an uninterrupted run."""

    def __init__(self, duration):
        super().__init__(duration=duration, interval="step")

    @property
    def state_key(self) -> str:
        return "Timer"  # a checkpoint written under Lightning's own Timer resumes into this one

    def now(self) -> float:
        return self.time_elapsed()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["time_elapsed"][RunningStage.TRAINING.value] = self.saved_time()
        return state
