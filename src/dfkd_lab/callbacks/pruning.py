"""Optuna pruning from the run's evaluation curve: a trial that trails the study stops early."""

import pytorch_lightning as pl


class OptunaPruning(pl.Callback):
    """Reports ``monitor`` at each evaluation (step = epoch) to trial ``trial_number`` of the
    study and stops training when the study's pruner says so.

    Storage, study and trial default to those of the ``dfkd_optuna`` sweep this run is a job of
    (the job number is the trial number). The pruner is the one the sweeper stored in the study
    (``dfkd_lab.search``); the run then finishes normally (test, metrics.json) and the sweeper
    records the trial as pruned. Outside a sweep (a trial rerun with ``hydra.mode=RUN``) it
    reports nothing.
    """

    def __init__(self, monitor: str = "val/acc", storage: str | None = None, study_name: str | None = None,
                 trial_number: int | None = None):
        self.monitor, self.storage, self.study_name, self.trial_number = monitor, storage, study_name, trial_number
        self.trial = None

    def _locate(self):
        from hydra.core.hydra_config import HydraConfig

        from ..config import in_multirun

        if not in_multirun():
            return  # a trial rerun on its own (its run/command) is no trial of the study
        hydra_cfg = HydraConfig.get()
        self.storage = self.storage or hydra_cfg.sweeper.storage
        self.study_name = self.study_name or hydra_cfg.sweeper.study_name
        self.trial_number = hydra_cfg.job.num if self.trial_number is None else self.trial_number

    def _open_trial(self):
        import optuna
        from hydra.utils import instantiate

        from ..search import PRUNER_ATTR, open_storage

        storage = open_storage(self.storage)
        study_id = storage.get_study_id_from_name(self.study_name)
        spec = storage.get_study_user_attrs(study_id).get(PRUNER_ATTR)
        study = optuna.load_study(study_name=self.study_name, storage=storage,
                                  pruner=instantiate(spec) if spec else optuna.pruners.NopPruner())
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
        return optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or self.monitor not in trainer.callback_metrics:
            return
        from ..search import PRUNED_ATTR

        if self.trial is None:
            if None in (self.storage, self.study_name, self.trial_number):
                self._locate()
            if self.trial_number is None:
                return
            self.trial = self._open_trial()
        epoch = trainer.current_epoch
        self.trial.report(float(trainer.callback_metrics[self.monitor]), step=epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_ATTR, epoch)
            trainer.should_stop = True
