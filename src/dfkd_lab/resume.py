"""A run dir is self-contained: ``dfkd-train resume=<run dir>`` continues the run from it alone.

The command line is rewritten before Hydra composes anything: the first segment's overrides
(``.hydra/overrides.yaml``) come back, overrides that would change what the run computes (any
but its budget, hardware, logger and data location) are refused naming the saved value, and the new segment's
own config goes to ``.hydra/segment_<n>/`` so the first segment's record is never
overwritten. ``hydra.run.dir=<run dir> resume=last`` is the same thing spelled the old way.
"""

import shlex
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from .config import (
    ConfigError,
    given_value,
    hydra_quoted,
    override_key,
    searchpath_override,
    user_config_paths,
)
from .report import finished_metrics

# What gives a finished run more to train when it is resumed.
LONGER = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "callbacks.teacher_pass_budget")
# What a resumed run may change: how long it trains, where and on what hardware it runs, what it
# logs and shows. Any other override (method, loss, data, teacher, student, seed, ...) changes
# what the run computes, so it must match the saved one: the result would mix two runs (the seed
# too: a resumed run continues the random state its checkpoint saved, whatever seed is given).
MAY_CHANGE = (*LONGER, "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
              "trainer.precision", "trainer.sync_batchnorm", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
              "logger", "callbacks", "paths", "hydra", "data.root", "data.num_workers", "data.download",
              "data.eval_batch_size", "proxy.root", "proxy.download", "transfer_set", "tags",
              "task_name", "test")


def may_change(key: str) -> bool:
    """``key`` is in MAY_CHANGE or below one of its entries; ``trainer`` (the group: another
    machine's preset) is allowed, not every key below it, and Hydra's own groups (``hydra/...``)."""
    return key == "trainer" or key.startswith("hydra/") or any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def continue_command(run_dir, python_path: str | None = None) -> str:
    """The exact command that continues the run in ``run_dir`` (with ``PYTHONPATH`` when the
    run's own classes were found through it)."""
    env = [f"PYTHONPATH={python_path}"] if python_path else []
    return shlex.join([*env, "dfkd-train", f"resume={Path(run_dir).resolve()}"])


def _split(override: str) -> tuple[str, str]:
    return override_key(override), override.partition("=")[2]


def _run_dir(args: list[str]) -> Path | None:
    """The run dir a ``resume=`` argument names, or None when it names a checkpoint file or nothing."""
    resume = given_value(args, "resume")
    if resume in (None, ""):
        return None
    if resume == "last":
        run_dir = given_value(args, "hydra.run.dir")
        if run_dir is None:
            raise ConfigError("resume=last needs the run dir: give resume=<run dir> "
                              "(or hydra.run.dir=<run dir> resume=last)")
        return Path(str(run_dir))
    path = Path(str(resume))
    if path.is_dir():
        return path
    if not path.is_file():
        raise ConfigError(f"resume={resume}: no such run dir or checkpoint file")
    return None


class RunFinished(Exception):
    """``resume=`` names a run that finished, with nothing asked of it beyond continuing."""


def segment_dirs(run_dir: Path) -> list[Path]:
    """The config records of the segments after the first, oldest first."""
    return sorted((run_dir / ".hydra").glob("segment_*"), key=lambda p: int(p.name.split("_")[1]))


def resume_args(args: list[str]) -> list[str]:
    """``args`` (the command line after the program name) with a ``resume=`` of a run dir expanded
    into that run's saved overrides; other command lines come back unchanged."""
    run_dir = _run_dir(args)
    if run_dir is None:
        return args
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        raise ConfigError(f"resume: {run_dir} is not a run dir (it has no .hydra/overrides.yaml)")
    saved = [o for o in yaml.safe_load(saved_file.read_text()) or []
             if _split(o)[0] not in ("resume", "hydra.run.dir")]
    saved_values = dict(_split(o) for o in saved)
    extra, flags = [], []
    for arg in args:
        key, value = _split(arg)
        if key in ("resume", "hydra.run.dir", "hydra.output_subdir"):
            continue  # set below
        if arg.startswith("-") or (flags and flags[-1].startswith("-") and "=" not in arg and not arg.startswith("~")):
            flags.append(arg)  # Hydra's own flags (-m, --cfg job) pass through, before the overrides
            continue
        if saved_values.get(key) == value:
            continue
        if not may_change(key):
            was = f"{key}={saved_values[key]}" if key in saved_values else f"{key} at its default"
            raise ConfigError(
                f"resume: {arg} would change what the run in {run_dir} computes; it was started with {was} "
                f"({saved_file}). Continue it without that override, or start a new run dir (a resumed "
                "run may change only how long it trains, its hardware, its logger and where it reads data)")
        extra.append(arg)
    longer = any(_split(a)[0].startswith(LONGER) for a in extra)
    if not longer and (done := finished_metrics(run_dir)) is not None:
        acc = done.get("test/acc")
        result = f"test acc {100 * acc:.2f}%, " if isinstance(acc, (int, float)) else ""
        raise RunFinished(f"{run_dir} finished already ({result}{run_dir / 'metrics.json'}); nothing to "
                          "continue, and its results are left as they are (to train it longer, give "
                          f"a larger {' or '.join(LONGER[:3])})")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise ConfigError(f"resume: {run_dir} has no checkpoints/last.ckpt to continue from "
                          "(the run stopped before its first checkpoint); start it again")
    given = {_split(a)[0] for a in extra}
    if "hydra.searchpath" not in given:
        extra += searchpath_override(saved_config_paths(run_dir))
    segment = len(segment_dirs(run_dir)) + 2
    return [*flags, *(o for o in saved if _split(o)[0] not in given), *extra, f"hydra.run.dir={hydra_quoted(run_dir)}",
            "resume=last", f"hydra.output_subdir=.hydra/segment_{segment}"]


def saved_config_paths(run_dir: Path) -> list[str]:
    """The user's config folders the run was started with (``--config-dir``, ``hydra.searchpath``;
    overrides.yaml does not hold them): a user's own method is found again on resume."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return []
    return user_config_paths(OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.config_sources", default=[]))
