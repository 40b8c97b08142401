"""Bring your own data and teacher: shape and normalisation resolved from the teacher, and every
mismatch refused before any work, naming the key to fix."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, compose_config
from dfkd_lab import train
from dfkd_lab.build import build_data, build_student, build_teacher
from dfkd_lab.config import ConfigError
from dfkd_lab.models import build_model
from dfkd_lab.zoo import ZooEntry, sha256


def write_folder(root, channels=3, size=32, classes=2, per_class=3):
    """A tiny ImageNet-style folder: ROOT/{train,test}/<class>/*.png."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, channels) if channels == 3 else (size, size),
                                      dtype=np.uint8)
                Image.fromarray(pixels, mode="RGB" if channels == 3 else "L").save(folder / f"{i}.png")
    return root


def save_teacher(path, arch="lenet5_bn", channels=1, num_classes=2, entry=None):
    """Random weights of ``arch``; with ``entry`` (a dict) the zoo entry beside them."""
    torch.save(build_model(arch, num_classes=num_classes, in_channels=channels).state_dict(), path)
    if entry is not None:
        ZooEntry(name=path.stem, arch=arch, dataset="image_folder", num_classes=num_classes,
                 in_channels=channels, input_size=32, file=path.name, sha256=sha256(path),
                 test_acc=0.5, command="", **entry).save(path.parent)
    return path


def test_a_checkpoint_with_its_entry_needs_no_data_options(compose_cfg, tmp_path):
    """method=teacher's export (weights + entry) carries arch, channels, classes and normalisation."""
    root = write_folder(tmp_path / "gray", channels=1)
    ckpt = save_teacher(tmp_path / "t.pt", entry={"mean": [0.3], "std": [0.2]})
    cfg = compose_cfg("method=deepinversion", "data=image_folder", f"data.root={root}", f"teacher.ckpt={ckpt}")
    data = build_data(cfg)
    assert (data.channels, data.num_classes) == (1, 2)
    assert data.mean == [0.3] and data.std == [0.2]
    assert cfg.data.mean == [0.3]  # written back: sample grids and the logged config see it
    build_teacher(cfg, data)


def test_a_folder_teacher_run_measures_and_exports_its_normalisation(compose_cfg, tmp_path):
    root = write_folder(tmp_path / "rgb", channels=3)
    cfg = compose_cfg("method=teacher", "data=image_folder", f"data.root={root}", "teacher=lenet5_bn")
    data = build_data(cfg)
    images = data.split("train").tensors[0]
    assert data.channels == 3 and len(data.mean) == 3
    # normalised with the statistics measured on these very images: zero mean, unit std
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (images.std(dim=(0, 2, 3)) - 1).abs().max() < 0.01


def test_missing_normalisation_of_a_data_free_run_names_the_keys(compose_cfg, tmp_path):
    root = write_folder(tmp_path / "gray", channels=1)
    ckpt = save_teacher(tmp_path / "t.pt")  # no entry beside it
    cfg = compose_cfg("method=deepinversion", "data=image_folder", f"data.root={root}",
                      "teacher=custom", "teacher.arch=lenet5_bn", f"teacher.ckpt={ckpt}")
    with pytest.raises(ConfigError, match=r"data\.mean.*data\.std"):
        build_data(cfg)


def test_the_teachers_normalisation_wins_over_the_data_configs(compose_cfg, tmp_path):
    """A user's teacher trained with other statistics than the data config's defaults must see its
    own: on a built-in dataset teacher.mean/std given were silently replaced by data.mean/std."""
    ckpt = save_teacher(tmp_path / "t.pt")
    custom = ("method=kd", "teacher=custom", "teacher.arch=lenet5_bn", f"teacher.ckpt={ckpt}")
    data = build_data(compose_cfg(*custom, "teacher.mean=[0.5]", "teacher.std=[0.25]"))
    assert (list(data.mean), list(data.std)) == ([0.5], [0.25])
    with pytest.raises(ConfigError, match=r"teacher\.mean has 2 values but data\.channels=1"):
        build_data(compose_cfg(*custom, "teacher.mean=[0.5,0.5]", "teacher.std=[0.2]"))
    assert list(build_data(compose_cfg(*custom)).mean) == [0.286]  # no teacher statistics: the data's


@pytest.mark.parametrize("key", ["data", "teacher"])
def test_mean_std_of_the_wrong_length_names_the_key(compose_cfg, tmp_path, key):
    root = write_folder(tmp_path / "rgb", channels=3)
    ckpt = save_teacher(tmp_path / "t.pt", channels=3)
    cfg = compose_cfg("method=deepinversion", "data=image_folder", f"data.root={root}", "teacher=custom",
                      "teacher.arch=lenet5_bn", f"teacher.ckpt={ckpt}", f"{key}.mean=[0.5]", f"{key}.std=[0.2]")
    with pytest.raises(ConfigError, match=rf"{key}\.mean has 1 values but data\.channels=3"):
        build_data(cfg)


def test_a_channel_mismatch_with_the_teacher_is_named_as_such(compose_cfg, tmp_path):
    root = write_folder(tmp_path / "rgb", channels=3)
    ckpt = save_teacher(tmp_path / "t.pt", channels=1)
    cfg = compose_cfg("method=deepinversion", "data=image_folder", f"data.root={root}", "teacher=custom",
                      "teacher.arch=lenet5_bn", f"teacher.ckpt={ckpt}", "data.mean=[0.5,0.5,0.5]",
                      "data.std=[0.2,0.2,0.2]")
    data = build_data(cfg)
    with pytest.raises(ConfigError, match="data.channels=3 but the teacher's first layer takes 1"):
        build_teacher(cfg, data)


def test_a_student_that_cannot_take_the_images_is_refused_with_the_archs_that_can(compose_cfg, tmp_path):
    root = write_folder(tmp_path / "big", channels=3, size=48)
    ckpt = save_teacher(tmp_path / "t.pt", arch="wrn16_1", channels=3, entry={"mean": [0.5] * 3, "std": [0.2] * 3})
    cfg = compose_cfg("method=deepinversion", "data=image_folder", f"data.root={root}", "data.image_size=48",
                      f"teacher.ckpt={ckpt}")
    data = build_data(cfg)
    teacher = build_teacher(cfg, data)  # WRNs pool adaptively: 48x48 fits
    with pytest.raises(ConfigError, match=r"student=lenet5_half cannot take this data's 3x48x48 images") as err:
        build_student(cfg, data, teacher)
    can = str(err.value).split("Architectures that can: ")[1]
    assert "wrn16_1" in can and "resnet18" in can and "lenet5" not in can


@pytest.mark.parametrize("case, key", [
    ("missing", "data.mean"),
    ("length", "data.mean has 2 values"),
    ("channels", "data.channels=3 but the teacher's first layer takes 1"),
])
def test_bad_own_data_stops_the_cli_before_anything_starts(tmp_path, case, key):
    """Run as a user would (default logger): exit 2, one paragraph naming the key, no W&B run,
    checkpoint or progress, and a metrics.json that records the failure."""
    root = write_folder(tmp_path / "rgb", channels=3)
    ckpt = save_teacher(tmp_path / "t.pt", channels=1 if case == "channels" else 3)
    args = {"missing": [], "length": ["data.mean=[0.5,0.5]", "data.std=[0.2,0.2]"],
            "channels": ["data.mean=[0.5,0.5,0.5]", "data.std=[0.2,0.2,0.2]"]}[case]
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "dfkd_lab.train", "method=deepinversion", "data=image_folder",
         f"data.root={root}", "teacher=custom", "teacher.arch=lenet5_bn", f"teacher.ckpt={ckpt}",
         f"hydra.run.dir={run_dir}", *args],
        capture_output=True, text=True, env={**env, "WANDB_DIR": str(tmp_path)}, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert key in proc.stderr and "Traceback" not in proc.stderr
    left = {p.name for p in run_dir.iterdir()}
    assert not left & {"wandb", "checkpoints", "progress.json", "curve.jsonl", "wandb_id.txt"}, left
    status = json.loads((run_dir / "metrics.json").read_text())["status"]
    assert status.startswith("failed: ConfigError") and key in status
    assert not (tmp_path / "wandb").exists()
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # what was asked is kept


def test_a_folder_smaller_than_one_batch_is_refused_before_wandb_starts(tmp_path):
    """The training split is read and checked before the loggers start: no W&B run, no checkpoint."""
    root = write_folder(tmp_path / "rgb", channels=3)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "dfkd_lab.train", "method=teacher", "data=image_folder", f"data.root={root}",
         "teacher=lenet5_bn", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, env={**env, "WANDB_DIR": str(tmp_path)}, timeout=300, check=False)
    assert proc.returncode == 2 and "has 6 images, fewer than data.batch_size=128" in proc.stderr
    assert not {p.name for p in run_dir.iterdir()} & {"wandb", "wandb_id.txt", "checkpoints", "csv"}
    assert not (tmp_path / "wandb").exists()


def test_a_network_of_ones_own_is_exported_recorded_and_distilled_by_its_class(tmp_path):
    """``teacher.model._target_``: the teacher run names it (not the default arch), its entry
    rebuilds it from its spec, and a method reads only what its active terms need of it."""
    def cfg(run, *overrides):
        return compose_config([*FAST, *overrides], output_dir=tmp_path / run)

    root = write_folder(tmp_path / "gray", channels=1, per_class=8)
    tiny = "+teacher.model={_target_:own_networks.TinyNet,num_classes:2}"
    teacher_run = cfg("teacher", "method=teacher", "data=image_folder", f"data.root={root}", tiny, "data.batch_size=4")
    metrics = train.run(teacher_run)
    entry = json.loads((tmp_path / "teacher" / "TinyNet_image_folder.json").read_text())
    assert entry["arch"] == "TinyNet" and entry["model"]["_target_"] == "own_networks.TinyNet"
    assert "| TinyNet on image_folder |" in train.summary(teacher_run, metrics, tmp_path)
    ckpt = tmp_path / "teacher" / "TinyNet_image_folder.pt"
    common = ("data=image_folder", f"data.root={root}", f"teacher.ckpt={ckpt}",
              "+student.model={_target_:own_networks.TinyNet,num_classes:2}", "data.batch_size=4")
    assert "test/acc" in train.run(cfg("kd", "method=kd", *common))  # no feature term: no feature_layers needed
    with pytest.raises(ConfigError, match="TinyNet has no submodule named 'classifier'.*activation"):
        train.run(cfg("dafl", "method=dafl", *common, "method.synthesis.batch_size=4", "method.synthesizer.ngf=4"))
    with pytest.raises(ConfigError, match="TinyNet has no feature_layers.*hint, fsp, at"):
        train.run(cfg("at", "method=kd", *common, "loss.weights.at=1"))
