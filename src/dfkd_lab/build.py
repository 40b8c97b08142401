"""Turn a composed config into objects: data, teacher, student, method module, loggers, callbacks."""

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .callbacks.checkpointing import AtomicCheckpointIO
from .config import ConfigError, in_multirun, is_data_free, network_name, sweep_name
from .data import ClassificationData
from .data.sources import image_folder_layout
from .models import build_model, model_names
from .models.modes import eval_mode
from .models.teacher_init import TeacherInitError, init_from_teacher
from .synthesis.bn_hooks import bn_layers
from .validate import import_problem, spawns_processes
from .zoo import (
    TeacherError,
    ZooEntry,
    check_classes,
    load_state,
    load_weights,
    refuse_quantised,
    sidecar_entry,
    zoo_entry,
)


def entry_network(entry: ZooEntry, key: str) -> nn.Module:
    """The network a zoo entry's weights load into: its ``model`` spec, else its registered arch."""
    if entry.model:
        problem = import_problem(entry.model["_target_"])
        if problem:
            raise TeacherError(f"{key}: {entry.name} is a network of one's own ({entry.model['_target_']}), "
                               f"which cannot be imported here: {problem}")
        return hydra.utils.instantiate(entry.model)
    return build_model(entry.arch, num_classes=entry.num_classes, in_channels=entry.in_channels)


def teacher_entry(cfg: DictConfig) -> ZooEntry | None:
    """What is recorded about the run's teacher: the zoo entry beside ``teacher.ckpt`` when the
    file has one (a teacher exported by ``method=teacher``), else ``teacher.zoo``'s entry."""
    if not cfg.method.uses_teacher:
        return None
    t = cfg.teacher
    if t.ckpt:
        entry = sidecar_entry(Path(t.ckpt))
        if entry is not None:
            return entry
    return zoo_entry(t.zoo, cfg.paths.zoo_dir) if t.zoo else None


def _normalisation(cfg: DictConfig, entry: ZooEntry | None):
    """``(mean, std, source)``: ``teacher.mean``/``teacher.std`` when a run with a teacher gives
    them (it only understands inputs normalised as in its training, whatever the data config
    says), else ``data.mean``/``data.std``, else the teacher's zoo entry's; ``None`` means:
    measure them on the training split."""
    d, t = cfg.data, cfg.teacher
    if cfg.method.uses_teacher and t.mean is not None and t.std is not None:
        return list(t.mean), list(t.std), "teacher"
    if d.mean is not None and d.std is not None:
        return list(d.mean), list(d.std), "data"
    if cfg.method.uses_teacher and entry is not None:
        return list(entry.mean), list(entry.std), "teacher"
    if not is_data_free(cfg.method):
        return None
    raise ConfigError(
        f"data={d.name} has no data.mean/data.std, and the teacher records no normalisation: a "
        "data-free run never reads the training images, so it cannot measure them. Give the "
        "per-channel statistics the teacher was trained with, e.g. data.mean=[0.5,0.5,0.5] "
        "data.std=[0.25,0.25,0.25] (or teacher.mean=/teacher.std=), or use a teacher exported by "
        "method=teacher, whose zoo entry records them"
    )


def _check_lengths(mean, std, channels: int, source: str):
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ConfigError(
                f"{source}.{key} has {len(values)} values but data.channels={channels}: give one "
                f"value per channel (or set data.channels={len(values)})"
            )


def _fill_shape(cfg: DictConfig, entry: ZooEntry | None):
    """``data.channels``/``data.num_classes`` left null: the teacher's, else the image folder's."""
    d = cfg.data
    if d.channels is not None and d.num_classes is not None:
        return
    if entry is not None:
        d.channels = entry.in_channels if d.channels is None else d.channels
        d.num_classes = entry.num_classes if d.num_classes is None else d.num_classes
    elif d.name == "image_folder":
        classes, channels = image_folder_layout(Path(d.root), "test" if is_data_free(cfg.method) else "train")
        d.channels = channels if d.channels is None else d.channels
        d.num_classes = len(classes) if d.num_classes is None else d.num_classes
    else:
        missing = "data.channels" if d.channels is None else "data.num_classes"
        raise ConfigError(f"{missing} is not set for data={d.name}: give it")


