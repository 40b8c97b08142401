"""Runs end to end: trainer presets, multirun sweeps, a frozen teacher, exact resume, W&B."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from conftest import FAST, fit_two_epochs
from dfkd_lab.build import build_data, build_module, build_student, build_teacher, trainer_kwargs
from dfkd_lab.train import run

# one representative per family, tiny; `method=X` files not listed here are covered by their owners
TINY = {
    "kd": ["method=kd", "teacher=lenet5_bn_fmnist", "trainer.limit_train_batches=3"],
    "dafl": ["method=dafl", "teacher=lenet5_bn_fmnist", "method.synthesis.steps_per_epoch=3", "method.synthesis.batch_size=16",
             "method.synthesis.student_steps=2", "method.synthesizer.ngf=4", "method.synthesizer.nz=8",
             "trainer.limit_train_batches=null"],
}


@pytest.mark.parametrize("preset", ["cpu", pytest.param("cpu_bf16", marks=pytest.mark.slow)])
def test_trainer_presets_run(compose_cfg, preset):
    metrics = run(compose_cfg(*TINY["dafl"], f"trainer={preset}"))
    assert 0.0 <= metrics["test/acc"] <= 1.0


class Interrupted(Exception):
    pass


class Crash(pl.Callback):
    """Fail at the start of epoch ``epoch``, as a killed job would (its checkpoints stay)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Interrupted


@pytest.mark.parametrize("method", sorted(TINY))
def test_teacher_parameters_and_bn_buffers_never_change(compose_cfg, tmp_path, method):
    cfg = compose_cfg(*TINY[method])
    pl.seed_everything(0, verbose=False)
    data = build_data(cfg)
    teacher = build_teacher(cfg, data)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert any("running_mean" in k for k in before)
    module = build_module(cfg, build_student(cfg, data), teacher, data)
    trainer = pl.Trainer(**trainer_kwargs(cfg), logger=False, callbacks=[ModelCheckpoint(dirpath=tmp_path)])
    data.setup("fit")
    trainer.fit(module, module.train_dataloader_from(data), data.val_dataloader())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    saved = torch.load(next(tmp_path.glob("*.ckpt")), map_location="cpu", weights_only=True)
    assert saved["state_dict"] and not any(k.startswith("teacher.") for k in saved["state_dict"])


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(TINY))
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(compose_cfg, tmp_path, method):
    cfg = compose_cfg(*TINY[method])
    whole, whole_trainer = fit_two_epochs(cfg, tmp_path / "whole")
    with pytest.raises(Interrupted):
        fit_two_epochs(cfg, tmp_path / "cut", callbacks=[Crash(1)])
    resumed, resumed_trainer = fit_two_epochs(cfg, tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    assert resumed_trainer.global_step == whole_trainer.global_step
    assert float(resumed_trainer.callback_metrics["val/acc"]) == float(whole_trainer.callback_metrics["val/acc"])
    for key, value in whole.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key



class CrashMidEpoch(pl.Callback):
    """Save a checkpoint after the second round of the second epoch and fail, as a step
    checkpoint followed by a SIGKILL would."""

    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            trainer.save_checkpoint(self.path)
            raise Interrupted


def test_a_mid_epoch_resume_of_a_data_free_run_is_exact_and_draws_no_lightning_warning(compose_cfg, tmp_path):
    """The step stream has no position of its own (a round does not depend on its index), so
    Lightning's warning that the loader cannot resume mid-epoch does not apply and must not show."""
    cfg = compose_cfg(*TINY["dafl"])
    whole, whole_trainer = fit_two_epochs(cfg, tmp_path / "whole")
    with pytest.raises(Interrupted):
        fit_two_epochs(cfg, tmp_path / "cut", callbacks=[CrashMidEpoch(tmp_path / "mid.ckpt")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, resumed_trainer = fit_two_epochs(cfg, tmp_path / "cut", ckpt_path=str(tmp_path / "mid.ckpt"))
    assert not [w for w in caught if "ended before the epoch ended" in str(w.message)]
    assert resumed_trainer.global_step == whole_trainer.global_step
    for key, value in whole.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key

def dfkd_train(*args, cwd=None):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).with_name("dfkd-train")), *args]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_multirun_sweep_writes_one_run_dir_per_job(tmp_path):
    done = dfkd_train("-m", "method=kd", "seed=0,1", *FAST, "trainer.limit_train_batches=1",
                      f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    assert [p.name[:2] for p in runs] == ["0_", "1_"]
    assert "seed=0" in runs[0].name and "seed=1" in runs[1].name
    assert all(0 <= json.loads((p / "metrics.json").read_text())["test/acc"] <= 1 for p in runs)


@pytest.mark.slow
def test_wandb_offline_run_lives_in_the_run_dir_and_resume_keeps_its_id(compose_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg("method=kd", "logger=wandb", "trainer.limit_train_batches=1")
    run_dir = Path(cfg.paths.output_dir)
    try:
        run(cfg)
    finally:
        import wandb

        wandb.finish()
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    run(compose_cfg("method=kd", "logger=wandb", "trainer.limit_train_batches=1", "trainer.max_epochs=2",
                    "resume=last"))
    wandb.finish()
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # same id, resumed


def test_the_best_evaluation_travels_in_the_checkpoint(compose_cfg):
    """A resumed run's best accuracy counts the evaluations before the stop (it restarted from
    the first evaluation after it, and a run whose best came early ended with a lower best)."""
    from torch import nn

    from dfkd_lab.methods.supervised import SupervisedTraining

    cfg = compose_cfg("method=scratch")
    before, after = (SupervisedTraining(nn.Linear(2, 10), cfg.method, cfg.loss, 10) for _ in range(2))
    before.val_best.update(torch.tensor(0.37))
    checkpoint = {"state_dict": {}}
    before.on_save_checkpoint(checkpoint)
    after.on_load_checkpoint(checkpoint)
    after.val_best.update(torch.tensor(0.33))
    assert after.val_best.compute().item() == pytest.approx(0.37)


def test_an_evaluation_made_again_at_the_same_step_replaces_its_row(tmp_path):
    from types import SimpleNamespace

    from dfkd_lab.callbacks.metrics import MetricsWriter

    writer = MetricsWriter(str(tmp_path / "metrics.json"))
    for step, acc in ((10, 0.3), (20, 0.4), (20, 0.41)):  # the last: a resumed run evaluating step 20 again
        trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, callback_metrics={"val/acc": acc},
                                  current_epoch=step // 10 - 1, global_step=step, callbacks=[])
        writer.on_validation_end(trainer, None)
    rows = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val/acc"]) for r in rows] == [(10, 0.3), (20, 0.41)]
