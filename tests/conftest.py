"""Shared fixtures: Hydra composition, tiny overrides that make any run finish in seconds."""

import os

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from pytorch_lightning.callbacks import ModelCheckpoint

from dfkd_lab.build import build_data, build_module, build_student, build_teacher, trainer_kwargs
from dfkd_lab.config import register_configs

os.environ.setdefault("WANDB_MODE", "disabled")
register_configs()  # the schemas and resolvers dfkd-train registers when it starts

# Overrides that shrink any run to a few steps on CPU with no logger.
FAST = [
    "trainer=cpu",
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]


def compose_config(overrides=(), output_dir=None):
    """Compose the package's conf/train.yaml as dfkd-train would (read as package resources),
    with hydra's runtime filled in."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dfkd_lab.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(*overrides, fast=True):
        return compose_config([*(FAST if fast else []), *overrides], output_dir=tmp_path / "run")

    yield _compose
    GlobalHydra.instance().clear()


def fit_two_epochs(cfg, ckpt_dir, callbacks=(), ckpt_path=None):
    """Build a run from ``cfg`` and fit it for 2 epochs (or resume it from ``ckpt_path``),
    writing last.ckpt to ``ckpt_dir``: the shared harness of the resume tests."""
    pl.seed_everything(cfg.seed, verbose=False)
    data = build_data(cfg)
    module = build_module(cfg, build_student(cfg, data), build_teacher(cfg, data), data)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    trainer = pl.Trainer(**{**trainer_kwargs(cfg), "max_epochs": 2}, logger=False,
                         callbacks=[checkpoint, *callbacks])
    data.setup("fit")
    trainer.fit(module, module.train_dataloader_from(data), data.val_dataloader(), ckpt_path=ckpt_path)
    return module, trainer