def build_data(cfg: DictConfig) -> ClassificationData:
    """The real data, its shape and normalisation resolved up front: every later stage
    (networks, synthesis value range, sample grids, the exported zoo entry) reads them."""
    d = cfg.data
    entry = teacher_entry(cfg)
    _fill_shape(cfg, entry)
    if d.classes is not None and len(d.classes) != d.num_classes:
        raise ConfigError(f"data.classes has {len(d.classes)} classes but data.num_classes={d.num_classes}: "
                          f"set data.num_classes={len(d.classes)}")
    stats = _normalisation(cfg, entry)
    mean, std, source = stats if stats is not None else (None, None, None)
    if stats is not None:
        _check_lengths(mean, std, d.channels, source)
    data = ClassificationData(
        name=d.name, root=d.root, num_classes=d.num_classes, channels=d.channels,
        image_size=d.image_size, mean=mean, std=std, batch_size=d.batch_size,
        eval_batch_size=d.eval_batch_size, crop_pad=d.crop_pad, flip=d.flip,
        num_workers=d.num_workers, download=d.download,
        train_split=not is_data_free(cfg.method), classes=d.classes,
    )
    if stats is None:
        data.split("train")  # measures mean/std on the training images
    d.mean, d.std = list(data.mean), list(data.std)
    return data


def _network(spec: DictConfig, data: ClassificationData, key: str) -> nn.Module:
    if spec.get("model") is not None:
        return hydra.utils.instantiate(spec.model)
    if not spec.arch:
        raise TeacherError(f"{key}.arch is not set: name an architecture or give {key}.model._target_")
    return build_model(spec.arch, num_classes=data.num_classes, in_channels=data.channels)


def first_conv_channels(state: dict) -> int | None:
    """Input channels of a state dict's first convolution weight, if it starts with one."""
    first = next((v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() >= 2), None)
    return first.shape[1] if first is not None and first.dim() == 4 else None


def _check_channels(channels: int | None, data: ClassificationData, key: str):
    if channels is not None and channels != data.channels:
        raise ConfigError(f"data.channels={data.channels} but the {key}'s first layer takes {channels}: "
                          f"use a {key} for {data.channels}-channel images or set data.channels={channels}")


def first_layer_channels(model: nn.Module) -> int | None:
    """Input channels of the first convolution, or None for a model that starts otherwise."""
    for layer in model.modules():
        if isinstance(layer, nn.modules.conv._ConvNd):
            return layer.in_channels
        if isinstance(layer, nn.Linear):
            return None
    return None


def takes_input(model: nn.Module, shape) -> Exception | None:
    """One dummy forward of a batch of two images of ``shape``: the error, or None if it fits."""
    with eval_mode(model), torch.no_grad():
        try:
            model(torch.zeros(2, *shape))
        except RuntimeError as err:
            return err
    return None


def archs_taking(data: ClassificationData) -> list[str]:
    """The registered architectures that take this data's images."""
    return [name for name in model_names()
            if takes_input(build_model(name, num_classes=data.num_classes, in_channels=data.channels),
                           data.image_shape) is None]


def check_input(model: nn.Module, data: ClassificationData, key: str, arch: str | None):
    """Refuses, before any work, a network that cannot take the data's images."""
    _check_channels(first_layer_channels(model), data, key)
    err = takes_input(model, data.image_shape)
    if err is None:
        return
    shape = "x".join(map(str, data.image_shape))
    raise ConfigError(
        f"{key}={arch or type(model).__name__} cannot take this data's {shape} images ({err}). "
        f"Architectures that can: {', '.join(archs_taking(data)) or 'none registered'} "
        f"(e.g. {key}.arch=NAME), or resize with data.image_size"
    )


