"""Turn a composed config into objects: data, teacher, student, method module, loggers, callbacks."""

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .callbacks.checkpointing import AtomicCheckpointIO
from .config import ConfigError
from .data import ClassificationData
from .models import build_model
from .models.teacher_init import TeacherInitError, init_from_teacher
from .synthesis.bn_hooks import bn_layers
from .zoo import TeacherError, check_classes, load_state, load_weights, zoo_entry


def build_data(cfg: DictConfig) -> ClassificationData:
    d = cfg.data
    return ClassificationData(
        name=d.name, root=d.root, num_classes=d.num_classes, channels=d.channels,
        image_size=d.image_size, mean=d.mean, std=d.std, batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size, crop_pad=d.crop_pad, flip=d.flip,
        num_workers=d.num_workers, download=d.download,
        train_split=not cfg.method.data_free,
    )


def _network(spec: DictConfig, data: ClassificationData, key: str) -> nn.Module:
    if spec.get("model") is not None:
        return hydra.utils.instantiate(spec.model)
    if not spec.arch:
        raise TeacherError(f"{key}.arch is not set: name an architecture or give {key}.model._target_")
    return build_model(spec.arch, num_classes=data.num_classes, in_channels=data.channels)


def build_teacher(cfg: DictConfig, data: ClassificationData) -> nn.Module:
    """The frozen teacher: a zoo entry, or ``teacher.arch`` + ``teacher.ckpt``, or a ``_target_``."""
    t = cfg.teacher
    sha = t.sha256
    if t.zoo:
        entry = zoo_entry(t.zoo, cfg.paths.zoo_dir)
        if entry.dataset != data.name:
            raise TeacherError(
                f"teacher.zoo={t.zoo} was trained on {entry.dataset}, but data={data.name}; "
                "choose a teacher for this dataset"
            )
        arch, path, sha = entry.arch, Path(t.ckpt) if t.ckpt else entry.path(), sha or (None if t.ckpt else entry.sha256)
        model = build_model(arch, num_classes=entry.num_classes, in_channels=entry.in_channels)
    else:
        model = _network(t, data, "teacher")
        if not t.ckpt:
            raise TeacherError("teacher.ckpt is not set: give the teacher's weights file (or teacher=<zoo entry>)")
        path = Path(t.ckpt)
    check_classes(model, data.num_classes, "teacher")
    load_weights(model, load_state(path, sha, "teacher.ckpt"), "teacher.ckpt")
    matches_bn = cfg.method.needs_bn or bool(cfg.loss.weights.get("bn"))
    if matches_bn and not bn_layers(model):
        raise TeacherError(
            f"method={cfg.method.name} matches BatchNorm statistics (loss.weights.bn) but the teacher has "
            "no BatchNorm layer; use a BN teacher (e.g. teacher=lenet5_bn_fmnist) or set loss.weights.bn=0"
        )
    return model


STUDENT_INITS = ("random", "teacher")


def build_student(cfg: DictConfig, data: ClassificationData, teacher: nn.Module | None = None) -> nn.Module:
    """The network the run trains: the teacher architecture for ``method=teacher``; with
    ``student.init=teacher``, started from ``teacher``'s weights."""
    spec = cfg.teacher if cfg.method.trains == "teacher" else cfg.student
    model = _network(spec, data, "teacher" if cfg.method.trains == "teacher" else "student")
    check_classes(model, data.num_classes, "student")
    init = cfg.student.init
    if init not in STUDENT_INITS:
        raise ConfigError(f"student.init={init}: choose one of {', '.join(STUDENT_INITS)}")
    if init == "teacher":
        if not cfg.method.uses_teacher or cfg.method.trains == "teacher":
            raise ConfigError(f"student.init=teacher: method={cfg.method.name} trains without a teacher; "
                              "use student.init=random")
        if teacher is None:
            raise ValueError("student.init=teacher: pass the teacher to build_student")
        try:
            init_from_teacher(model, teacher)
        except TeacherInitError as err:
            raise ConfigError(f"student.init=teacher: {err}") from err
    return model


def build_module(cfg: DictConfig, student, teacher, data):
    module_cls = hydra.utils.get_class(cfg.method.module)
    return module_cls.from_config(cfg, student=student, teacher=teacher, data=data)


def build_loggers(cfg: DictConfig, wandb_id: str | None):
    loggers = []
    for spec in (cfg.logger or {}).values():
        if spec is None:
            continue
        if "WandbLogger" in spec._target_:
            loggers.append(hydra.utils.instantiate(spec, id=wandb_id, resume="allow"))
        else:
            loggers.append(hydra.utils.instantiate(spec))
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def trainer_kwargs(cfg: DictConfig) -> dict:
    """The set trainer options, with a ``_target_`` strategy instantiated."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    if isinstance(kwargs.get("strategy"), dict):
        kwargs["strategy"] = hydra.utils.instantiate(kwargs["strategy"])
        if getattr(kwargs["strategy"], "_start_method", None) == "spawn":
            # spawn pickles the in-memory test split to every process; torch's default sharing
            # (file descriptors) fails with "unable to resize file" in some containers
            torch.multiprocessing.set_sharing_strategy("file_system")
    kwargs["plugins"] = [AtomicCheckpointIO()]
    return kwargs


def build_callbacks(cfg: DictConfig):
    return [hydra.utils.instantiate(spec) for spec in (cfg.callbacks or {}).values() if spec is not None]
