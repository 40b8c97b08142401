"""Checkpoints that survive the way jobs die: killed mid-write, preempted, out of disk.

- ``AtomicCheckpointIO`` writes every checkpoint to a temporary file and renames it, so a
  SIGKILL during the write leaves the previous ``last.ckpt`` whole (Lightning writes in place).
- ``PreemptionCheckpoint`` saves ``last.ckpt`` when the run is stopped by SIGTERM (a cluster's
  preemption or time limit): Lightning stops between two training steps, so the state is
  consistent and a resumed run loses nothing.
"""

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import RunningStage
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..atomic import save_torch


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if "://" in str(path):  # remote storage: fsspec's own semantics
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_torch(path, checkpoint, "checkpoint")


class PreemptionCheckpoint(pl.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer, pl_module, exception):
        # only between training steps: a SIGTERM during validation keeps the previous last.ckpt
        if isinstance(exception, SIGTERMException) and trainer.state.stage == RunningStage.TRAINING:
            trainer.save_checkpoint(self.path)
