"""Shared fixtures: Hydra composition, tiny overrides that make any run finish in seconds."""

import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from dfkd_lab.train import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")

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
    """Compose conf/train.yaml as dfkd-train would, with hydra's runtime filled in."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
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
