"""Bad input stops `dfkd-train` at once with one paragraph naming the cause and the fix, exit 2;
a killed run resumes from its last checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import FAST
from dfkd_lab import train
from dfkd_lab.zoo import CHECKPOINTS, zoo_entry

TEACHER_PT = CHECKPOINTS / "lenet5_fmnist.pt"


def cli(monkeypatch, capsys, tmp_path, *overrides):
    """Run the `dfkd-train` entrypoint in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dfkd-train", *FAST, f"hydra.run.dir={tmp_path / 'run'}", *overrides])
    GlobalHydra.instance().clear()
    try:
        train.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def corrupt_copy(tmp_path) -> Path:
    path = tmp_path / "teacher.pt"
    raw = bytearray(TEACHER_PT.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


BAD_INPUT = {
    "missing teacher file": (
        ["teacher=custom", "teacher.arch=lenet5", "teacher.ckpt=/nonexistent/teacher.pt"],
        "TeacherError", "teacher.ckpt: checkpoint file /nonexistent/teacher.pt does not exist"),
    "class-count mismatch": (
        ["data.num_classes=7"], "TeacherError", "predicts 10 classes but data.num_classes=7"),
    "teacher without BN": (
        ["method=dafl", "method.needs_bn=true", "teacher=lenet5_fmnist"],
        "TeacherError", "use a BN teacher"),
    "unknown loss weight": (["+loss.weights.kdd=1"], "UnknownLossWeight", "['kdd']"),
    "missing image folder": (
        ["method=scratch", "data=image_folder", "data.root=/nonexistent/images", "data.num_classes=2"],
        "DatasetUnavailable", "data.root=/nonexistent/images has no 'train' folder"),
    "resume without checkpoint": (["resume=last"], "FileNotFoundError", "no checkpoint at"),
    "non-finite loss": (
        ["method=dafl", "loss.weights.kd=nan", "method.steps_per_epoch=2", "method.batch_size=8",
         "method.synthesizer.ngf=4"],
        "SynthesisDiverged", "non-finite loss"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_ends_with_one_clear_paragraph_and_exit_2(monkeypatch, capsys, tmp_path, case):
    overrides, error, message = BAD_INPUT[case]
    code, err = cli(monkeypatch, capsys, tmp_path, *overrides)
    assert code == 2
    assert f"dfkd-train: {error}: " in err and message in err
    assert "Traceback" not in err


def test_corrupt_teacher_checkpoint_fails_the_hash_check(monkeypatch, capsys, tmp_path):
    sha = zoo_entry("lenet5_fmnist").sha256
    code, err = cli(monkeypatch, capsys, tmp_path, f"teacher.ckpt={corrupt_copy(tmp_path)}", f"teacher.sha256={sha}")
    assert code == 2
    assert f"expected {sha}" in err and "teacher.sha256=null" in err


def test_dfkd_debug_keeps_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DFKD_DEBUG", "1")
    code, err = cli(monkeypatch, capsys, tmp_path, "data.num_classes=7")
    assert code != 0
    assert "Traceback" in err and "TeacherError: teacher: the teacher predicts 10 classes" in err


def test_mistyped_key_fails_before_any_work(monkeypatch, capsys, tmp_path):
    code, err = cli(monkeypatch, capsys, tmp_path, "trainer.max_stpes=3")
    assert code != 0 and "max_stpes" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- a killed run resumes ------------------------------------------------------------------------
TINY_DAFL = ["method=dafl", "method.batch_size=16", "method.student_steps=1", "method.synthesizer.ngf=4",
             "method.synthesizer.nz=8", "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false",
             "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.max_epochs=1",
             "method.steps_per_epoch=200", "callbacks.step_checkpoint.every_n_train_steps=20"]


def dfkd_train(run_dir, *overrides):
    cmd = [str(Path(sys.executable).with_name("dfkd-train")), *TINY_DAFL, f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_from_last_ckpt_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = dfkd_train(run_dir)
    deadline = time.time() + 120
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint write finish
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < killed_at < 400  # mid-epoch: dafl counts 2 optimiser steps per batch (generator + student)

    resumed = dfkd_train(run_dir, "resume=last")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert (run_dir / "metrics.json").is_file()
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 400


def test_publishing_a_teacher_never_overwrites_a_shipped_zoo_entry(compose_cfg):
    from dfkd_lab.config import ConfigError
    from dfkd_lab.train import run

    cfg = compose_cfg("method=teacher", "teacher=lenet5", "method.zoo_name=lenet5_fmnist")
    with pytest.raises(ConfigError, match="already exists"):
        run(cfg)
