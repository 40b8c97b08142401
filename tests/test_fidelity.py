"""The fidelity report: agreement, teacher confidence and BN distance by hand, and on a finished run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import dfkd_lab.fidelity as fidelity_module
from dfkd_lab.config import ConfigError
from dfkd_lab.fidelity import agreement, bn_distance, fidelity, main


def _linear(weight):
    layer = nn.Linear(2, 2, bias=False)
    layer.weight.data = torch.tensor(weight)
    return layer


def test_agreement_counts_same_classes_and_averages_teacher_confidence():
    teacher = _linear([[1.0, 0.0], [0.0, 1.0]])  # logits = the image itself
    student = _linear([[0.0, 1.0], [1.0, 0.0]])  # swaps the classes
    images = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # top-1: teacher 0, 1, 0 (tie -> first); student 1, 0, 0 -> one of three agrees
    confidence = [torch.softmax(torch.tensor(x), 0).max().item() for x in ([2.0, 0.0], [0.0, 1.0], [1.0, 1.0])]
    agree, conf = agreement(teacher, student, images, batch_size=2)
    assert agree == pytest.approx(100 / 3)
    assert conf == pytest.approx(sum(confidence) / 3)
    assert agreement(teacher, teacher, images)[0] == 100


def test_bn_distance_averages_each_layers_statistics_loss_over_whole_batches():
    scale = nn.Linear(1, 1, bias=False)
    scale.weight.data.fill_(2.0)
    teacher = nn.Sequential(nn.BatchNorm1d(1, eps=0.0), scale, nn.BatchNorm1d(1, eps=0.0)).eval()
    images = torch.tensor([[1.0], [1.0], [3.0], [3.0], [5.0]])  # the lone last image is left out
    # running mean 0, variance 1; batch means 1 and 3, variances 0: |1| + |0 - 1| = 2 and 4;
    # the second layer sees 2x: 3 and 7
    assert bn_distance(teacher, images, batch_size=2) == pytest.approx([3.0, 5.0])
    # fewer images than a batch: one batch of them all, 1 and 3 (mean 2, variance 1: 2 + 0;
    # the second layer sees 2 and 6: mean 4, variance 4: 4 + 3)
    assert bn_distance(teacher, images[1:3], batch_size=4) == pytest.approx([2.0, 7.0])


def test_a_finished_run_is_reported_on_its_transfer_set_and_the_real_test_split(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("dfkd-train")), "method=cmi", "method.synthesis.batch_size=16",
           "method.synthesis.student_steps=1", "method.synthesis.steps_per_epoch=8", "method.synthesizer.iterations=2",
           "method.synthesizer.ngf=4", "method.synthesizer.nz=8", "method.synthesizer.negatives=8",
           "method.synthesizer.bank_size=40", "trainer=cpu", "trainer.max_epochs=1", "logger=none",
           "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = fidelity(run_dir)
    assert [(name, count) for name, count, *_ in rows] == [
        ("transfer set, first quarter", 32), ("transfer set, last quarter", 32), ("real test split", 10000)]
    for _, _, agree, confidence, bn in rows:
        assert 0 <= agree <= 100 and 0.1 <= confidence <= 1  # 10 classes: top-1 probability >= 0.1
        assert len(bn) == 2  # lenet5_bn: one BatchNorm per conv
    # two generator steps from near-grey images are far from real statistics
    assert sum(rows[0][4]) > sum(rows[2][4])
    main([str(run_dir)])
    assert "| real test split | 10000 |" in capsys.readouterr().out
    (run_dir / "transfer_set").rename(tmp_path / "moved")
    with pytest.raises(ConfigError, match="no transfer_set/"):
        fidelity(run_dir)


@pytest.mark.parametrize("method", [pytest.param("dafl", marks=pytest.mark.slow), "dfq"])
def test_a_generator_run_is_reported_on_fresh_batches_of_its_final_generators(tmp_path, method):
    """No transfer set: the generators draw the images; DFQ's quantised student loads as trained."""
    run_dir = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("dfkd-train")), f"method={method}", "method.synthesis.batch_size=16",
           "method.synthesis.student_steps=1", "method.synthesis.steps_per_epoch=4", "method.epochs=1",
           "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (run_dir / "transfer_set").exists()
    rows = fidelity(run_dir, generated_images=40)
    assert [(name, count) for name, count, *_ in rows] == [("generator, fresh batches", 40), ("real test split", 10000)]
    for _, _, agree, confidence, bn in rows:
        assert 0 <= agree <= 100 and 0.1 <= confidence <= 1 and len(bn) == 2


def test_a_run_that_is_not_data_free_is_rejected(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("method:\n  name: kd\n  synthesizer: null\n")
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match="method=kd is not data-free"):
        fidelity(tmp_path)


def test_a_dir_without_a_finished_run_is_rejected_naming_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"no \.hydra/config\.yaml"):
        fidelity(tmp_path)


def test_the_command_names_a_wrong_dir_in_one_line_and_exits_nonzero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path)])
    assert exit_.value.code == f"python -m dfkd_lab.fidelity: {tmp_path}: no .hydra/config.yaml; give the output dir of a finished run"
    assert capsys.readouterr().out == ""  # no table header before the error


def test_the_table_says_when_the_teacher_has_no_batchnorm(monkeypatch, capsys, tmp_path):
    rows = [("real test split", 10, 90.0, 0.95, None), ("transfer set, last quarter", 4, 50.0, 0.8, [0.25, 2.0])]
    monkeypatch.setattr(fidelity_module, "fidelity", lambda run_dir, checkpoint: rows)
    (tmp_path / "metrics.json").write_text('{"status": "stopped"}')
    main([str(tmp_path)])
    assert f"note: the run in {tmp_path} did not end as finished: stopped; the table is of its last checkpoint" \
        in capsys.readouterr().err
    main([str(tmp_path / "killed")])
    assert "did not end as finished: unfinished" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text('{"status": "finished"}')
    main([str(tmp_path)])
    captured = capsys.readouterr()
    out = captured.out
    assert "did not end" not in captured.err
    assert "| real test split | 10 | 90.0 | 0.950 | no BatchNorm |" in out
    assert "| transfer set, last quarter | 4 | 50.0 | 0.800 | 0.25 / 2.00 |" in out
