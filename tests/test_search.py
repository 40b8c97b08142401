"""Hyperparameter search on Optuna >= 4 through hparams_search= (our own Hydra sweeper)."""

import json
import os
import shlex
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from dfkd_lab import search
from dfkd_lab.callbacks.pruning import OptunaPruning
from dfkd_lab.config import ConfigError


def test_search_space_reads_intervals_choices_and_ranges():
    space, fixed = search.search_space(
        {"a": "tag(log, interval(0.01, 2.0))", "b": "choice(1, 2)"},
        ["method.epochs=3", "c=range(2, 8, 2)", "d=interval(1, 5)"])
    assert fixed == ["method.epochs=3"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = {key: search.suggest(trial, key, sweep) for key, sweep in space.items()}
    assert 0.01 <= values["a"] <= 2.0 and values["b"] in (1, 2) and values["c"] in (2, 4, 6)
    assert 1 <= values["d"] <= 5 and isinstance(values["c"], int)
    dists = trial.distributions
    assert dists["a"].log and not dists["d"].log and isinstance(dists["c"], optuna.distributions.IntDistribution)
    with pytest.raises(ConfigError, match="hydra.sweeper.params.e"):
        search.search_space({"e": "3"})


class FakeLauncher:
    """Records the launches and answers each trial as ``answer(job_number)`` says."""

    def __init__(self, answer):
        self.answer, self.launches = answer, []

    def launch(self, overrides, initial_job_idx):
        self.launches.append((initial_job_idx, overrides))
        return [self.answer(initial_job_idx + i) for i in range(len(overrides))]


def job(value=None, error=None):
    ret = JobReturn(status=JobStatus.FAILED if error else JobStatus.COMPLETED)
    ret._return_value = error or value
    return ret


def sweeper_cfg(storage, **changes):
    base = {"study_name": "s", "storage": storage, "direction": "maximize", "n_trials": 3, "n_jobs": 2,
            "seed": 0, "n_startup_trials": 1, "params": {"x": "interval(0.0, 1.0)"}, "pruner": None}
    return OmegaConf.create({**base, **changes})


def test_study_resumes_numbers_jobs_by_trial_and_records_failures(tmp_path):
    storage = f"journal:{tmp_path / 'deep' / 'study.log'}"  # the folder is created
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    first = FakeLauncher(lambda n: job(error=RuntimeError("boom")) if n == 1 else job(0.1 * n))
    search.run_study(sweeper_cfg(storage), config, first, ["method.epochs=2"])
    assert [i for i, _ in first.launches] == [0, 2]  # two at a time; job number == trial number
    assert first.launches[0][1][0][0] == "method.epochs=2" and first.launches[0][1][0][1].startswith("x=")
    second = FakeLauncher(lambda n: job(float("nan")) if n == 3 else job(0.9))
    study = search.run_study(sweeper_cfg(storage, n_trials=2), config, second, ["method.epochs=2"])
    assert [i for i, _ in second.launches] == [3]  # the resumed study goes on from trial 3
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "FAIL", "COMPLETE"]  # nan is no result
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_trial"] == 4 and results["best_value"] == 0.9
    assert results["trials"] == {"complete": 3, "fail": 2}


def test_a_study_is_continued_only_with_its_own_settings_and_fails_when_no_trial_completes(tmp_path):
    storage = f"journal:{tmp_path / 'study.log'}"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    search.run_study(sweeper_cfg(storage, n_trials=1), config, FakeLauncher(lambda n: job(0.5)), ["method.epochs=2"])
    for arguments, changes in ((["method.epochs=2", "trainer.limit_train_batches=1"], "now trainer.limit_train_batches=1"),
                               (["method.epochs=2", "y=interval(0, 1)"], "searched {'x'")):
        launcher = FakeLauncher(lambda n: job(0.9))
        with pytest.raises(ConfigError, match=f"the study s holds 1 trial.s. run with other settings .*{changes}"):
            search.run_study(sweeper_cfg(storage, n_trials=1), config, launcher, arguments)
        assert not launcher.launches
    diverged = FakeLauncher(lambda n: job(error=RuntimeError("diverged")))
    with pytest.raises(search.SearchFailed, match="no trial of this search completed .trial 1: failed: RuntimeError: diverged"):
        search.run_study(sweeper_cfg(storage, n_trials=2, n_jobs=1), config, diverged, ["method.epochs=2"])
    assert len(diverged.launches) == 2  # every trial ran before the search said so
    some = FakeLauncher(lambda n: job(error=RuntimeError("diverged")) if n == 3 else job(0.2))
    search.run_study(sweeper_cfg(storage, n_trials=2, n_jobs=1), config, some, ["method.epochs=2"])  # one completed


