"""Runs that fail, stop and resume: every record tells the truth, and a resume needs nothing
but the run dir. CLI runs in a subprocess, with the default logger (W&B offline + CSV) where
the behaviour is about the default path."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import FAST
from dfkd_lab import train
from dfkd_lab.callbacks.budget import WallClockBudget
from dfkd_lab.callbacks.metrics import WallClock
from dfkd_lab.config import ConfigError
from dfkd_lab.report import UNFINISHED, load_run, run_row
from dfkd_lab.resume import RunFinished, continue_command, resume_args
from dfkd_lab.wandb_offline import records_in
from test_reliability import cli, dfkd_train, fit_progress, hydra_record

TINY = ["trainer=cpu", "method.synthesis.batch_size=16", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false"]  # keep the progress bar last (the output test leaves it on)
# DAFL's tiny rounds take milliseconds: enough of them that the second epoch outlasts the test's
# one-second wait before its signal
DAFL = ["method=dafl", "method.synthesizer.ngf=4", "method.synthesizer.nz=8", "method.synthesis.steps_per_epoch=150",
        "trainer.max_epochs=2", "callbacks.step_checkpoint.every_n_train_steps=10"]
DEEPINVERSION = ["method=deepinversion", "method.synthesizer.iterations=10", "method.synthesis.steps_per_epoch=15",
                 "trainer.max_epochs=2", "callbacks.step_checkpoint.every_n_train_steps=4"]
RESUMABLE = {"dafl": DAFL, "deepinversion": DEEPINVERSION}


def rounds(overrides) -> int:
    """Synthesis rounds of a whole run of ``overrides``: steps per epoch times epochs."""
    value = dict(o.split("=", 1) for o in overrides)
    return int(value["method.synthesis.steps_per_epoch"]) * int(value["trainer.max_epochs"])


def finish(proc, timeout=600) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


def wait_for(path: Path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, f"run ended before {path.name} appeared: {proc.stderr.read()[-2000:]}"


def wandb_records(run_dir: Path, kind: str, wait_s: float = 10.0) -> list:
    """The records of one kind ("exit", "summary", ...) in the latest W&B offline run file (a
    LevelDB-style log of protobuf records), waiting up to ``wait_s`` for W&B's writer process to
    append them (once, in a full suite, the exit record was not there yet when read)."""
    path = max(run_dir.glob("wandb/offline-run-*/run-*.wandb"))  # each segment writes its own file
    deadline = time.time() + wait_s
    while not (found := records_in(path, kind)) and time.time() < deadline:
        time.sleep(0.2)
    assert found, f"no {kind} record in {path}"
    return found


def wandb_exit_code(run_dir: Path) -> int:
    return wandb_records(run_dir, "exit")[-1].exit_code


def wandb_summary(run_dir: Path) -> dict:
    """The run's summary as W&B saved it (the last value of each key)."""
    return {item.key: json.loads(item.value_json) for summary in wandb_records(run_dir, "summary")
            for item in summary.update}


def csv_rows(text: str) -> list[dict]:
    return [{k: v for k, v in r.items() if v} for r in csv.DictReader(text.splitlines())]


# --- resume from the run dir alone -----------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Test accuracy of each resumable run left alone."""
    cache = {}

    def acc(family):
        if family not in cache:
            run_dir = tmp_path_factory.mktemp(family) / "run"
            proc = dfkd_train(None, *TINY, *RESUMABLE[family], "logger=none", f"hydra.run.dir={run_dir}")
            err = finish(proc)
            assert proc.returncode == 0, err[-2000:]
            cache[family] = json.loads((run_dir / "metrics.json").read_text())["test/acc"]
        return cache[family]

    return acc


