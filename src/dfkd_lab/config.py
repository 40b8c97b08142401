"""Structured-config schemas: a mistyped key or a wrong value type fails at start, naming the key.

Open-ended parts (trainer kwargs, logger and callback ``_target_`` dicts, a synthesizer's own
arguments) are checked where they are built: Lightning's Trainer and the synthesizer
constructors reject unknown arguments by name.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and how to fix it."""


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: str = "${paths.data_dir}"
    num_classes: Optional[int] = 10  # None: from the teacher's zoo entry or the class folders
    channels: Optional[int] = 1  # None: from the teacher's zoo entry or the images
    image_size: int = 32
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    batch_size: int = 256
    eval_batch_size: int = 1024
    crop_pad: int = 0
    flip: bool = False
    num_workers: int = 0
    download: bool = True
    # only these classes (original label indices), relabelled 0..len-1; num_classes must match
    classes: Optional[list[int]] = None


@dataclass
class ProxyConfig:
    """Unlabelled images the teacher labels (method=kd_proxy, or seeding a pool method's pool):
    converted to the data's channels and size, normalised as the teacher's inputs."""

    name: str = "cifar10"  # a built-in dataset (data/sources.py) or image_folder
    root: str = "${paths.data_dir}"
    split: str = "train"
    classes: Optional[list[int]] = None  # only these classes of it
    limit: Optional[int] = None  # at most this many images (a fixed random subset)
    download: bool = True


@dataclass
class TeacherConfig:
    zoo: Optional[str] = None  # a shipped teacher's name, or <paths.zoo_dir>/<name>.json
    arch: Optional[str] = None  # with ckpt: any registered architecture
    ckpt: Optional[str] = None  # a state-dict file; overrides the zoo entry's file
    sha256: Optional[str] = None  # checked when set (the zoo sets it)
    model: Any = None  # or any nn.Module given by _target_
    # the input normalisation the teacher was trained with, when no zoo entry records it
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None


@dataclass
class StudentConfig:
    arch: Optional[str] = "lenet5_half"
    model: Any = None  # or any nn.Module given by _target_
    init: str = "random"  # or "teacher": start from the teacher's largest-norm channels


@dataclass
class LossConfig:
    temperature: float = 1.0
    label_smoothing: float = 0.0  # the real-label ce term (method=teacher, scratch, kd): CE to smoothed labels
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class SynthesisConfig:
    """The data-free loop (methods whose student never sees the training split): how many
    synthetic batches an epoch has, their size, and how the student learns from them."""

    steps_per_epoch: int = MISSING  # synthetic batches per epoch: each method sets it
    batch_size: int = 256  # synthetic images per batch
    student_steps: int = 1  # student updates per synthesized batch
    warmup_epochs: int = 0  # epochs of synthesis only
    # each student input moved up to this far (normalised pixels) toward where student and
    # teacher disagree most (0 = off)
    adversarial_eps: float = 0.0
    follow_student_schedule: bool = False  # the synthesizer's optimisers follow the student's schedule
    grad_clip: float = 0.0  # the student's gradient norm (0 = off)
    collapse_patience: int = 200  # stop when every synthetic image is one class this many synthesis rounds


@dataclass
class DFQConfig:
    """DFQ's student ensemble and quantisation (methods.dfq)."""

    students: int = 1  # size of the student ensemble; the first one is evaluated
    quant_bits: int = 0  # fake-quantise the evaluated student to this many bits (0 = float)
    quant_from: float = 0.5  # fraction of the epochs trained in float before fake quantisation


@dataclass
class ExportConfig:
    """What a supervised teacher run (method=teacher) writes besides the run dir's zoo entry."""

    zoo_name: Optional[str] = None  # also publish the result to paths.zoo_dir under this name
    record_metadata: bool = False  # record activation statistics (Lopes) in the zoo entry


@dataclass
class MethodConfig:
    """What every method has, plus one block per concern that only some methods read (each
    method's module names the blocks it reads; validate.py refuses the others)."""

    name: str = "kd"
    module: str = "dfkd_lab.methods.kd.KnowledgeDistillation"
    needs_bn: bool = False  # the teacher must have BatchNorm layers
    uses_teacher: bool = True  # false for supervised training (method=teacher, method=scratch)
    trains: str = "student"  # "teacher": the run trains the model named by the teacher group
    epochs: int = 20
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False  # Nesterov momentum (sgd)
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine, constant or one_cycle (linear up, then down: short runs)
    channels_last: bool = False
    precision: str = "32-true"  # what trainer=default uses; trainer presets may override
    synthesis: Optional[SynthesisConfig] = None  # data-free methods
    synthesizer: Any = None  # data-free methods: the synthesizer's _target_ and arguments
    dfq: Optional[DFQConfig] = None  # method=dfq
    export: Optional[ExportConfig] = None  # method=teacher


def override_changes(ran, now) -> list[str]:
    """How two lists of overrides differ, as a refusal names it: ``ran X`` for what only the
    earlier runs had, ``now Y`` for what only the new command gives."""
    return [f"ran {o}" for o in ran if o not in now] + [f"now {o}" for o in now if o not in ran]


def network_name(spec) -> str | None:
    """A teacher or student spec's network as records name it: the class its ``model._target_``
    builds (a network of one's own), else its registered ``arch``."""
    model = spec.get("model")
    return model["_target_"].rsplit(".", 1)[-1] if model else spec.get("arch")


def is_data_free(method) -> bool:
    """A method is data-free when it runs the data-free loop: it has a synthesis block."""
    return method.get("synthesis") is not None


