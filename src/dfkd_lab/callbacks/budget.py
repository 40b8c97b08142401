"""A budget in teacher passes: the same amount of teacher compute for every method, whatever
the hardware (a wall-clock budget alone favours whichever method suits the machine)."""

import pytorch_lightning as pl

from ..config import ConfigError


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