def test_a_continued_study_draws_new_values(tmp_path):
    """Started again with the same seed, a study still in its random start-up trials drew the first
    trials' values again: each continuation moves the sampler's seed on."""
    storage = f"journal:{tmp_path / 'study.log'}"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    for n_trials in (2, 2):
        study = search.run_study(sweeper_cfg(storage, n_trials=n_trials, n_startup_trials=10), config,
                                 FakeLauncher(lambda n: job(0.5)), [])
    drawn = [t.params["x"] for t in study.trials]
    assert len(drawn) == 4 and len(set(drawn)) == 4


def test_pruning_callback_reports_the_curve_and_stops_a_trailing_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'sub' / 'optuna.db'}"
    opened = search.open_storage(storage)
    study = optuna.create_study(study_name="p", storage=opened, direction="maximize")
    study.set_user_attr(search.PRUNER_ATTR, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5})
    trial = study.ask()
    callback = OptunaPruning("val/acc", storage=storage, study_name="p", trial_number=trial.number)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, should_stop=False, current_epoch=0,
                              callback_metrics={"val/acc": 0.7})
    callback.on_validation_end(trainer, None)
    assert not trainer.should_stop
    trainer.current_epoch, trainer.callback_metrics = 1, {"val/acc": 0.3}
    callback.on_validation_end(trainer, None)
    assert trainer.should_stop and search.pruned_at(opened, "p", trial.number) == 1
    assert study.trials[0].intermediate_values == {0: 0.7, 1: 0.3}
    assert search.tell(study, trial, job(0.3), pruned_epoch=1) == "pruned at epoch 1"
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED


def test_three_trial_study_through_hparams_search(tmp_path):
    """dfkd-train hparams_search=dafl_optuna end to end: 3 tiny DAFL trials in a stored study."""
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"}
    done = subprocess.run(  # the documented command as it is: the study and its dirs under ./outputs/optuna
        [sys.executable, "-m", "dfkd_lab.train", "hparams_search=dafl_optuna", "debug=default",
         "hydra.sweeper.n_trials=3"], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = optuna.load_study(study_name="dafl_loss_weights", storage=f"sqlite:///{tmp_path}/outputs/optuna/optuna.db")
    sweep = tmp_path / "outputs" / "optuna" / "dafl_loss_weights"
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    assert all(t.intermediate_values for t in study.trials)  # the evaluation curve was reported
    for t in study.trials:
        metrics = json.loads((sweep / f"trial_{t.number}" / "metrics.json").read_text())
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == metrics["test/acc"]
    # a trial's run/command reruns that trial on its own, to the same figure, telling the study nothing
    trial = next(t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    recorded = json.loads((sweep / f"trial_{trial.number}" / "metrics.json").read_text())
    rerun = subprocess.run([sys.executable, "-m", "dfkd_lab.train", *shlex.split(recorded["run/command"])[1:],
                            f"hydra.run.dir={tmp_path / 'rerun'}"], cwd=tmp_path, env=env, check=False,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((tmp_path / "rerun" / "metrics.json").read_text())["test/acc"] == recorded["test/acc"]
    reloaded = optuna.load_study(study_name="dafl_loss_weights", storage=f"sqlite:///{tmp_path}/outputs/optuna/optuna.db")
    assert [t.intermediate_values for t in reloaded.trials] == [t.intermediate_values for t in study.trials]
    config = yaml.safe_load((sweep / "trial_2" / ".hydra" / "overrides.yaml").read_text())
    assert any(o.startswith("loss.weights.argmax_ce=") for o in config)
    assert "best_params" in yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    # continued with another setting: refused as bad input, in one paragraph, before any trial
    changed = subprocess.run(
        [sys.executable, "-m", "dfkd_lab.train", "hparams_search=dafl_optuna", "debug=default",
         "hydra.sweeper.n_trials=1", "trainer.limit_train_batches=1"], cwd=tmp_path, env=env, check=False,
        capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "dfkd-train: ConfigError: the study dafl_loss_weights holds 3 trial(s)" in changed.stderr
    assert "Traceback" not in changed.stderr and not (sweep / "trial_3").exists()
