"""Checks of the composed config that can be made before anything starts (no data loaded, no
W&B run, no checkpoint written): a bad value fails at once with one paragraph naming the key,
instead of a Lightning traceback naming Lightning's argument minutes into the run."""

import contextlib
import dataclasses
import importlib
import importlib.util
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from . import provenance
from .config import (
    ConfigError,
    DataConfig,
    DFQConfig,
    ExportConfig,
    LossConfig,
    MethodConfig,
    PathsConfig,
    ProxyConfig,
    StudentConfig,
    SynthesisConfig,
    TeacherConfig,
    TrainConfig,
    TrainerConfig,
    is_data_free,
    override_key,
)
from .optim import OPTIMIZERS, SCHEDULES
from .quant import bits_problem
from .report import finished_metrics
from .resume import continue_command

# Groups with a schema: a key the schema does not have (e.g. ``+method.epochz=3``, which Hydra
# itself suggests for a typo) would otherwise be accepted and never read.
SCHEMAS = {"data": DataConfig, "teacher": TeacherConfig, "student": StudentConfig, "method": MethodConfig,
           "loss": LossConfig, "paths": PathsConfig, "trainer": TrainerConfig, "proxy": ProxyConfig,
           "method.synthesis": SynthesisConfig,
           "method.dfq": DFQConfig, "method.export": ExportConfig}
# The method blocks only some methods read; each method's module says which (config_blocks).
METHOD_BLOCKS = ("synthesis", "dfq", "export")

# Keys that moved into a method block (docs/changelog.md): an old sweep fails naming the new key.
MOVED = {f"method.{f.name}": f"method.{block}.{f.name}"
         for block in METHOD_BLOCKS for f in dataclasses.fields(SCHEMAS[f"method.{block}"])}
MOVED["method.schedule_synthesis"] = MOVED.pop("method.follow_student_schedule")  # renamed as it moved
MOVED["method.data_free"] = "method.synthesis (a method is data-free when it has that block)"

# (key, smallest allowed value): counts and sizes a run cannot work without.
AT_LEAST = [
    ("method.epochs", 1), ("method.synthesis.steps_per_epoch", 1), ("method.synthesis.batch_size", 1),
    ("method.synthesis.student_steps", 1), ("method.synthesis.warmup_epochs", 0),
    ("method.synthesis.collapse_patience", 0), ("method.synthesis.grad_clip", 0),
    ("method.synthesis.adversarial_eps", 0), ("method.dfq.students", 1),
    ("data.batch_size", 1), ("data.eval_batch_size", 1), ("data.num_classes", 1), ("data.channels", 1),
    ("data.image_size", 1), ("data.num_workers", 0), ("data.crop_pad", 0),
    ("trainer.log_every_n_steps", 1), ("trainer.num_nodes", 1), ("trainer.accumulate_grad_batches", 1),
    ("trainer.check_val_every_n_epoch", 1), ("trainer.num_sanity_val_steps", -1), ("proxy.limit", 1),
]
# Lightning reads -1 as "no limit" for these; anything else must be a positive count.
LIMITS = ("trainer.max_epochs", "trainer.max_steps")
GPU_ACCELERATORS = ("gpu", "cuda")


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        if node is None or part not in node or OmegaConf.is_missing(node, part):
            return None
        node = node[part]
    return node


def unknown_keys(cfg: DictConfig) -> list[str]:
    found = [k for k in cfg if k not in {f.name for f in dataclasses.fields(TrainConfig)}]
    for group, schema in SCHEMAS.items():
        fields = {f.name for f in dataclasses.fields(schema)}
        found += [f"{group}.{k}" for k in _get(cfg, group) or {} if k not in fields]
    return found


def block_problems(method: DictConfig) -> list[str]:
    """The method's module reads exactly the blocks it is given: a block it needs is asked for,
    one it would ignore (``method.dfq`` on a kd run) is refused rather than silently unused."""
    try:
        module = hydra.utils.get_class(method.module)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's module path
        return [f"method.module={method.module} cannot be imported ({err})"]
    if not hasattr(module, "config_blocks"):
        return [f"method.module={method.module} is not a method (a DistillationModule subclass)"]
    reads = set(module.config_blocks(method))
    out = []
    for block in METHOD_BLOCKS:
        given = method.get(block) is not None
        if block in reads and not given:
            out.append(f"method={method.name} ({module.__name__}) needs a method.{block} block; "
                       f"see {SCHEMAS[f'method.{block}'].__name__} in dfkd_lab/config.py for its keys")
        elif given and block not in reads:
            hint = (" (a data-free method names its module: method.module: "
                    "dfkd_lab.methods.data_free.DataFreeDistillation)") if block == "synthesis" else ""
            out.append(f"method.{block} is set but method={method.name} ({module.__name__}) does not read it; "
                       f"remove it (this method reads: {', '.join(sorted(reads)) or 'the common keys only'}){hint}")
        elif given:
            out += [f"method.{block}.{key} is not set" for key in method[block] if OmegaConf.is_missing(method[block], key)]
    return out


