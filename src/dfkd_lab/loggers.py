"""Lightning's CSV and W&B loggers, fixed for how runs here are used.

- ``RunCSVLogger``: ``csv/metrics.csv`` is appended to by a resumed run and by a DDP-spawned
  test process, instead of being deleted (resume) or failing with "dict contains fields not
  in fieldnames" (a process that never saw the training keys).
- ``RunWandbLogger``: does not pass ``anonymous`` to ``wandb.init`` (wandb 0.31 warns on
  every run that the setting has no effect), and a resumed offline run numbers its history rows
  on from where its earlier segments stopped (``wandb_offline``) instead of from 0.
"""

import csv

from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from .wandb_offline import continue_steps


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self):
        """Lightning deletes an existing metrics.csv here; a resumed run continues it."""

    def _record_new_keys(self) -> set[str]:
        if not self.metrics_keys and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))
        return super()._record_new_keys()


class RunCSVLogger(CSVLogger):
    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class RunWandbLogger(WandbLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self):
        started = self._experiment is not None
        run = super().experiment
        if not started and getattr(run, "offline", None) is True:  # not on ranks > 0 (a dummy there)
            continue_steps(run)
        return run