@pytest.mark.slow
@pytest.mark.parametrize("family,sig", [("dafl", "SIGTERM"), ("dafl", "SIGKILL"), ("deepinversion", "SIGTERM")])
def test_a_resume_from_the_run_dir_alone_matches_the_uninterrupted_run(tmp_path, uninterrupted, family, sig):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = dfkd_train(None, *TINY, *RESUMABLE[family], f"hydra.run.dir={run_dir}", wandb="offline")
    wait_for(run_dir / "progress.json", proc)  # the first epoch is evaluated; stop in the second
    time.sleep(1)
    proc.send_signal(getattr(signal, sig))
    err = finish(proc)
    if sig == "SIGTERM":
        assert proc.returncode == 143 and f"Continue with: dfkd-train resume={run_dir.resolve()}" in err
        assert wandb_exit_code(run_dir) == 143
    first_segment, csv_before = hydra_record(run_dir), (run_dir / "csv" / "metrics.csv").read_text()
    elapsed = torch.load(last, weights_only=False)["callbacks"]["WallClock"]["elapsed_s"]
    assert 0 < fit_progress(last) < rounds(RESUMABLE[family])  # stopped before the end

    resumed = dfkd_train(None, f"resume={run_dir}", wandb="offline")
    err = finish(resumed)
    assert resumed.returncode == 0, err[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["test/acc"] == uninterrupted(family)
    assert hydra_record(run_dir) == first_segment  # the first segment's record is intact
    assert "resume=last" in (run_dir / ".hydra" / "segment_2" / "overrides.yaml").read_text()
    rows_before = csv_rows(csv_before)  # logged history kept (columns may be added), rows appended
    assert csv_rows((run_dir / "csv" / "metrics.csv").read_text())[:len(rows_before)] == rows_before
    curve = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines()]
    assert len(curve) == 2 and curve[0]["step"] < curve[1]["step"]  # one row per evaluation, none repeated
    times = [r["time_s"] for r in curve]
    assert times == sorted(times) and metrics["time/total_s"] > elapsed  # wall time carried over
    assert wandb_exit_code(run_dir) == 0


def test_a_stop_is_honoured_inside_a_long_synthesis_batch(tmp_path):
    """SIGINT in the middle of a DeepInversion batch that would take hours: stopped within the
    next inner iteration, with the state from before the batch saved and the command to go on."""
    run_dir = tmp_path / "run"
    proc = dfkd_train(None, *TINY, "method=deepinversion", "method.synthesizer.iterations=10000000",
                      "method.synthesis.steps_per_epoch=2", "trainer.max_epochs=1", "trainer.max_time=00:01:00:00",
                      "logger=none", f"hydra.run.dir={run_dir}")
    log = run_dir / "train.log"
    wait_for(log, proc)
    deadline = time.time() + 120
    while "training" not in log.read_text() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # well inside the first batch
    proc.send_signal(signal.SIGINT)
    err = finish(proc, timeout=90)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by SIGINT" in err and f"Continue with: dfkd-train resume={run_dir.resolve()}" in err
    assert fit_progress(run_dir / "checkpoints" / "last.ckpt") == 0
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "stopped"
    # the batch thrown away is not charged to the budget the resumed run continues (3 s and more)
    timer = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]["Timer"]
    assert timer["time_elapsed"]["train"] < 1


def test_a_timer_of_ones_own_takes_over_the_time_budget(compose_cfg):
    """As Lightning has it: with a Timer among the callbacks, trainer.max_time is not a second one
    (two stateful callbacks under one key stopped the run before it started)."""
    timer = "+callbacks.timer={_target_:pytorch_lightning.callbacks.Timer,duration:'00:00:10:00'}"
    metrics = train.run(compose_cfg("method=kd", "trainer.max_time=00:00:05:00", timer))
    assert "test/acc" in metrics