@dataclass
class TrainerConfig:
    """The Lightning Trainer arguments a run may set; None leaves Lightning's default."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: Optional[int] = None
    strategy: Any = None
    precision: Any = "32-true"
    max_epochs: Optional[int] = None
    max_steps: Optional[int] = None
    max_time: Optional[str] = None  # "DD:HH:MM:SS": a wall-clock budget
    # Any, not float: Lightning reads an int as a batch count and a float as a fraction, so a
    # float field would turn limit_val_batches=1 into 1.0, i.e. every batch.
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = None
    num_sanity_val_steps: Optional[int] = None
    log_every_n_steps: Optional[int] = None
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: Optional[bool] = None
    fast_dev_run: Any = None
    overfit_batches: Any = None
    accumulate_grad_batches: Optional[int] = None
    gradient_clip_val: Optional[float] = None
    sync_batchnorm: Optional[bool] = None
    deterministic: Any = None
    benchmark: Optional[bool] = None
    detect_anomaly: Optional[bool] = None
    profiler: Optional[str] = None
    default_root_dir: Optional[str] = None


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "${paths.root_dir}/data"
    zoo_dir: str = "${paths.root_dir}/checkpoints"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Optional[dict[str, Any]] = None
    callbacks: Optional[dict[str, Any]] = None
    task_name: str = "train"
    tags: list[str] = field(default_factory=list)
    seed: int = 0
    optimized_metric: str = "test/acc"
    resume: Optional[str] = None  # "last" or a checkpoint path
    transfer_set: Optional[str] = None  # a saved transfer set to distil from
    proxy: Optional[ProxyConfig] = None  # proxy=NAME: unlabelled images for kd_proxy or a pool's seed
    test: bool = True


USER_PROVIDERS = ("command-line", "hydra.searchpath in command-line")  # --config-dir, hydra.searchpath=[...]


def user_config_paths(config_sources) -> list[str]:
    """The config folders a user added (``--config-dir``, ``hydra.searchpath``), from Hydra's
    ``runtime.config_sources``, as search-path entries: a run the bench starts, or a resumed run,
    must search them again to find the user's configs."""
    return [f"{s.schema}://{s.path}" for s in config_sources if s.provider in USER_PROVIDERS]


def hydra_quoted(value) -> str:
    """``value`` as a quoted string of a Hydra override: unquoted, a path's ``,`` ``(`` ``=`` ``#``
    ``'`` or ``~`` would be read as override grammar (a sweep, a function call, ...) or refused."""
    return "'" + str(value).replace("'", "\\'") + "'"


# What composing a command line raises when Hydra cannot (an unknown key, a wrong type, a
# missing option): bad input, not an unexpected error.
COMPOSITION_ERRORS = (HydraException, OmegaConfBaseException)


def override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def override_value(arg: str):
    """The value of the override ``arg`` as Hydra reads it (quotes removed, ``null`` None), or as
    written when Hydra's grammar cannot read it (``resume=/runs/a (1)`` never reaches Hydra)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(arg)
    except HydraException:
        return arg.partition("=")[2]
    return arg.partition("=")[2] if override.is_sweep_override() else override.value()  # a folder "a,b"


def given_value(args: list[str], key: str, default=None):
    """The value of the last ``key=...`` override in ``args`` (``+key``/``~key`` too) as Hydra
    reads it (``override_value``), or ``default`` when none is given."""
    found = [override_value(a) for a in args if "=" in a and not a.startswith("-") and override_key(a) == key]
    return found[-1] if found else default


def searchpath_override(paths) -> list[str]:
    """``hydra.searchpath=[...]`` for ``paths``, each quoted (a folder name may hold a comma)."""
    return [f"hydra.searchpath=[{','.join(hydra_quoted(p) for p in paths)}]"] if paths else []


def register_configs():
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    # ${first:a,b}: the first non-null value (a teacher is named by its zoo entry or its arch)
    OmegaConf.register_new_resolver("first", lambda *values: next((v for v in values if v is not None), None),
                                    replace=True)
    # ${preferred_precision:p}: p, or 32-bit where bf16 would run on a CPU without bf16 kernels
    OmegaConf.register_new_resolver("preferred_precision", _preferred_precision, replace=True)
    # ${job_dir_name:overrides}: a sweep job's folder name (hydra/default.yaml)
    OmegaConf.register_new_resolver("job_dir_name", job_dir_name, replace=True)


def job_dir_name(override_dirname: str) -> str:
    """A sweep job's folder name from its overrides, one folder whatever they hold: a ``/`` (a
    path given as a value) would nest folders, Hydra's escaping backslashes are dropped, and a
    name past ``JOB_DIR_CHARS`` (a file name holds at most 255 bytes) is cut, with a hash of the
    whole that keeps it unique."""
    name = override_dirname.replace("\\", "").replace("/", "_")
    if len(name.encode()) <= JOB_DIR_CHARS:
        return name
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:10]
    return name.encode()[:JOB_DIR_CHARS - 11].decode(errors="ignore") + "-" + digest


JOB_DIR_CHARS = 120  # with the job number and room for a file system's stricter limit


def _preferred_precision(precision):
    from .provenance import preferred_precision  # torch stays out of the config schema's imports

    return preferred_precision(precision)


def in_multirun() -> bool:
    """Whether this is a job of a Hydra multirun (``-m``, a benchmark's or a search's sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name() -> str:
    """The name of this multirun's sweep dir (a W&B group for its jobs)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir).name

