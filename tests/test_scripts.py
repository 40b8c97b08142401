"""The benchmark scripts in scripts/ run end to end at toy sizes and print what they promise."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_synthesis_speed_compares_both_methods_under_the_given_setting():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "synthesis_speed.py"), "--batch-size", "4", "--batches", "1",
         "--di-iterations", "3", "--overrides", "method.lr=0.01"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "teacher lenet5_bn_fc_fmnist method.lr=0.01; synthesis only" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("fastdfkd_2", "deepinversion-3"))}
    assert set(rows) == {"fastdfkd_2", "deepinversion-3"} and all(row[1] == "4" for row in rows.values())
    assert "speed-up fastdfkd_2 / deepinversion-3:" in out.stdout


def _gpu_check(tmp_path, env, *args):
    env = {**os.environ, "GPU_CHECK_DIR": str(tmp_path / "gc"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], check=False, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1800)


def test_gpu_check_stops_when_its_first_run_fails(tmp_path):
    """A broken set-up fails every run: the check says so after the first instead of spending
    the GPU's minutes on sixteen more failures."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text("#!/bin/sh\nexit 7\n")
    (bin_dir / "python3").chmod(0o755)
    env = {"VENV": str(tmp_path / "no-venv"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = _gpu_check(tmp_path, env, "--dry-run")
    assert out.returncode == 1
    assert "the first run failed: stopping" in out.stdout
    rows = (tmp_path / "gc" / "steps.tsv").read_text().splitlines()
    assert rows[0] == "run\texit\tseconds"
    assert [row.split("\t")[:2] for row in rows[1:]] == [["methods/adi", "7"]]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_tabulates_them(tmp_path):
    out = _gpu_check(tmp_path, {"VENV": str(Path(sys.executable).parents[1])}, "--dry-run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [row.split("\t") for row in (tmp_path / "gc" / "steps.tsv").read_text().splitlines()[1:]]
    presets = sorted(p.stem for p in (REPO / "src/dfkd_lab/conf/experiment").glob("cifar10_cpu_*.yaml"))
    methods = [f"methods/{p.removeprefix('cifar10_cpu_')}" for p in presets if p not in
               ("cifar10_cpu_kd", "cifar10_cpu_scratch")]
    assert [row[0] for row in rows] == [*methods, "teacher_epoch", "paper_teacher", "paper_fastdfkd_2"]
    assert all(row[1] == "0" for row in rows)
    report = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert f"runs: {len(rows)} ({len(rows)} finished)" in report


def test_jpeg_copy_reencodes_both_splits_keeping_labels_and_layout(tmp_path):
    import pickle

    from dfkd_lab.data import sources

    folder, train_files, test_files, label_key = sources.CIFAR_LAYOUTS["CIFAR10"]
    # smooth images, so that JPEG's error is small and measurable against the originals
    ramp = np.linspace(0, 255, 32, dtype=np.float64)
    images = np.stack([np.stack([np.add.outer(ramp, ramp * k) / (1 + k) for k in (0.5, 1, 2)])] * 2)
    images = images.astype(np.uint8)
    for i, name in enumerate(train_files + test_files):
        (tmp_path / "src" / folder).mkdir(parents=True, exist_ok=True)
        blob = {"data": images.reshape(2, -1), label_key: [i, 9 - i]}
        (tmp_path / "src" / folder / name).write_bytes(pickle.dumps(blob))
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "jpeg_copy.py"), str(tmp_path / "src"),
                          str(tmp_path / "q10"), "--quality", "10"],
                         check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{tmp_path / 'q10' / folder}: 12 images at JPEG quality 10" in out.stdout
    x, y = sources.LOADERS["cifar10"](tmp_path / "q10", "train", download=False)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    error = (x[:2].float() - torch.from_numpy(images).float()).abs().mean().item()
    assert 0.1 < error < 20  # re-encoded: changed, and still the same images
    x, y = sources.LOADERS["cifar10"](tmp_path / "q10", "test", download=False)
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [5, 4]


def test_jpeg_copy_refuses_a_quality_out_of_range(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "jpeg_copy.py"), str(tmp_path), str(tmp_path / "d"),
                          "--quality", "100"], check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--quality must be in 1..95, got 100" in out.stderr
    assert not (tmp_path / "d").exists()
