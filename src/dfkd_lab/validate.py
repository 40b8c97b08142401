"""Checks of the composed config that can be made before anything starts (no data loaded, no
W&B run, no checkpoint written): a bad value fails at once with one paragraph naming the key,
instead of a Lightning traceback naming Lightning's argument minutes into the run."""

import dataclasses
import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from .config import (
    ConfigError,
    DataConfig,
    LossConfig,
    MethodConfig,
    PathsConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    TrainerConfig,
)

# Groups with a schema: a key the schema does not have (e.g. ``+method.epochz=3``, which Hydra
# itself suggests for a typo) would otherwise be accepted and never read.
SCHEMAS = {"data": DataConfig, "teacher": TeacherConfig, "student": StudentConfig, "method": MethodConfig,
           "loss": LossConfig, "paths": PathsConfig, "trainer": TrainerConfig}

# (key, smallest allowed value): counts and sizes a run cannot work without.
AT_LEAST = [
    ("method.epochs", 1), ("method.batch_size", 1), ("method.student_steps", 1),
    ("method.students", 1), ("method.warmup_epochs", 0), ("method.collapse_patience", 0),
    ("method.grad_clip", 0), ("method.quant_bits", 0), ("method.steps_per_epoch", 0),
    ("data.batch_size", 1), ("data.eval_batch_size", 1), ("data.num_classes", 1), ("data.channels", 1),
    ("data.image_size", 1), ("data.num_workers", 0), ("data.crop_pad", 0),
    ("trainer.log_every_n_steps", 1), ("trainer.num_nodes", 1), ("trainer.accumulate_grad_batches", 1),
    ("trainer.check_val_every_n_epoch", 1), ("trainer.num_sanity_val_steps", -1),
]
# Lightning reads -1 as "no limit" for these; anything else must be a positive count.
LIMITS = ("trainer.max_epochs", "trainer.max_steps")
GPU_ACCELERATORS = ("gpu", "cuda")


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def unknown_keys(cfg: DictConfig) -> list[str]:
    found = [k for k in cfg if k not in {f.name for f in dataclasses.fields(TrainConfig)}]
    for group, schema in SCHEMAS.items():
        fields = {f.name for f in dataclasses.fields(schema)}
        found += [f"{group}.{k}" for k in cfg.get(group) or {} if k not in fields]
    return found


def problems(cfg: DictConfig) -> list[str]:
    out = [f"{key} is not a setting (a typo? see src/dfkd_lab/conf for the keys of each group)" for key in unknown_keys(cfg)]
    for key, low in AT_LEAST:
        value = _get(cfg, key)
        if isinstance(value, (int, float)) and value < low:
            out.append(f"{key}={value} must be >= {low}")
    for key in LIMITS:
        value = _get(cfg, key)
        if isinstance(value, int) and value < 1 and value != -1:
            out.append(f"{key}={value} must be a positive count (or -1 for no limit)")
    if cfg.method.data_free and cfg.method.steps_per_epoch < 1:
        out.append(f"method.steps_per_epoch={cfg.method.steps_per_epoch}: a data-free method needs >= 1 "
                   "synthetic steps per epoch")
    if cfg.method.lr <= 0:
        out.append(f"method.lr={cfg.method.lr} must be > 0")
    for split in ("train", "val", "test"):
        value = _get(cfg, f"trainer.limit_{split}_batches")
        if isinstance(value, (int, float)) and value < 0:
            out.append(f"trainer.limit_{split}_batches={value} must be >= 0")
    accelerator = str(_get(cfg, "trainer.accelerator") or "auto")
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        out.append(f"trainer.accelerator={accelerator} but this machine has no usable GPU; "
                   "use trainer=cpu (or trainer=default, which picks whatever is present)")
    return out


def validate(cfg: DictConfig):
    """Raise ConfigError naming every key of ``cfg`` that cannot work."""
    found = problems(cfg)
    if found:
        raise ConfigError("; ".join(found))


def check_writable(run_dir: Path):
    """The run dir can be created and written (checked before Hydra creates it)."""
    run_dir = Path(run_dir).absolute()
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a directory" if not existing.is_dir() else "is not writable"
        raise ConfigError(f"the run dir {run_dir} cannot be created: {existing} {what}; "
                          "give a writable hydra.run.dir=<dir>")
