"""Every experiment preset composes for both published pairs, and runs a few steps on CPU;
every hparams_search names real keys and persistent storage.

CIFAR is not downloadable offline, so the run test swaps the CIFAR loaders for a few random
images and gives the presets a randomly initialised teacher checkpoint.
"""

from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from conftest import FAST, compose_config
from dfkd_lab.data import sources
from dfkd_lab.models import build_model
from dfkd_lab.train import CONF_DIR, run

ALL_PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
# the paper presets take either published pair; the CPU-scale and LeNet-scale ones fix their own
PRESETS = [p for p in ALL_PRESETS if "_cpu" not in p and "_lenet" not in p]
# pair -> (teacher, student, overrides that select it)
PAIRS = {"resnet34_resnet18": ("resnet34", "resnet18", []),
         "wrn40_2_wrn16_1": ("wrn40_2", "wrn16_1", ["teacher=wrn40_2", "student=wrn16_1"])}
CLASSES = {"cifar10": 10, "cifar100": 100}
# presets that fix their own pair (the CPU pair, the five-class proxy protocol): composed and
# instantiated in test_nayer_kd_proxy.py
OWN_PAIR = {"cifar10_cpu_nayer", "cifar10_5class_kd_proxy", "teacher_cifar10_5class"}


def test_presets_exist_for_both_datasets():
    for prefix in ("cifar10_", "cifar100_", "teacher_cifar10", "teacher_cifar100"):
        assert any(p.startswith(prefix) for p in PRESETS), prefix


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("preset", [p for p in PRESETS if p not in OWN_PAIR])
def test_preset_composes_and_resolves(preset, pair, tmp_path):
    teacher, student, overrides = PAIRS[pair]
    cfg = compose_config([f"experiment={preset}", *overrides], output_dir=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.data.name in CLASSES and cfg.data.num_classes == CLASSES[cfg.data.name]
    assert cfg.teacher.arch == teacher and cfg.teacher.zoo is None
    if cfg.method.name == "teacher":
        assert (cfg.method.optimizer, cfg.method.lr, cfg.method.epochs) == ("sgd", 0.1, 200)
        assert cfg.data.crop_pad == 4 and cfg.data.flip
    else:
        assert cfg.student.arch == student
        assert preset.endswith(cfg.method.name)


def test_the_cpu_teacher_preset_trains_wrn16_2_into_the_zoo(tmp_path):
    cfg = compose_config(["experiment=teacher_cifar10_cpu"], output_dir=tmp_path)
    assert (cfg.teacher.arch, cfg.data.name, cfg.method.epochs) == ("wrn16_2", "cifar10", 55)
    assert (cfg.method.optimizer, cfg.method.lr, cfg.data.crop_pad, cfg.data.flip) == ("sgd", 0.1, 4, True)
    assert cfg.method.export.zoo_name is None and cfg.method.export.record_metadata  # the entry is shipped
    assert cfg.trainer.precision == "bf16-mixed" and cfg.method.channels_last
    assert cfg.trainer.check_val_every_n_epoch == 5


def test_the_five_class_cpu_teacher_preset_is_the_cpu_recipe_on_classes_0_to_4(tmp_path):
    five, ten = (OmegaConf.to_container(compose_config([f"experiment={p}"], output_dir=tmp_path))
                 for p in ("teacher_cifar10_cpu_5class", "teacher_cifar10_cpu"))
    assert (five["data"].pop("classes"), five["data"].pop("num_classes"), ten["data"].pop("classes")) == (
        [0, 1, 2, 3, 4], 5, None)
    ten["data"].pop("num_classes")
    assert (five["method"].pop("epochs"), ten["method"].pop("epochs")) == (30, 55)
    for key in ("method", "trainer", "data", "teacher"):
        assert five[key] == ten[key], key


def test_dataset_specific_weights_follow_the_paper(tmp_path):
    c10 = compose_config(["experiment=cifar10_dafl"], output_dir=tmp_path)
    c100 = compose_config(["experiment=cifar100_dafl"], output_dir=tmp_path)
    assert dict(c10.loss.weights) == {"kd": 1.0, "argmax_ce": 0.05, "ie": 5.0, "activation": 0.01, "bn": 0.0}
    assert dict(c100.loss.weights) == {"kd": 1.0, "argmax_ce": 0.5, "ie": 20.0, "activation": 0.1, "bn": 0.0}
    fast10 = compose_config(["experiment=cifar10_fastdfkd_10"], output_dir=tmp_path)
    assert (fast10.method.synthesizer.g_steps, fast10.method.synthesis.warmup_epochs) == (10, 20)


@pytest.mark.parametrize("preset, key, paper, lenet", [
    ("cifar10_fastdfkd_2", "loss.temperature", 20.0, 4.0),
    ("cifar10_adi", "loss.weights.comp", 0.2, 0.05),
    ("cifar100_adi", "loss.weights.comp", 0.2, 0.05),
    ("cifar10_dfad", "loss.weights.bn", 0.0, 1.0),
    ("cifar10_zskd", "loss.weights.match", 1.0, 0.05),
    ("cifar10_zskd", "loss.weights.tv_l2", 0.05, 0.2),
    ("cifar10_wang2021", "method.synthesizer.objective.oversample", 1, 8),
    ("cifar100_wang2021", "method.synthesis.adversarial_eps", 0.0, 0.2),
])
def test_paper_presets_keep_the_paper_values_where_the_lenet_defaults_differ(tmp_path, preset, key, paper, lenet):
    cfg = compose_config([f"experiment={preset}"], output_dir=tmp_path)
    default = compose_config([f"method={cfg.method.name}"], output_dir=tmp_path)
    assert OmegaConf.select(cfg, key) == paper
    assert OmegaConf.select(default, key) == lenet


def fake_cifar(num_classes):
    def load(root, split, download=True):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
        return images, torch.arange(16) % num_classes
    return load


def shrink(cfg):
    """A few steps of everything: tiny batches, one synthesis iteration where there are many."""
    with open_dict(cfg):
        cfg.data.batch_size = cfg.data.eval_batch_size = 8
        cfg.method.epochs = 1
        if cfg.method.synthesis is not None:
            cfg.method.synthesis.merge_with({"warmup_epochs": 0, "steps_per_epoch": 1, "batch_size": 4, "student_steps": 1})
        synth = cfg.method.synthesizer or {}
        for key, small in {"iterations": 2, "bank_size": 64, "negatives": 8, "g_steps": 1}.items():
            if key in synth:
                synth[key] = small


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_a_few_steps(preset, tmp_path, monkeypatch):
    for name, classes in CLASSES.items():
        monkeypatch.setitem(sources.LOADERS, name, fake_cifar(classes))
    ckpt = tmp_path / "teacher.pt"
    cfg = compose_config([f"experiment={preset}", *FAST, "teacher=wrn40_2", "student=wrn16_1",
                          f"teacher.ckpt={ckpt}", "callbacks=none"], output_dir=tmp_path / "run")
    torch.save(build_model("wrn40_2", num_classes=cfg.data.num_classes, in_channels=3).state_dict(), ckpt)
    shrink(cfg)
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0


SEARCHES = sorted(p.stem for p in (Path(CONF_DIR) / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("search", SEARCHES)
def test_search_space_names_real_loss_weights(search, tmp_path):
    """Every searched key is a setting the method has; the study is stored (resumable)."""
    spec = yaml.safe_load((Path(CONF_DIR) / "hparams_search" / f"{search}.yaml").read_text())
    method = next(d["override /method"] for d in spec["defaults"] if "override /method" in d)
    cfg = compose_config([f"method={method}"], output_dir=tmp_path)
    for key in spec["hydra"]["sweeper"]["params"]:
        assert OmegaConf.select(cfg, key) is not None, key
    assert spec["hydra"]["sweeper"]["storage"].startswith(("sqlite:///", "journal:"))


@pytest.mark.parametrize("search", SEARCHES)
def test_search_composes_with_our_optuna_sweeper(search, tmp_path):
    cfg = compose_config([f"hparams_search={search}"], output_dir=tmp_path)
    assert cfg.optimized_metric == "test/acc"
    assert HydraConfig.get().sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
