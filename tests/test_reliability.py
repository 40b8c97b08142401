"""Bad input stops `dfkd-train` at once with one paragraph naming the cause and the fix, exit 2;
a killed run resumes from its last checkpoint."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import FAST, compose_config
from dfkd_lab import provenance, train
from dfkd_lab.zoo import SHIPPED_CHECKPOINTS, zoo_entry

TEACHER_PT = SHIPPED_CHECKPOINTS / "lenet5_fmnist.pt"


def cli(monkeypatch, capsys, tmp_path, *overrides, base=FAST):
    """Run the `dfkd-train` entrypoint in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dfkd-train", *base, f"hydra.run.dir={tmp_path / 'run'}", *overrides])
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
        "TeacherError", "use a BN teacher (e.g. teacher=lenet5_bn_fmnist)\n"),  # needs_bn: weight 0 is no way out
    "BN weight with a teacher without BN": (
        ["method=dfad", "teacher=lenet5_fmnist", "++loss.weights.bn=1"],
        "TeacherError", "or set loss.weights.bn=0"),
    "unknown loss weight": (["+loss.weights.kdd=1"], "ConfigError",
                            ("no loss term is registered as 'kdd' (renamed terms: docs/changelog.md); "
                             "method=kd weighs ['at', 'ce', 'fsp', 'hint', 'kd']")),
    "loss weight of an old name": (
        ["method=dafl", "loss.weights.oh=1"], "ConfigError",
        "loss.weights.oh: no loss term is registered as 'oh' (renamed terms: docs/changelog.md); method=dafl weighs"),
    "a term the method has not weighed, without +": (
        ["method=dafl", "loss.weights.ent=1"], "ConfigError",
        "method=dafl's config gives no weight for 'ent'; add one with +loss.weights.ent=1"),
    "a registered term the method does not compute": (
        ["+loss.weights.ent=1"], "UnknownLossWeight", "which method=kd does not use; its terms are"),
    "a class that cannot be imported": (
        ["method=dafl", "method.synthesizer._target_=nosuchmodule.Gen"], "ConfigError",
        "method.synthesizer._target_=nosuchmodule.Gen cannot be imported: no module named 'nosuchmodule' on Python's path"),
    "missing image folder": (
        ["method=scratch", "data=image_folder", "data.root=/nonexistent/images", "data.num_classes=2"],
        "DatasetUnavailable", "data.root=/nonexistent/images has no 'train' folder"),
    "resume of a folder that is no run dir": (["resume=last"], "ConfigError", "is not a run dir"),
    "non-finite loss": (
        ["method=dafl", "loss.weights.kd=nan", "method.synthesis.steps_per_epoch=2", "method.synthesis.batch_size=8",
         "method.synthesizer.ngf=4"],
        "TrainingDiverged", "non-finite loss ['weighted sum'] in the student update"),
    "a bad value the synthesizer refuses": (
        ["method=cmi", "method.synthesizer.capacity=0"], "ConfigError", "capacity must be a number of images >= 1"),
    "a synthesizer value out of range": (
        ["method=nayer", "method.synthesizer.g_steps=0"], "ConfigError", "method.synthesizer.g_steps must be >= 1, got 0"),
    "a proxy split the dataset does not have": (
        ["method=kd_proxy", "proxy.split=val"], "ConfigError", "proxy.split=val: proxy=cifar10 has the splits train and test"),
    "a proxy for a method that reads none": (
        ["method=kd", "proxy=cifar10_gray"], "ConfigError", "proxy=cifar10 is given but method=kd trains on real data"),
    "a proxy key that is not a setting": (
        ["method=kd_proxy", "+proxy.limt=10"], "ConfigError", "proxy.limt is not a setting"),
    "a synthesizer key that is no setting": (
        ["method=dafl", "+method.synthesizer.mixup=true"], "ConfigError",
        "unexpected keyword argument 'mixup'\") full_key: method.synthesizer: a key set for it is not one of its settings"),
    "non-finite loss, kd": (
        ["method=kd", "method.lr=1e30", "trainer.max_steps=4", "data.batch_size=8"],
        "TrainingDiverged", "in the student update"),
    "non-finite loss, scratch": (
        ["method=scratch", "method.lr=1e30", "trainer.max_steps=4", "data.batch_size=8"],
        "TrainingDiverged", "non-finite loss ['ce', 'weighted sum'] in the training step"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_ends_with_one_clear_paragraph_and_exit_2(monkeypatch, capsys, tmp_path, case):
    overrides, error, message = BAD_INPUT[case]
    code, err = cli(monkeypatch, capsys, tmp_path, *overrides)
    assert code == 2
    assert f"dfkd-train: {error}: " in err and message in err
    assert "Traceback" not in err


def test_a_config_folder_of_ones_own_that_is_missing_or_lacks_its_header_is_named(monkeypatch, capsys, tmp_path):
    code, err = cli(monkeypatch, capsys, tmp_path, "--config-dir", str(tmp_path / "nope"), "method=kd")
    assert code == 2 and f"--config-dir {tmp_path / 'nope'}: no such folder" in err
    code, err = cli(monkeypatch, capsys, tmp_path, f"hydra.searchpath=[file://{tmp_path / 'gone'}]")
    assert code == 2 and f"hydra.searchpath {tmp_path / 'gone'}: no such folder" in err
    (tmp_path / "conf" / "method").mkdir(parents=True)  # a method file without '# @package _global_'
    (tmp_path / "conf" / "method" / "mine.yaml").write_text("defaults:\n  - override /teacher: lenet5_bn_fmnist\nname: mine\n")
    code, err = cli(monkeypatch, capsys, tmp_path, "method=mine", base=("--config-dir", str(tmp_path / "conf"), *FAST))
    assert code == 2 and "a method YAML starts with the line '# @package _global_'" in err


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes)"),
    (b"hello\n", "cannot read"),
    ("list", "holds a list, not a state dict"),
    ("model", "it holds Python objects, not only tensors (Unsupported global: GLOBAL torch.nn.modules.linear.Linear "),
])
def test_a_teacher_file_without_weights_is_named_as_such(monkeypatch, capsys, tmp_path, content, message):
    path = tmp_path / "t.pt"
    if content in ("list", "model"):  # a whole pickled model, as torch.save(model, path) writes it
        torch.save([1, 2] if content == "list" else torch.nn.Linear(2, 2), path)
    else:
        path.write_bytes(content)
    code, err = cli(monkeypatch, capsys, tmp_path, "teacher=custom", "teacher.arch=lenet5", f"teacher.ckpt={path}")
    assert code == 2 and "teacher.ckpt: " in err and str(path) in err and message in err
    assert "Traceback" not in err and "weights_only" not in err  # never advice to load it unsafely