def _targets(node, where: str):
    """(key, value) of every ``_target_`` in a config container (an interpolation is Hydra's to
    resolve, so it is left out)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                if "${" not in value:
                    yield where, value
            else:
                yield from _targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def locate(path: str):
    """The object a dotted path names: its longest importable module, then attributes (as Hydra
    finds a ``_target_``, without logging each failure)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and (name == err.name or name.startswith(err.name + ".")):
                continue  # no module of this name: a shorter prefix, then attributes
            raise  # the module exists but imports something missing
        for attr in parts[i:]:
            found = getattr(found, attr)
        return found
    raise ModuleNotFoundError(f"No module named {parts[0]!r}", name=parts[0])


def import_problem(target: str) -> str | None:
    """Why ``target`` (a dotted path) cannot be imported, in a user's terms; None if it can."""
    try:
        locate(target)
        return None
    except ModuleNotFoundError as err:
        if err.name == target.split(".")[0]:
            return (f"no module named {err.name!r} on Python's path: a class of your own is found through "
                    f"PYTHONPATH (PYTHONPATH=<the folder holding {err.name}.py> dfkd-train ...); "
                    "the config dir is not searched")
        return f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - whatever importing the user's module raised is named
        return f"{type(err).__name__}: {err}"


def run_targets(cfg: DictConfig) -> list[tuple[str, str]]:
    """(key, dotted path) of the classes a run builds: every ``_target_`` of its method, teacher,
    student and callbacks, and the method's module."""
    found = OmegaConf.to_container(cfg, resolve=False)
    sections = {k: found[k] for k in ("method", "teacher", "student", "callbacks") if found.get(k)}
    return [("method.module", cfg.method.module), *_targets(sections, "")]


def user_python_path(cfg: DictConfig) -> str | None:
    """``PYTHONPATH`` when a class of the run that is not the package's own was found through it:
    the command that continues the run needs it again."""
    value = os.environ.get("PYTHONPATH")
    if not value:
        return None
    entries = [Path(p).resolve() for p in value.split(os.pathsep) if p]
    tops = {t.split(".")[0] for _, t in run_targets(cfg)}
    for top in tops - {"dfkd_lab"}:
        spec = importlib.util.find_spec(top) if top.isidentifier() else None
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is not None and any(origin.is_relative_to(entry) for entry in entries):
            return value
    return None


def method_problems(cfg: DictConfig) -> list[str]:
    """What a method YAML of one's own most often lacks: a name, a synthesizer's class, a class
    that can be imported."""
    from hydra.core.hydra_config import HydraConfig

    out = []
    chosen = HydraConfig.get().runtime.choices.get("method") if HydraConfig.initialized() else None
    default_name = MethodConfig.name
    if chosen and chosen != default_name and cfg.method.name == default_name:
        out.append(f"method={chosen} sets no method.name, so it would run and be recorded as '{default_name}'; "
                   f"add name: {chosen} to its YAML")
    synthesizer = OmegaConf.to_container(cfg.method, resolve=False).get("synthesizer")
    if is_data_free(cfg.method) and not (isinstance(synthesizer, dict) and synthesizer.get("_target_")):
        out.append(f"method={cfg.method.name} is data-free (it has a method.synthesis block) but method.synthesizer "
                   "names no class: give method.synthesizer._target_ (e.g. "
                   "dfkd_lab.synthesis.generator.GeneratorSynthesizer, or a class of your own)")
    for key, target in run_targets(cfg)[1:]:  # the module is block_problems' to check
        problem = import_problem(target)
        if problem:
            out.append(f"{key}._target_={target} cannot be imported: {problem}")
    return out


def proxy_problems(cfg: DictConfig) -> list[str]:
    """A proxy is read by data-free runs only, from a split its dataset has."""
    proxy = cfg.get("proxy")
    if proxy is None:
        return []
    out = []
    if not is_data_free(cfg.method):
        out.append(f"proxy={proxy.name} is given but method={cfg.method.name} trains on real data and reads no "
                   "proxy; drop proxy=, or use method=kd_proxy or a pool method (nayer, cmi, fastdfkd, ...)")
    if proxy.name != "image_folder" and proxy.split not in ("train", "test"):
        out.append(f"proxy.split={proxy.split}: proxy={proxy.name} has the splits train and test")
    return out


