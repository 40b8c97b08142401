"""The CPU CIFAR-10 presets (experiment=cifar10_cpu_<method>): one per data-free method, plus the
KD-with-data and scratch reference rows, all on the shipped WRN-16-2 teacher -> WRN-16-1 with a
30-minute cap; each runs a few steps with the real shipped teacher."""

from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import FAST, compose_config
from dfkd_lab import bench
from dfkd_lab.data import sources
from dfkd_lab.models import build_model
from dfkd_lab.train import CONF_DIR, run
from dfkd_lab.zoo import sha256, zoo_entry
from test_experiments import fake_cifar, shrink

CPU_PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("cifar10_cpu_*.yaml"))
REFERENCE = ["kd", "scratch"]
# kd_proxy needs a proxy dataset, and this machine has none for a CIFAR-10 teacher
NOT_DATA_FREE_HERE = ["fastdfkd", "kd_transfer", "kd_proxy"]


def parameters(arch: str) -> int:
    return sum(p.numel() for p in build_model(arch, num_classes=10, in_channels=3).parameters())


def test_every_data_free_method_and_both_reference_rows_have_a_cpu_preset():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        methods = bench.default_methods(REFERENCE, exclude=NOT_DATA_FREE_HERE)
    assert [f"cifar10_cpu_{m}" for m in sorted(methods)] == CPU_PRESETS


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_cpu_preset_uses_the_cpu_pair_and_the_30_minute_cap(preset, tmp_path):
    cfg = compose_config([f"experiment={preset}"], output_dir=tmp_path)
    assert preset == f"cifar10_cpu_{cfg.method.name}"
    assert (cfg.data.name, cfg.teacher.zoo, cfg.student.arch) == ("cifar10", "wrn16_2_cifar10", "wrn16_1")
    assert cfg.trainer.max_time == "00:00:30:00"


def test_the_shipped_cpu_teacher_and_a_student_a_third_its_size_or_less():
    entry = zoo_entry("wrn16_2_cifar10")
    assert (entry.arch, entry.dataset, entry.num_classes, entry.in_channels) == ("wrn16_2", "cifar10", 10, 3)
    assert entry.metadata["activations"]["layers"]  # Lopes' method reads the recorded statistics
    assert entry.command.startswith("dfkd-train experiment=teacher_cifar10_cpu") and 0 < entry.test_acc < 1
    assert sha256(Path(CONF_DIR).parent / "checkpoints" / entry.file) == entry.sha256
    assert 3 * parameters("wrn16_1") <= parameters("wrn16_2")


def test_the_cpu_teacher_preset_alone_reproduces_the_shipped_teachers_command(tmp_path):
    """The zoo entry records the command as it ran; the preset must say the same on its own."""
    recorded = zoo_entry("wrn16_2_cifar10").command.split()[1:]
    ran, preset = (compose_config(overrides, output_dir=tmp_path)
                   for overrides in (recorded, ["experiment=teacher_cifar10_cpu"]))
    for key in ("method", "trainer", "data", "teacher"):
        assert ran[key] == preset[key], key


@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_cpu_preset_runs_a_few_steps_with_the_shipped_teacher(preset, tmp_path, monkeypatch):
    monkeypatch.setitem(sources.LOADERS, "cifar10", fake_cifar(10))
    cfg = compose_config([f"experiment={preset}", *FAST, "callbacks=none"], output_dir=tmp_path / "run")
    shrink(cfg)
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0


@pytest.mark.parametrize("hours, method", [(2, "fastdfkd_10"), (2, "nayer"), (1, "deepinversion")])
def test_a_longer_preset_is_its_30_minute_one_with_more_epochs_and_a_longer_cap(tmp_path, hours, method):
    """``2 * hours`` times the 30 minutes: more than ``2 * hours - 1`` times the epochs, nothing else changed."""
    long, short = (OmegaConf.to_container(compose_config([f"experiment={p}_{method}"], output_dir=tmp_path))
                   for p in (f"cifar10_cpu{hours}h", "cifar10_cpu"))
    assert long["trainer"].pop("max_time") == f"00:{hours:02d}:00:00"
    assert long["method"].pop("epochs") > (2 * hours - 1) * short["method"].pop("epochs")
    short["trainer"].pop("max_time")
    for key in ("method", "trainer", "data", "teacher", "student", "loss"):
        assert long[key] == short[key], key