def build_teacher(cfg: DictConfig, data: ClassificationData) -> nn.Module:
    """The frozen teacher: the entry beside ``teacher.ckpt`` or the zoo's, or ``teacher.arch`` +
    ``teacher.ckpt``, or a ``_target_``; checked against the data before any work."""
    t = cfg.teacher
    entry = teacher_entry(cfg)
    if entry is not None:
        if entry.dataset != data.name:
            raise TeacherError(
                f"the teacher ({entry.name}) was trained on {entry.dataset}, but data={data.name}; "
                "choose a teacher for this dataset"
            )
        key = "teacher.ckpt" if t.ckpt else "teacher.zoo"
        refuse_quantised(entry, key)
        _check_channels(entry.in_channels, data, "teacher")
        arch = entry.arch
        path = Path(t.ckpt) if t.ckpt else entry.path()
        # a zoo entry's hash covers its own file; the entry beside teacher.ckpt covers that file
        describes_path = not t.ckpt or sidecar_entry(path) is not None
        sha = t.sha256 or (entry.sha256 if describes_path else None)
        model = entry_network(entry, key)
        state = load_state(path, sha, key)
    else:
        if not t.ckpt:
            raise TeacherError("teacher.ckpt is not set: give the teacher's weights file (or teacher=<zoo entry>)")
        key, arch, path = "teacher.ckpt", network_name(t), Path(t.ckpt)
        state = load_state(path, t.sha256, key)
        _check_channels(first_conv_channels(state), data, "teacher")
        model = _network(t, data, "teacher")
    check_classes(model, data.num_classes, "teacher")
    load_weights(model, state, key)
    matches_bn = cfg.method.needs_bn or bool(cfg.loss.weights.get("bn"))
    if matches_bn and not bn_layers(model):
        fix = "" if cfg.method.needs_bn else " or set loss.weights.bn=0"
        raise TeacherError(
            f"method={cfg.method.name} matches BatchNorm statistics (loss.weights.bn) but the teacher has "
            f"no BatchNorm layer; use a BN teacher (e.g. teacher=lenet5_bn_fmnist){fix}"
        )
    check_input(model, data, "teacher", arch)
    return model


STUDENT_INITS = ("random", "teacher")


def build_student(cfg: DictConfig, data: ClassificationData, teacher: nn.Module | None = None) -> nn.Module:
    """The network the run trains: the teacher architecture for ``method=teacher``; with
    ``student.init=teacher``, started from ``teacher``'s weights."""
    spec = cfg.teacher if cfg.method.trains == "teacher" else cfg.student
    model = _network(spec, data, "teacher" if cfg.method.trains == "teacher" else "student")
    check_classes(model, data.num_classes, "student")
    key = "teacher" if cfg.method.trains == "teacher" else "student"
    check_input(model, data, key, network_name(spec))
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
            group = {}
            if in_multirun() and spec.get("group") == cfg.task_name:  # the default: one group per sweep
                group = {"group": f"{cfg.task_name}-{sweep_name()}"}
            loggers.append(hydra.utils.instantiate(spec, id=wandb_id, resume="allow", **group))
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
    if spawns_processes(cfg.trainer.get("strategy")):
        # spawn pickles the in-memory test split to every process; torch's default sharing
        # (file descriptors) fails with "unable to resize file" in some containers
        torch.multiprocessing.set_sharing_strategy("file_system")
    if is_data_free(cfg.method) and "log_every_n_steps" in kwargs:
        # a data-free training batch is a whole synthesis round (student_steps updates): an
        # interval longer than the epoch's rounds would log training metrics once an epoch
        kwargs["log_every_n_steps"] = min(kwargs["log_every_n_steps"], cfg.method.synthesis.steps_per_epoch)
    kwargs["plugins"] = [AtomicCheckpointIO()]
    return kwargs


def build_callbacks(cfg: DictConfig):
    return [hydra.utils.instantiate(spec) for spec in (cfg.callbacks or {}).values() if spec is not None]