def problems(cfg: DictConfig, on_this_machine: bool = True) -> list[str]:
    """Every key of ``cfg`` that cannot work; ``on_this_machine=False`` leaves out what depends on
    the machine (a benchmark checks its cells where it starts them, not where they run)."""
    out = [f"{key} is not a setting (a typo? dfkd-train --cfg job prints every key of the run)" for key in unknown_keys(cfg)]
    out += method_problems(cfg)
    out += proxy_problems(cfg)
    for key, low in AT_LEAST:
        value = _get(cfg, key)
        if isinstance(value, (int, float)) and value < low:
            out.append(f"{key}={value} must be >= {low}")
    for key in LIMITS:
        value = _get(cfg, key)
        if isinstance(value, int) and value < 1 and value != -1:
            out.append(f"{key}={value} must be a positive count (or -1 for no limit)")
    out += block_problems(cfg.method)
    bits = _get(cfg, "method.dfq.quant_bits")
    if isinstance(bits, int) and bits_problem(bits):
        out.append(bits_problem(bits))
    if isinstance(bits, int) and bits > 0 and spawns_processes(_get(cfg, "trainer.strategy")):
        out.append(f"method.dfq.quant_bits={bits} with a trainer.strategy that spawns its processes (trainer=ddp_sim, "
                   "ddp_spawn): the quantisation-aware student cannot be sent to them (torch's fake-quant modules "
                   "do not pickle). Use trainer=ddp (each rank started as its own command), one device, or a float "
                   "student with method.dfq.quant_bits=0")
    if cfg.method.lr <= 0:
        out.append(f"method.lr={cfg.method.lr} must be > 0")
    if cfg.method.optimizer not in OPTIMIZERS:
        out.append(f"method.optimizer={cfg.method.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
    if cfg.method.schedule not in SCHEDULES:
        out.append(f"method.schedule={cfg.method.schedule}: choose one of {', '.join(SCHEDULES)}")
    if not 0 <= cfg.loss.label_smoothing < 1:
        out.append(f"loss.label_smoothing={cfg.loss.label_smoothing} must be in [0, 1)")
    for split in ("train", "val", "test"):
        value = _get(cfg, f"trainer.limit_{split}_batches")
        if isinstance(value, (int, float)) and value < 0:
            out.append(f"trainer.limit_{split}_batches={value} must be >= 0")
    accelerator = str(_get(cfg, "trainer.accelerator") or "auto")
    if on_this_machine and accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        out.append(f"trainer.accelerator={accelerator} but this machine has no usable GPU; "
                   "use trainer=cpu (or trainer=default, which picks whatever is present)")
    return out


def spawns_processes(strategy) -> bool:
    """Whether a Lightning strategy (a name or a ``_target_`` node) starts its processes by spawn,
    which pickles the module for each of them."""
    if isinstance(strategy, str):
        return "spawn" in strategy
    return isinstance(strategy, DictConfig) and _get(strategy, "start_method") in ("spawn", "forkserver")


def slow_precision(cfg: DictConfig) -> str | None:
    """A warning, not an error: bf16 on a CPU that torch has no bf16 kernels for still runs, but
    several times slower than 32-bit, so a preset sized for a bf16 CPU misses its time budget."""
    precision = str(_get(cfg, "trainer.precision") or "")
    accelerator = str(_get(cfg, "trainer.accelerator") or "auto")
    if not (precision.startswith("bf16") and provenance.bf16_slow_here(accelerator)):
        return None
    return (f"trainer.precision={precision} on a CPU that torch has no bfloat16 kernels for "
            f"(its capability: {torch.backends.cpu.get_cpu_capability()}): each step runs several times slower "
            "than in 32-bit (ten times for WRN-16-2). Add trainer.precision=32-true (a preset's trainer.max_time was sized with "
            "bf16 on a CPU that has them, so its run may stop before its last epoch either way).")


def student_never_trains(cfg: DictConfig) -> str | None:
    """A warning, not an error (a smoke run of a few synthesis rounds is legitimate): a run whose
    epochs all fall in the synthesis warm-up ends with the student as it started."""
    warmup, epochs = _get(cfg, "method.synthesis.warmup_epochs"), _get(cfg, "trainer.max_epochs")
    if not (isinstance(warmup, int) and isinstance(epochs, int) and 0 < epochs <= warmup):
        return None
    return (f"method.synthesis.warmup_epochs={warmup} but the run has {epochs} epoch(s) (trainer.max_epochs): "
            "the student trains only after the warm-up, so it will not train at all; give more epochs "
            "(method.epochs) or a shorter warm-up")


def precision_fallback(cfg: DictConfig) -> str | None:
    """A note when trainer=default runs the method's bf16 in 32-bit (provenance.preferred_precision),
    so that the precision in the run's record is no surprise. Only the default trainer interpolates
    its precision from the method's."""
    chosen, preferred = _get(cfg, "trainer.precision"), _get(cfg, "method.precision")
    if (not OmegaConf.is_interpolation(cfg.trainer, "precision") or chosen == preferred
            or chosen != provenance.preferred_precision(preferred)):
        return None
    return (f"method.precision={preferred} runs as trainer.precision={chosen}: torch has no bfloat16 kernels for "
            f"this CPU, where bf16 would be several times slower; trainer.precision={preferred} forces it")


def check_overrides(args: list[str], compose) -> None:
    """Command-line overrides Hydra would reject with a traceback or a bare "not in struct" rather
    than a sentence: a key that moved into a method block, a key of a block the chosen method does
    not have (``method=kd method.synthesis.batch_size=64``), a loss weight the method has no term
    for (``loss.weights.oh=1``, an old name). ``compose(overrides)`` composes the train config; it
    is only called when such a key is given."""
    keys = [override_key(a) for a in args if "=" in a and not a.startswith("-")]
    found = [f"{key} is now {MOVED[key]}" for key in keys if key in MOVED]
    block_keys = [k for k in keys if k.split(".")[:2] in [["method", b] for b in METHOD_BLOCKS] and k.count(".") >= 2]
    weight_keys = [k for k in keys if k.startswith("loss.weights.") and k.count(".") == 2]
    if (block_keys or weight_keys) and not any(a in ("-m", "--multirun") for a in args):
        others = [a for a in args if "=" in a and not a.startswith("-")
                  and override_key(a) not in block_keys + weight_keys]
        try:
            cfg = compose(others)
        except Exception:  # noqa: BLE001 - Hydra reports bad overrides itself, in its own words
            cfg = None
        for key in block_keys if cfg is not None else ():
            block = key.split(".")[1]
            if cfg.method.get(block) is None:
                found.append(f"{key}: method={cfg.method.name} has no method.{block} block, so nothing would read it")
        if cfg is not None and weight_keys:
            found += weight_problems(cfg, [a for a in args if override_key(a) in weight_keys])
    if found:
        raise ConfigError("; ".join(found))


def weight_problems(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """A ``loss.weights.NAME`` override with no term registered as NAME (a typo, an old name),
    or one the method's config has no weight for, given without ``+`` (Hydra would only say "not
    in struct"). Whether the method computes a registered term is checked when it is built."""
    from .losses.registry import LOSS_TERMS

    for target in (cfg.method.module, OmegaConf.select(cfg, "method.synthesizer._target_", throw_on_resolution_failure=False)):
        # a user's method registers its own terms when its module is imported; one that cannot
        # be imported is reported when the method is built, in its own words
        with contextlib.suppress(Exception):
            locate(target) if target else None
    found = []
    for override in overrides:
        key = override_key(override)
        term = key.removeprefix("loss.weights.")
        if term in cfg.loss.weights:
            continue
        if term not in LOSS_TERMS:
            found.append(f"{key}: no loss term is registered as {term!r} (renamed terms: docs/changelog.md); "
                         f"method={cfg.method.name} weighs {sorted(cfg.loss.weights)}")
        elif not override.startswith("+"):
            found.append(f"{key}: method={cfg.method.name}'s config gives no weight for {term!r}; add one with "
                         f"+{override}")
    return found


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


def check_new_run_dir(run_dir: Path):
    """A new run (no ``resume=``) must not start in a dir that holds another run's checkpoint or
    finished record: the two runs' curves, logs, saved overrides and W&B run would mix."""
    run_dir = Path(run_dir)
    if finished_metrics(run_dir) is not None:
        raise ConfigError(f"the run dir {run_dir} holds a finished run ({run_dir / 'metrics.json'}); give "
                          "a new hydra.run.dir=<dir> (or remove that dir to replace the run)")
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise ConfigError(f"the run dir {run_dir} holds a run that did not finish (checkpoints/last.ckpt); "
                          f"continue it with: {continue_command(run_dir)}, or give a new hydra.run.dir=<dir>")