def test_a_checkpoint_records_the_time_of_the_last_finished_step():
    trainer = SimpleNamespace(should_stop=False, strategy=SimpleNamespace(broadcast=lambda x: x))
    clock, budget = WallClock(), WallClockBudget("00:00:10:00")
    for callback in (clock, budget):
        callback.on_train_start(trainer, None)
        callback.on_train_batch_end(trainer, None, None, None, 0)
    time.sleep(0.3)  # a step a stop throws away
    assert clock.elapsed() - clock.state_dict()["elapsed_s"] >= 0.3
    saved = budget.state_dict()["time_elapsed"]["train"]
    assert budget.time_elapsed() - saved >= 0.3
    resumed = WallClockBudget("00:00:10:00")
    resumed.load_state_dict(budget.state_dict())
    assert resumed.time_elapsed() == saved and resumed.state_key == "Timer"  # Lightning's Timer's checkpoints too
    budget.on_validation_end(trainer, None)  # an evaluation ends: the state is current again
    assert budget.state_dict()["time_elapsed"]["train"] >= saved + 0.3


def test_a_killed_run_is_reported_as_unfinished(tmp_path):
    killed, stopped = tmp_path / "killed", tmp_path / "stopped"
    killed.mkdir()
    (killed / "progress.json").write_text(json.dumps({"val/acc": 0.5, "time/total_s": 3.0}))
    stopped.mkdir()
    (stopped / "metrics.json").write_text(json.dumps({"val/acc": 0.5, "status": "stopped"}))
    assert run_row(load_run(killed))["status"] == UNFINISHED
    assert run_row(load_run(stopped))["status"] == "stopped"


# --- every record tells the truth ------------------------------------------------------------------
def test_a_failed_run_says_so_in_every_record(tmp_path):
    run_dir = tmp_path / "run"
    proc = dfkd_train(None, *TINY, "method=dafl", "loss.weights.kd=nan", "method.synthesis.steps_per_epoch=2",
                      "method.synthesizer.ngf=4", f"hydra.run.dir={run_dir}", wandb="offline")
    err = finish(proc)
    assert proc.returncode == 2
    assert "dfkd-train: TrainingDiverged: non-finite loss" in err and "Traceback" not in err
    assert json.loads((run_dir / "metrics.json").read_text())["status"].startswith("failed: TrainingDiverged")
    log = (run_dir / "train.log").read_text()
    assert "Traceback" in log and "TrainingDiverged: non-finite loss" in log
    assert wandb_exit_code(run_dir) == 2
    assert wandb_summary(run_dir)["status"].startswith("failed: TrainingDiverged: non-finite loss")


def test_an_unexpected_error_exits_1_with_its_traceback_in_the_run_log(monkeypatch, capsys, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(train, "build_module", broken)
    code, err = cli(monkeypatch, capsys, tmp_path)
    assert code == 1
    assert "dfkd-train: RuntimeError: broken on purpose" in err and "Traceback" not in err
    assert "Traceback" in (tmp_path / "run" / "train.log").read_text()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed: RuntimeError: broken on purpose"


def test_an_unexpected_error_in_a_multirun_job_stays_exit_1(monkeypatch, capsys, tmp_path):
    """A sweep's command line does not compose as one run: that must not make a job's crash bad input."""
    monkeypatch.setattr(train, "build_module", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("broken")))
    code, err = cli(monkeypatch, capsys, tmp_path, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    base=("-m", *FAST))
    assert code == 1 and "RuntimeError: broken" in err


def test_a_failed_job_leaves_the_rest_of_its_sweep_running(monkeypatch, capsys, tmp_path):
    """One diverging job of a sweep (a learning-rate search hits one) must not end the sweep: the
    other jobs run and finish, each record says how it ended, and the sweep exits 1."""
    sweep = tmp_path / "sweep"
    monkeypatch.setenv("WANDB_MODE", "offline")
    code, err = cli(monkeypatch, capsys, tmp_path, "method=kd", "loss.weights.kd=nan,1.0", f"hydra.sweep.dir={sweep}",
                    "logger=wandb", base=("-m", *FAST))
    assert code == 1 and "JobFailed" in err and "TrainingDiverged: non-finite loss" in err
    jobs = {p.name.split("_")[0]: p for p in sweep.glob("*_*")}
    status = {n: json.loads((p / "metrics.json").read_text())["status"] for n, p in jobs.items()}
    assert status["0"].startswith("failed: TrainingDiverged") and status["1"] == "finished"
    assert [wandb_summary(jobs[n])["status"] for n in "01"] == [status["0"], "finished"]
    finished = json.loads((jobs["1"] / "metrics.json").read_text())
    assert wandb_summary(jobs["1"])["run/ended"] == finished["run/ended"]  # the summary is metrics.json
    assert {wandb_records(p, "run")[0].run_group for p in jobs.values()} == {"train-sweep"}  # one group per sweep


