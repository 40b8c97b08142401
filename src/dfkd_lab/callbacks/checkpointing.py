"""Checkpoints that survive the way jobs die: killed mid-write, preempted, out of disk.

- ``AtomicCheckpointIO`` writes every checkpoint to a temporary file and renames it, so a
  SIGKILL during the write leaves the previous ``last.ckpt`` whole (Lightning writes in place).
  It also keeps the size of the largest one it wrote (``disk/largest_checkpoint_mb`` in
  metrics.json: a checkpoint must not grow with what the run made, docs/memory.md).
- ``PreemptionCheckpoint`` saves ``last.ckpt`` when the run is stopped by SIGTERM (a cluster's
  preemption or time limit): Lightning stops between two training steps, so the state is
  consistent and a resumed run loses nothing.
"""

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..atomic import save_torch


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self):
        super().__init__()
        self.largest_bytes = 0

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if "://" in str(path):  # remote storage: fsspec's own semantics
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_torch(path, checkpoint, "checkpoint")
        self.largest_bytes = max(self.largest_bytes, Path(path).stat().st_size)


def largest_checkpoint(trainer) -> dict:
    """``disk/largest_checkpoint_mb``: the largest checkpoint this process wrote."""
    io = trainer.strategy.checkpoint_io
    if not isinstance(io, AtomicCheckpointIO) or not io.largest_bytes:
        return {}
    return {"disk/largest_checkpoint_mb": io.largest_bytes / 2**20}


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` student updates, except after an epoch's last
    batch: its evaluation follows at once (and saves), and a checkpoint from before it would be
    resumed as an epoch already evaluated, so a stop during that evaluation lost it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class PreemptionCheckpoint(pl.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer, pl_module, exception):
        # only between training steps: a SIGTERM during validation keeps the previous last.ckpt
        if isinstance(exception, SIGTERMException) and trainer.state.stage == RunningStage.TRAINING:
            trainer.save_checkpoint(self.path)
