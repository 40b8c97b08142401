"""Hyperparameter search on Optuna (>= 4): the study behind ``hydra/sweeper=dfkd_optuna``.

Each trial is an ordinary ``dfkd-train`` job launched by whichever Hydra launcher is configured;
its return value (``optimized_metric``) is told to the study. The study lives in persistent
storage (``sqlite:///file.db`` or ``journal:file.log``), so the same command started again adds
trials to it. Runs that report an evaluation curve can be pruned while they train
(``callbacks/pruning.py``): the sweeper stores the pruner's spec in the study, the run reads it.
"""

import logging
import math
from pathlib import Path

import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.core.utils import JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from .config import ConfigError, override_changes

log = logging.getLogger(__name__)
PRUNER_ATTR = "pruner"  # study user attr: the pruner's instantiable spec, for the runs
PRUNED_ATTR = "pruned_at_epoch"  # trial user attr: set by a run its pruner stopped
SETTING_ATTR = "setting"  # study user attr: the overrides every trial gets and the search space


class SearchFailed(Exception):
    """No trial this invocation launched completed: the search has nothing to report."""


def check_same_setting(study: optuna.Study, fixed: list[str], space: dict):
    """A continued study's trials are compared with its first ones, so they must run with the
    same overrides and search space: a trial with half the training must not become the best."""
    setting = {"overrides": sorted(fixed), "space": {k: repr(v) for k, v in sorted(space.items())}}
    stored = study.user_attrs.get(SETTING_ATTR)
    if stored is None:
        study.set_user_attr(SETTING_ATTR, setting)
        return
    if stored == setting:
        return
    changes = override_changes(stored["overrides"], setting["overrides"])
    if stored["space"] != setting["space"]:
        changes.append(f"searched {stored['space']}, now {setting['space']}")
    raise ConfigError(f"the study {study.study_name} holds {len(study.trials)} trial(s) run with other settings "
                      f"({'; '.join(changes)}); its best trial would compare runs of two settings. Give a new "
                      "hydra.sweeper.study_name=, or continue it with the overrides it was started with")


def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """``sqlite:///path.db`` (any SQLAlchemy URL) or ``journal:path.log``; a missing parent
    folder is created (SQLite cannot create one)."""
    if spec.startswith("journal:"):
        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if spec.startswith("sqlite:///"):
        Path(spec.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.get_storage(spec)


def search_space(params: dict, arguments=()) -> tuple[dict, list[str]]:
    """Parsed sweeps by key, from ``hydra.sweeper.params`` and sweep-valued command-line
    arguments; the other arguments are returned as the overrides every trial gets."""
    parser = OverridesParser.create()
    space, fixed = {}, []
    for key, value in (params or {}).items():
        space[key] = parser.parse_overrides([f"{key}={value}"])[0].value()
    for override in parser.parse_overrides(list(arguments)):
        if override.is_sweep_override():
            space[override.get_key_element()] = override.value()
        else:
            fixed.append(override.input_line)
    for key, sweep in space.items():
        if not isinstance(sweep, (IntervalSweep, ChoiceSweep, RangeSweep)):
            raise ConfigError(f"hydra.sweeper.params.{key}={sweep}: use interval(a, b), "
                              "tag(log, interval(a, b)), choice(...) or range(a, b[, step])")
    return space, fixed


def suggest(trial: optuna.Trial, key: str, sweep):
    """The trial's value for one search dimension."""
    if isinstance(sweep, ChoiceSweep):
        return trial.suggest_categorical(key, list(sweep.list))
    if isinstance(sweep, RangeSweep):
        step = sweep.step or 1
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, step)):
            return trial.suggest_int(key, sweep.start, sweep.stop - step, step=step)
        return trial.suggest_float(key, sweep.start, sweep.stop - step, step=step)
    # interval() is continuous (Hydra reads its bounds as floats); integers come from range()
    return trial.suggest_float(key, sweep.start, sweep.end, log="log" in sweep.tags)


def consecutive_batches(trials: list) -> list[list]:
    """Trials split where their numbers jump (another process asked in between): a batch is
    launched with its first trial's number as the first job number, so job number == trial."""
    batches = []
    for trial in trials:
        if batches and trial.number == batches[-1][-1].number + 1:
            batches[-1].append(trial)
        else:
            batches.append([trial])
    return batches