def test_a_run_inside_its_warm_up_says_the_student_will_not_train(monkeypatch, capsys, tmp_path):
    code, err = cli(monkeypatch, capsys, tmp_path, "method=fastdfkd", "method.synthesis.batch_size=8")
    assert code == 0 and "dfkd-train: warning: method.synthesis.warmup_epochs=2" in err
    assert "will not train at all" in (tmp_path / "run" / "train.log").read_text()


def test_a_bad_value_stops_before_wandb_starts(tmp_path):
    run_dir = tmp_path / "run"
    proc = dfkd_train(None, *TINY, *DAFL, "method.epochs=-3", f"hydra.run.dir={run_dir}", wandb="offline")
    err = finish(proc)
    assert proc.returncode == 2 and "method.epochs=-3 must be >= 1" in err and "Traceback" not in err
    assert not (run_dir / "wandb").exists() and not (run_dir / "checkpoints").exists()
    record = json.loads((run_dir / "metrics.json").read_text())  # its record says which run it was
    assert record["status"].startswith("failed: ConfigError") and record["run/seed"] == 0
    assert "method.epochs=-3" in record["run/command"]


# --- validation before anything starts ------------------------------------------------------------
BAD_VALUES = {
    "negative epochs": (["method.epochs=-1"], "method.epochs=-1 must be >= 1"),
    "negative max_steps": (["trainer.max_steps=-5"], "trainer.max_steps=-5 must be a positive count"),
    "zero synthetic batch": (["method=dafl", "method.synthesis.batch_size=0"], "method.synthesis.batch_size=0 must be >= 1"),
    "no steps per epoch": (["method=dafl", "method.synthesis.steps_per_epoch=0"],
                           "method.synthesis.steps_per_epoch=0 must be >= 1"),
    "a key that moved into a block": (["method=dafl", "method.steps_per_epoch=5"],
                                      "method.steps_per_epoch is now method.synthesis.steps_per_epoch"),
    "a block the method does not have": (["method=kd", "method.dfq.quant_bits=4"],
                                         "method.dfq.quant_bits: method=kd has no method.dfq block"),
    "a key added with +": (["+method.epochz=3"], "method.epochz is not a setting"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_fails_at_once_naming_the_key(monkeypatch, capsys, tmp_path, case):
    overrides, message = BAD_VALUES[case]
    code, err = cli(monkeypatch, capsys, tmp_path, *overrides)
    assert code == 2
    assert "dfkd-train: ConfigError: " in err and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_trainer_gpu_without_a_gpu_fails_at_once(monkeypatch, capsys, tmp_path):
    code, err = cli(monkeypatch, capsys, tmp_path, "trainer=gpu")
    assert code == 2 and "has no usable GPU; use trainer=cpu" in err


def test_an_unwritable_run_dir_fails_before_hydra_writes_anything(monkeypatch, capsys, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(sys, "argv", ["dfkd-train", *FAST, f"hydra.run.dir={tmp_path / 'file' / 'run'}"])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    assert "cannot be created" in capsys.readouterr().err


# --- resume refuses what would change the run -----------------------------------------------------
def fake_run_dir(path: Path, overrides: list[str]) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "checkpoints").mkdir()
    (path / "checkpoints" / "last.ckpt").write_bytes(b"")
    return path


def test_resume_restores_the_saved_overrides(tmp_path):
    run_dir = fake_run_dir(tmp_path / "run", ["method=kd", "trainer.max_epochs=1", "trainer=cpu"])
    expected = ["method=kd", "trainer=cpu", "trainer.max_epochs=3", f"hydra.run.dir='{run_dir}'", "resume=last",
                "hydra.output_subdir=.hydra/segment_2"]
    assert resume_args([f"resume={run_dir}", "trainer.max_epochs=3"]) == expected
    assert resume_args([f"hydra.run.dir={run_dir}", "resume=last", "trainer.max_epochs=3"]) == expected
    (run_dir / ".hydra" / "segment_2").mkdir()
    assert resume_args([f"resume={run_dir}"])[-1] == "hydra.output_subdir=.hydra/segment_3"
    assert resume_args(["method=kd"]) == ["method=kd"]  # not a resume


@pytest.mark.parametrize("name", ["runs (1)/it's #2", "multirun/1_method=kd,seed=1", "a,b"])
def test_resume_of_a_run_dir_whose_name_hydra_would_misread(tmp_path, name):
    """A folder named like ``run (1)``, ``#2`` or a multirun job's ``1_method=kd,seed=1``: the resumed
    run's ``hydra.run.dir`` reads back as that folder, and the quoted form the bench passes
    (``hydra.run.dir='...' resume=last``) resumes too."""
    run_dir = fake_run_dir(tmp_path / name, ["method=kd"])
    args = resume_args([f"resume={run_dir}"])
    (run_dir_override,) = [a for a in args if a.startswith("hydra.run.dir=")]
    assert OverridesParser.create().parse_override(run_dir_override).value() == str(run_dir)
    assert resume_args([run_dir_override, "resume=last"]) == args
    assert shlex.split(continue_command(run_dir)) == ["dfkd-train", f"resume={run_dir.resolve()}"]  # for a shell


def test_resume_refuses_an_override_that_changes_the_run(tmp_path):
    run_dir = fake_run_dir(tmp_path / "run", ["method=kd"])
    with pytest.raises(ConfigError, match="it was started with method=kd"):
        resume_args([f"resume={run_dir}", "method=dafl"])
    with pytest.raises(ConfigError, match="it was started with data.num_classes at its default"):
        resume_args([f"resume={run_dir}", "data.num_classes=7"])
    assert resume_args([f"resume={run_dir}", "method=kd"])[0] == "method=kd"  # the same value is fine
    with pytest.raises(ConfigError, match="seed=5 would change what the run in .* computes; it was started with seed at"):
        resume_args([f"resume={run_dir}", "seed=5"])  # a resumed run continues its checkpoint's random state
    for changed in ("loss.weights.ie=3", "method.lr=0.5", "+experiment=cifar10_cpu_kd", "debug=overfit",
                    "trainer.limit_train_batches=3"):  # a result would mix two runs
        with pytest.raises(ConfigError, match="would change what the run"):
            resume_args([f"resume={run_dir}", changed])
    allowed = ["trainer.max_epochs=9", "+callbacks.teacher_pass_budget.max_passes=9", "trainer=gpu", "logger=csv",
               "data.root=/data", "data.num_workers=4", "trainer.enable_progress_bar=false", "hydra/job_logging=disabled",
               "proxy.root=/p", "transfer_set=/t", "data.eval_batch_size=512", "trainer.sync_batchnorm=true"]
    assert set(allowed) <= set(resume_args([f"resume={run_dir}", *allowed]))


def test_resume_of_a_finished_run_checks_its_overrides_first(tmp_path):
    run_dir = fake_run_dir(tmp_path / "run", ["method=kd", "trainer.max_epochs=2"])
    (run_dir / "metrics.json").write_text(json.dumps({"status": "finished", "test/acc": 0.5}))
    with pytest.raises(ConfigError, match="seed=1 would change"):
        resume_args([f"resume={run_dir}", "seed=1"])
    with pytest.raises(RunFinished):
        resume_args([f"resume={run_dir}", "trainer.max_epochs=2", "logger=csv"])  # nothing longer
    assert "trainer.max_epochs=4" in resume_args([f"resume={run_dir}", "trainer.max_epochs=4"])


def test_resume_keeps_hydras_flags_before_the_overrides(tmp_path):
    """``dfkd-train resume=DIR trainer.max_steps=9 --cfg job``: Hydra's parser takes the overrides in
    one run, so the ones resume adds must not come after the flags."""
    run_dir = fake_run_dir(tmp_path / "run", ["method=kd"])
    args = resume_args([f"resume={run_dir}", "trainer.max_steps=9", "--cfg", "job", "-cd", "/x"])
    assert args[:4] == ["--cfg", "job", "-cd", "/x"] and all("=" in a for a in args[4:])


@pytest.mark.parametrize("saved, message", [
    ({"name": "kd", "module": "dfkd_lab.methods.kd.KnowledgeDistillation"}, "holds a method=kd run"),
    # the same module serves every data-free method: the name tells them apart
    ({"name": "fastdfkd", "module": "dfkd_lab.methods.data_free.DataFreeDistillation"}, "holds a method=fastdfkd run"),
    ([1, 2], "is not a checkpoint of a run (it holds a list)"),
    (b"", "cannot read"),
])
def test_a_checkpoint_of_another_method_is_refused_before_anything_is_written(monkeypatch, capsys, tmp_path,
                                                                             saved, message):
    ckpt = tmp_path / "other.ckpt"
    if isinstance(saved, bytes):
        ckpt.write_bytes(saved)
    else:
        torch.save({"hyper_parameters": {"method": saved}} if isinstance(saved, dict) else saved, ckpt)
    code, err = cli(monkeypatch, capsys, tmp_path, "method=dafl", f"resume={ckpt}")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_new_run_from_a_pool_methods_checkpoint_takes_its_transfer_set(monkeypatch, capsys, tmp_path):
    """resume=<file>.ckpt of DeepInversion (a pool method) looked for the pool's shards in the new
    run dir and stopped; the source run's transfer set now comes with its checkpoint."""
    source = tmp_path / "source"
    code, err = cli(monkeypatch, capsys, source, *TINY, *DEEPINVERSION, "trainer.max_epochs=1", base=())
    assert code == 0, err
    ckpt = source / "run" / "checkpoints" / "last.ckpt"
    code, err = cli(monkeypatch, capsys, tmp_path, *TINY, *DEEPINVERSION, f"resume={ckpt}", base=())
    assert code == 0, err
    made = json.loads((tmp_path / "run" / "transfer_set" / "manifest.json").read_text())["images"]
    assert made == json.loads((tmp_path / "run" / "metrics.json").read_text())["cost/images"] > 0


def test_a_finished_run_keeps_its_results_when_resumed(monkeypatch, capsys, tmp_path):
    """A second resume of a finished run changes nothing; a run killed between its last checkpoint
    and metrics.json (the bench continues it with resume=last) gets its last evaluation back."""
    run_dir = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, tmp_path, "method=dafl")
    assert code == 0, err
    finished = (run_dir / "metrics.json").read_bytes()
    for extra in ([], ["logger=csv"]):  # an override that gives it nothing more to train changes nothing
        code, err = cli(monkeypatch, capsys, tmp_path, f"resume={run_dir}", *extra, base=())
        assert code == 0 and "finished already (test acc" in err
        assert (run_dir / "metrics.json").read_bytes() == finished
    # a resume to train longer that fails before it trains (a bad setting) keeps the results
    code, err = cli(monkeypatch, capsys, tmp_path, f"resume={run_dir}", "trainer.max_epochs=3", "data.num_workers=-1",
                    base=())
    assert code == 2 and "data.num_workers" in err
    assert (run_dir / "metrics.json").read_bytes() == finished
    assert "before training; the finished run's metrics.json stands" in (run_dir / "train.log").read_text()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    checkpoint.rename(checkpoint.with_suffix(".kept"))  # finished, its checkpoints deleted: still finished
    code, err = cli(monkeypatch, capsys, tmp_path, f"resume={run_dir}", base=())
    assert code == 0 and "finished already" in err
    checkpoint.with_suffix(".kept").rename(checkpoint)
    (run_dir / "metrics.json").unlink()
    code, err = cli(monkeypatch, capsys, tmp_path, "method=dafl", "resume=last")
    assert code == 0, err
    before, after = json.loads(finished), json.loads((run_dir / "metrics.json").read_text())
    assert after["status"] == "finished"
    assert after["run/command"] == before["run/command"]  # the command that reproduces it: no resume=last
    for key in ("test/acc", "test/acc_best", "val/acc", "val/acc_best"):
        assert after[key] == before[key], key


def test_a_resume_that_fails_before_training_leaves_the_finished_run_finished_on_wandb(monkeypatch, capsys, tmp_path):
    """W&B has started (the resumed run's id) when the failure comes: the dashboard keeps the run
    as it finished, as metrics.json does; only the command's exit code and the log tell."""
    from dfkd_lab.methods.data_free import DataFreeDistillation

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, tmp_path, "method=dafl", "logger=wandb")
    assert code == 0, err
    finished = (run_dir / "metrics.json").read_bytes()

    def broken(self):
        assert train.wandb_run() is not None  # the failure this test is about comes after W&B starts
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(DataFreeDistillation, "on_fit_start", broken)
    code, err = cli(monkeypatch, capsys, tmp_path, f"resume={run_dir}", "trainer.max_epochs=3", base=())
    assert code == 1 and "broken on purpose" in err
    assert (run_dir / "metrics.json").read_bytes() == finished
    assert wandb_exit_code(run_dir) == 0 and "status" not in wandb_summary(run_dir)
    assert "a resume failed: RuntimeError: broken on purpose (exit 1) before training" in (run_dir / "train.log").read_text()