def test_a_teacher_with_nan_weights_is_refused_before_training(monkeypatch, capsys, tmp_path):
    state = torch.load(TEACHER_PT, weights_only=True)
    state[next(iter(state))][0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    code, err = cli(monkeypatch, capsys, tmp_path, "teacher=custom", "teacher.arch=lenet5", f"teacher.ckpt={path}")
    assert code == 2 and f"{path} holds NaN/inf weights (first in {next(iter(state))})" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_new_run_is_refused_a_dir_that_holds_another_run(monkeypatch, capsys, tmp_path):
    assert cli(monkeypatch, capsys, tmp_path, "seed=1")[0] == 0
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["run/seed"] == 1 and record["run/command"].startswith("dfkd-train ") and "seed=1" in record["run/command"]
    assert record["env/torch"] == torch.__version__
    saved = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    code, err = cli(monkeypatch, capsys, tmp_path, "seed=2")
    assert code == 2 and f"the run dir {tmp_path / 'run'} holds a finished run" in err
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == saved  # refused before Hydra wrote
    (tmp_path / "run" / "metrics.json").unlink()  # as if killed after its last checkpoint
    code, err = cli(monkeypatch, capsys, tmp_path, "seed=2")
    assert code == 2 and "holds a run that did not finish" in err and "resume=" in err


def test_a_new_run_gets_a_new_wandb_id_and_a_resumed_one_keeps_its_own(tmp_path):
    first = train.wandb_run_id(tmp_path, resumed=False)
    assert train.wandb_run_id(tmp_path, resumed=True) == first
    assert train.wandb_run_id(tmp_path, resumed=False) != first


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


@pytest.mark.parametrize("override", ["trainer.max_stpes=3", "method.epochs=abc", "student=nosuch"])
def test_a_command_line_hydra_refuses_exits_2_before_any_work(monkeypatch, capsys, tmp_path, override):
    """Hydra's own refusals (unknown key, wrong type, missing option) are bad input too: exit 2."""
    code, err = cli(monkeypatch, capsys, tmp_path, override)
    assert code == 2 and override.split("=")[0].split(".")[-1] in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("kernels, precision, warned", [(False, "bf16-mixed", True), (True, "bf16-mixed", False),
                                                       (False, "32-true", False)])
def test_bf16_on_a_cpu_without_bf16_kernels_warns_naming_the_key_and_runs(monkeypatch, capsys, tmp_path,
                                                                          kernels, precision, warned):
    monkeypatch.setattr(provenance, "cpu_bf16", lambda: kernels)
    code, err = cli(monkeypatch, capsys, tmp_path, f"trainer.precision={precision}")
    warning = "warning: trainer.precision=bf16-mixed on a CPU that torch has no bfloat16 kernels for"
    assert code == 0 and "note:" not in err  # an explicit precision is what runs, with no fallback note
    assert (f"dfkd-train: {warning}" in err) == warned and ("Add trainer.precision=32-true" in err) == warned
    assert (warning in (tmp_path / "run" / "train.log").read_text()) == warned
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["machine/cpu_bf16"] is kernels


@pytest.mark.parametrize("kernels, ran_in", [(False, "32-true"), (True, "bf16-mixed")])
def test_the_default_trainer_runs_a_bf16_method_in_32_bit_on_a_cpu_without_bf16_kernels(monkeypatch, capsys, tmp_path,
                                                                                         kernels, ran_in):
    monkeypatch.setattr(provenance, "cpu_bf16", lambda: kernels)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    default_trainer = [o for o in FAST if o != "trainer=cpu"]
    code, err = cli(monkeypatch, capsys, tmp_path, "method=dafl", "method.synthesis.steps_per_epoch=2", base=default_trainer)
    assert code == 0 and "warning:" not in err
    note = "note: method.precision=bf16-mixed runs as trainer.precision=32-true"
    assert (note in err) == (not kernels) and (note in (tmp_path / "run" / "train.log").read_text()) == (not kernels)
    assert compose_config(["method=dafl"], output_dir=tmp_path / "composed").trainer.precision == ran_in


# --- a killed run resumes ------------------------------------------------------------------------
# One representative per family, tiny, 120 steps of one epoch; (family, signal).
TINY_SYNTHESIS = ["method.synthesis.batch_size=16", "method.synthesis.student_steps=1",
                  "method.synthesis.steps_per_epoch=120"]
FAMILIES = {
    "kd": ["method=kd", "data.batch_size=16", "trainer.limit_train_batches=120"],
    "dafl": ["method=dafl", *TINY_SYNTHESIS, "method.synthesizer.ngf=4", "method.synthesizer.nz=8"],
    "deepinversion": ["method=deepinversion", *TINY_SYNTHESIS, "method.synthesizer.iterations=2"],
    "cmi": ["method=cmi", *TINY_SYNTHESIS, "method.synthesizer.iterations=2", "method.synthesizer.negatives=8",
            "method.synthesizer.bank_size=40", "method.synthesizer.ngf=4", "method.synthesizer.nz=8"],
    "fastdfkd": ["method=fastdfkd", *TINY_SYNTHESIS, "method.synthesis.warmup_epochs=0", "method.synthesizer.ngf=4",
                 "method.synthesizer.nz=8"],
}
POOL_FAMILIES = ("deepinversion", "cmi", "fastdfkd")  # their images go to a pool and the transfer set
# The default suite kills three (real data by SIGTERM; a pool method and a generator + pool method
# by SIGKILL); the other families and signals run with -m slow.
KILLS = [*(pytest.param(f, s, id=f"{f}-{s}") for f, s in [("kd", "SIGTERM"), ("fastdfkd", "SIGKILL")]),
         *(pytest.param(f, s, id=f"{f}-{s}", marks=pytest.mark.slow)
           for f, s in [("deepinversion", "SIGKILL"), ("dafl", "SIGKILL"), ("dafl", "SIGTERM"),
                        ("deepinversion", "SIGTERM"), ("cmi", "SIGTERM")])]
TINY_RUN = ["trainer=cpu", "logger=none", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "trainer.max_epochs=1",
            "callbacks.step_checkpoint.every_n_train_steps=10"]


def dfkd_train(run_dir, *overrides, wandb="disabled"):
    """`dfkd-train` in a subprocess: the tiny run in ``run_dir``, or with ``run_dir=None`` only ``overrides``."""
    args = [*TINY_RUN, f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    cmd = [str(Path(sys.executable).with_name("dfkd-train")), *args, *overrides]
    env = {**os.environ, "WANDB_MODE": wandb, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def hydra_record(run_dir: Path) -> dict:
    """The first segment's saved config, file by file."""
    return {p.name: p.read_bytes() for p in sorted((run_dir / ".hydra").glob("*.yaml"))}


def fit_progress(ckpt: Path) -> int:
    """Training batches completed in the run the checkpoint was taken from."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]


@pytest.mark.parametrize("family,sig", KILLS)
def test_killed_run_resumes_from_its_last_checkpoint_and_finishes(tmp_path, family, sig):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = dfkd_train(run_dir, *FAMILIES[family])
    deadline = time.time() + 120
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    beyond = run_dir / "transfer_set" / "shard_00011.pt"  # images made after the step-10 checkpoint
    while family in POOL_FAMILIES and not beyond.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    killed_at = fit_progress(last)  # readable: checkpoints are renamed into place whole
    assert 0 < killed_at < 120
    if sig == "SIGTERM":  # stopped between two steps, saved there, and said how to continue
        assert proc.returncode == 143, err[-2000:]
        assert "stopped by SIGTERM" in err and f"Continue with: dfkd-train resume={run_dir.resolve()}" in err
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "stopped"
    else:  # metrics.json is written only when a run ends
        assert not (run_dir / "metrics.json").is_file()
    first_segment = hydra_record(run_dir)

    resumed = dfkd_train(None, f"resume={run_dir}")  # nothing but the run dir
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert fit_progress(last) == 120
    assert hydra_record(run_dir) == first_segment
    assert (run_dir / ".hydra" / "segment_2" / "overrides.yaml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and 0 <= metrics["test/acc"] <= 1
    assert 0 < metrics["disk/largest_checkpoint_mb"] < 5 and metrics["mem/peak_mb"] > 0
    if family in POOL_FAMILIES:  # the shards the killed run made after its checkpoint were made again, not added
        manifest = json.loads((run_dir / "transfer_set" / "manifest.json").read_text())
        shards = sorted((run_dir / "transfer_set").glob("shard_*.pt"))
        assert manifest["images"] == metrics["cost/images"] == 120 * 16 == len(shards) * 16


class SigtermAt(pl.Callback):
    """Deliver SIGTERM to this process after training batch ``batch`` (as a scheduler would)."""

    def __init__(self, batch):
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_the_state_after_the_step_it_arrived_in(compose_cfg, tmp_path):
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from dfkd_lab.build import (
        build_data,
        build_module,
        build_student,
        build_teacher,
        trainer_kwargs,
    )
    from dfkd_lab.callbacks.checkpointing import PreemptionCheckpoint

    cfg = compose_cfg("method=kd", "trainer.limit_train_batches=20")
    data = build_data(cfg)
    module = build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)
    trainer = pl.Trainer(**trainer_kwargs(cfg), logger=False,
                         callbacks=[SigtermAt(6), PreemptionCheckpoint(str(tmp_path))])
    data.setup("fit")
    with pytest.raises(SIGTERMException):
        trainer.fit(module, module.train_dataloader_from(data), data.val_dataloader())
    assert fit_progress(tmp_path / "last.ckpt") == 7
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 7


class SigtermInEvaluation(pl.Callback):
    """Deliver SIGTERM during the evaluation after training epoch ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == self.epoch and batch_idx == 0 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


class Evaluations(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.seen.append((trainer.current_epoch, trainer.global_step))


def test_a_stop_during_an_evaluation_loses_no_evaluation_when_resumed(compose_cfg):
    """A step checkpoint that fell on an epoch's last batch was written before its evaluation:
    a stop during that evaluation resumed from it as if the epoch had been evaluated."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from dfkd_lab.build import (
        build_callbacks,
        build_data,
        build_module,
        build_student,
        build_teacher,
        trainer_kwargs,
    )

    cfg = compose_cfg("method=kd", "trainer.limit_train_batches=5", "trainer.limit_val_batches=3",
                      "trainer.max_epochs=3", "callbacks.step_checkpoint.every_n_train_steps=5")

    def fit(callbacks, ckpt_path=None):
        data = build_data(cfg)
        data.setup("fit")
        module = build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)
        trainer = pl.Trainer(**trainer_kwargs(cfg), logger=False, callbacks=[*build_callbacks(cfg), *callbacks])
        trainer.fit(module, module.train_dataloader_from(data), data.val_dataloader(), ckpt_path=ckpt_path)
        return trainer

    before, after = Evaluations(), Evaluations()
    with pytest.raises(SIGTERMException):
        fit([SigtermInEvaluation(epoch=1), before])
    assert before.seen == [(0, 5)]  # the second evaluation was stopped
    trainer = fit([after], Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert after.seen == [(1, 10), (2, 15)] and trainer.global_step == 15


# --- a full disk --------------------------------------------------------------------------------
def disk_full_on(monkeypatch, name_prefix):
    """torch.save fails like a full disk (after writing part of the file) for names with the prefix."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if Path(str(f)).name.startswith(name_prefix):
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from dfkd_lab.atomic import DiskWriteError
    from dfkd_lab.callbacks.checkpointing import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    disk_full_on(monkeypatch, "last.ckpt")
    with pytest.raises(DiskWriteError, match="No space left on device.*intact.*dfkd-train resume="):
        io.save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=False) == {"global_step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial temporary file


def test_a_full_disk_while_writing_the_transfer_set_stops_cleanly(monkeypatch, capsys, tmp_path):
    disk_full_on(monkeypatch, "shard_00002")
    code, err = cli(monkeypatch, capsys, tmp_path, "method=deepinversion", "method.synthesizer.iterations=2",
                    "method.synthesis.batch_size=8", "method.synthesis.student_steps=1", "trainer.limit_train_batches=null",
                    "method.synthesis.steps_per_epoch=4")
    assert code == 2
    assert "DiskWriteError: could not write the transfer-set shard" in err and "Traceback" not in err
    folder = tmp_path / "run" / "transfer_set"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard_00000.pt", "shard_00001.pt"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["images"] == 16
    assert all(torch.load(folder / f"shard_0000{i}.pt")["images"].shape == (8, 1, 32, 32) for i in (0, 1))


def test_publishing_a_teacher_never_overwrites_a_shipped_zoo_entry(compose_cfg):
    from dfkd_lab.config import ConfigError
    from dfkd_lab.train import run

    cfg = compose_cfg("method=teacher", "teacher=lenet5", "method.export.zoo_name=lenet5_fmnist")
    with pytest.raises(ConfigError, match="already exists"):
        run(cfg)