def pruned_at(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int | None:
    """The epoch at which the run of trial ``number`` was pruned, read from the storage (the
    run wrote it from its own process); None if it was not."""
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return storage.get_trial(trial_id).user_attrs.get(PRUNED_ATTR)


def tell(study: optuna.Study, trial: optuna.Trial, ret, pruned_epoch: int | None = None) -> str:
    """Record a finished job in the study; returns the state, for the log."""
    if ret.status != JobStatus.COMPLETED:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.warning(f"trial {trial.number} failed: {ret._return_value!r}")
        cause = str(ret._return_value).strip().splitlines()
        return f"failed: {type(ret._return_value).__name__}: {cause[0] if cause else ''}".rstrip(": ")
    if pruned_epoch is not None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return f"pruned at epoch {pruned_epoch}"
    value = ret.return_value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"failed: the run returned {value!r}, not a number (optimized_metric)"
    study.tell(trial, value)
    return f"{value:.4f}"


def run_study(sweeper_cfg: DictConfig, config: DictConfig, launcher, arguments: list[str]) -> optuna.Study:
    """Add ``n_trials`` trials to the study, ``n_jobs`` launched at a time; write the best."""
    space, fixed = search_space(OmegaConf.to_container(sweeper_cfg.params, resolve=True), arguments)
    if not space:
        raise ConfigError("nothing to search: give hydra.sweeper.params or a sweep such as "
                          "'loss.weights.argmax_ce=interval(0.1, 2)'")
    pruner_spec = OmegaConf.to_container(sweeper_cfg.pruner, resolve=True) if sweeper_cfg.pruner else None
    storage = open_storage(sweeper_cfg.storage)
    study = optuna.create_study(
        study_name=sweeper_cfg.study_name, storage=storage,
        pruner=instantiate(pruner_spec) if pruner_spec else optuna.pruners.NopPruner(),
        direction=sweeper_cfg.direction, load_if_exists=True)
    check_same_setting(study, fixed, space)
    # a continued study's sampler must not draw its first trials' parameters again: its seed moves on
    seed = None if sweeper_cfg.seed is None else sweeper_cfg.seed + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweeper_cfg.n_startup_trials)
    study.set_user_attr(PRUNER_ATTR, pruner_spec)
    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    log.info(f"Optuna study {sweeper_cfg.study_name}: {len(study.trials)} trials stored, "
             f"{sweeper_cfg.n_trials} to add; searching {', '.join(space)}")
    remaining, outcomes = sweeper_cfg.n_trials, []
    while remaining > 0:
        trials = [study.ask() for _ in range(min(sweeper_cfg.n_jobs, remaining))]
        for batch in consecutive_batches(trials):
            overrides = [[*fixed, *(f"{key}={suggest(t, key, sweep)}" for key, sweep in space.items())]
                         for t in batch]
            returns = launcher.launch(overrides, initial_job_idx=batch[0].number)
            for trial, ret in zip(batch, returns):
                pruned = pruned_at(storage, sweeper_cfg.study_name, trial.number)
                outcomes.append((trial.number, tell(study, trial, ret, pruned)))
                log.info(f"trial {trial.number}: {outcomes[-1][1]}")
        remaining -= len(trials)
    write_results(study, sweep_dir / "optimization_results.yaml")
    if outcomes and all(outcome.startswith("failed") for _, outcome in outcomes):
        number, outcome = outcomes[0]
        raise SearchFailed(f"no trial of this search completed (trial {number}: {outcome}); see each trial's run dir "
                           f"in {sweep_dir}")
    return study


def write_results(study: optuna.Study, path: Path):
    states = [t.state.name.lower() for t in study.trials]
    done = {"study": study.study_name, "trials": {s: states.count(s) for s in sorted(set(states))}}
    try:
        best = study.best_trial
        done.update(best_trial=best.number, best_value=best.value, best_params=best.params)
        log.info(f"best: trial {best.number}, {best.value:.4f} with {best.params}")
    except ValueError:  # no trial completed
        log.warning(f"no trial of {study.study_name} completed")
    path.write_text(yaml.safe_dump(done, sort_keys=False))