def history_steps(path: Path) -> list[int]:
    return [row.step.num for row in records_in(path, "history")]


def test_a_resumed_offline_run_numbers_its_wandb_rows_on_from_the_earlier_segment(monkeypatch, capsys, tmp_path):
    """Offline, W&B numbers each segment's rows from 0; uploaded, the resumed segment's rows
    would land on the first segment's steps. The resumed segment starts after them instead."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    assert cli(monkeypatch, capsys, tmp_path, "method=dafl", "logger=wandb")[0] == 0
    code, err = cli(monkeypatch, capsys, tmp_path, f"resume={run_dir}", "trainer.max_epochs=2", base=())
    assert code == 0, err
    assert wandb_exit_code(run_dir) == 0  # W&B's writer is done with the segment: its last record is there
    first, second = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    before, after = history_steps(first), history_steps(second)
    assert before == list(range(len(before))) and after  # each segment logged rows
    assert after == list(range(len(before), len(before) + len(after)))

# --- one meaning of "step" ---------------------------------------------------------------------------
def test_steps_are_student_updates_in_max_steps_the_csv_and_the_curve(compose_cfg):
    cfg = compose_cfg("method=dafl", "method.synthesizer.ngf=4", "method.synthesizer.nz=8", "method.synthesis.batch_size=8",
                      "method.synthesis.student_steps=2", "method.synthesis.steps_per_epoch=3", "trainer.limit_train_batches=null",
                      "trainer.max_epochs=2", "trainer.max_steps=6", "trainer.log_every_n_steps=1", "logger=csv")
    train.run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    # one epoch of 3 batches of 2 student updates; were the generator's steps counted, 2 batches
    assert fit_progress(last) == 3
    assert torch.load(last, weights_only=False)["global_step"] == 6
    assert [json.loads(line)["step"] for line in (run_dir / "curve.jsonl").read_text().splitlines()] == [6]
    with open(run_dir / "csv" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/kd")]
    assert steps == [2, 4, 6]


def test_the_final_test_counts_as_an_evaluation_for_the_best(compose_cfg, recwarn):
    full = OmegaConf.create({})  # evaluations and test on the whole split
    assert train.best_evaluation({"val/acc_best": 0.33, "test/acc": 0.54}, full) == {"test/acc_best": 0.54}
    assert train.best_evaluation({"val/acc_best": 0.6, "test/acc": 0.54}, full) == {"test/acc_best": 0.6}
    assert train.best_evaluation({"time/total_s": 3.0}, full) == {}
    # evaluations on 2 batches of the split against a test on all of it: their best is not a test figure
    for val, test in ((2, None), (1, 1.0), (1.0, 0.5), (0.5, 1)):
        limits = OmegaConf.create({"limit_val_batches": val, "limit_test_batches": test})
        assert train.best_evaluation({"val/acc_best": 0.6, "test/acc": 0.54}, limits) == {"test/acc_best": 0.54}
    for val, test in ((1.0, None), (None, 1.0), (3, 3), (0.5, 0.5)):  # the same images
        limits = OmegaConf.create({"limit_val_batches": val, "limit_test_batches": test})
        assert train.best_evaluation({"val/acc_best": 0.6, "test/acc": 0.54}, limits) == {"test/acc_best": 0.6}
    fewer = OmegaConf.create({"limit_val_batches": 2})
    assert train.best_evaluation({"val/acc_best": 0.6}, fewer) == {"test/acc_best": 0.6}  # test=false: all there is
    # two student steps, less than one epoch: no validation ran, yet the run has a best
    metrics = train.run(compose_cfg("method=kd", "trainer.limit_train_batches=null", "trainer.max_steps=2"))
    assert "val/acc_best" not in metrics
    assert metrics["test/acc_best"] == metrics["test/acc"]
    assert not [w for w in recwarn if "could not find the monitored key" in str(w.message)]  # nothing to act on


# --- output a person can read ---------------------------------------------------------------------
def test_a_run_into_a_file_prints_a_line_per_evaluation_and_ends_with_the_summary(tmp_path):
    """`make run > log`: no bar redrawn, no warnings, W&B quiet, the summary last."""
    out = tmp_path / "run.log"
    with open(out, "w") as f:
        cmd = [str(Path(sys.executable).with_name("dfkd-train")), "method=dfq", *TINY[:-1], "method.synthesis.steps_per_epoch=4",
               "method.epochs=2", f"hydra.run.dir={tmp_path / 'run'}"]
        code = subprocess.call(cmd, stdout=f, stderr=f,
                               env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    text = out.read_text()
    assert code == 0, text[-2000:]
    lines = text.splitlines()
    assert out.stat().st_size < 20_000
    assert lines[-1].startswith("dfkd-lab | method=dfq") and "test acc" in lines[-1] and "| int8 " in lines[-1]
    assert [line for line in lines[:-1] if not line.startswith("epoch ")] == []
    assert len(lines) == 3  # two evaluations, the summary


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dafl", "deepinversion"])
def test_ddp_sim_runs_end_to_end_with_the_default_logger(tmp_path, method):
    extra = {"dafl": ["teacher=lenet5_bn_fmnist", "method.synthesizer.ngf=4", "method.synthesizer.nz=8"],
             "deepinversion": ["method.synthesizer.iterations=3"]}[method]
    cmd = [str(Path(sys.executable).with_name("dfkd-train")), f"method={method}", *extra, "trainer=ddp_sim",
           "method.synthesis.steps_per_epoch=3", "method.synthesis.batch_size=16", "method.synthesis.student_steps=2", "method.epochs=1",
           "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test acc" in done.stdout.splitlines()[-1]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "finished"
    assert wandb_exit_code(tmp_path / "run") == 0


def test_an_option_whose_extra_is_not_installed_is_named_with_the_pip_command(monkeypatch):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else found(name, *a))
    with pytest.raises(ConfigError, match=r"^hparams_search= needs the optuna extra.*pip install 'dfkd-lab\[optuna\]'"):
        train.check_extras(["hparams_search=dafl_optuna", "debug=default"])
    train.check_extras(["method=dafl"])  # no extra needed
