"""``dfkd-train``: compose the config, validate it, seed, build, fit, test, write metrics, return the metric.

A run that does not finish says so everywhere it is recorded: the exit code (1, 2, or 128 + the
signal), the W&B run's exit code, ``metrics.json``'s ``status`` and the run dir's ``train.log``
(which keeps the traceback; the terminal gets one paragraph).
"""

import importlib.util
import os
import shutil
import signal
import sys
import time
import traceback
from functools import partial
from importlib import resources
from itertools import pairwise
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from . import stop
from .atomic import DiskWriteError
from .build import (
    build_callbacks,
    build_data,
    build_loggers,
    build_module,
    build_student,
    build_teacher,
    trainer_kwargs,
)
from .callbacks.budget import WallClockBudget
from .callbacks.checkpointing import largest_checkpoint
from .callbacks.metrics import (
    EvaluationLines,
    WallClock,
    flat_metrics,
    last_progress,
    log_summary,
    peak_memory,
    reset_peak_memory,
    write_final_metrics,
)
from .config import (
    COMPOSITION_ERRORS,
    ConfigError,
    given_value,
    in_multirun,
    network_name,
    register_configs,
    searchpath_override,
)
from .data import TrainSplitForbidden
from .data.sources import DatasetUnavailable
from .export import export_student
from .losses.weighting import UnknownLossWeight
from .methods.base import TrainingDiverged
from .methods.data_free import SynthesisDiverged
from .provenance import provenance, run_command
from .quiet import silence_known_noise
from .report import finished_metrics
from .resume import RunFinished, continue_command, resume_args
from .validate import (
    check_new_run_dir,
    check_overrides,
    check_writable,
    precision_fallback,
    slow_precision,
    student_never_trains,
    user_python_path,
    validate,
)
from .zoo import TeacherError

# The configs ship inside the package: Hydra reads them as the package's resources (CONF_PKG);
# CONF_DIR is the same folder as a path, for code that lists it.
CONF_PKG = "pkg://dfkd_lab.conf"
CONF_DIR = str(resources.files("dfkd_lab") / "conf")


def last_checkpoint(output_dir) -> Path:
    """Where the checkpoint callbacks keep the newest state (conf/callbacks/default.yaml)."""
    return Path(output_dir) / "checkpoints" / "last.ckpt"


def resume_checkpoint(cfg: DictConfig, output_dir: Path, clock: WallClock) -> str | None:
    """The checkpoint to continue from, refused when it holds another method's run; the
    clock takes the time of the earlier segments from it."""
    if not cfg.resume:
        return None
    path = last_checkpoint(output_dir) if cfg.resume == "last" else Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no checkpoint at {path}; give resume=<the run dir>")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:
        raise ConfigError(f"resume={cfg.resume}: cannot read {path} as a checkpoint of a run: "
                          f"{type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise ConfigError(f"resume={cfg.resume}: {path} is not a checkpoint of a run (it holds a "
                          f"{type(state).__name__}); give the run dir or its checkpoints/last.ckpt")
    saved = (state.get("hyper_parameters") or {}).get("method") or {}
    mine = (cfg.method.module, cfg.method.name)
    if (saved.get("module", mine[0]), saved.get("name", mine[1])) != mine:
        raise ConfigError(
            f"resume={cfg.resume}: {path} holds a method={saved.get('name')} run ({saved.get('module')}), "
            f"not method={cfg.method.name}; resume it with its own method, or start a new run")
    clock.load_state_dict((state.get("callbacks") or {}).get("WallClock", clock.state_dict()))
    take_transfer_set(path.parent.parent, output_dir)
    return str(path)


def take_transfer_set(source_run: Path, output_dir: Path):
    """A new run from another run's checkpoint (``resume=<file>.ckpt``) gets a copy of that run's
    transfer set: a pool method's checkpoint holds the pool's index, its images are in the shards."""
    source, target = source_run / "transfer_set", output_dir / "transfer_set"
    if source.is_dir() and not target.exists():
        shutil.copytree(source, target)


def wandb_run_id(output_dir: Path, resumed: bool) -> str:
    """One W&B id per run dir, so a resumed run continues the same W&B run (a new run in a dir an
    earlier attempt left, one that never reached a checkpoint, gets its own)."""
    path = output_dir / "wandb_id.txt"
    if resumed and path.is_file():
        return path.read_text().strip()
    from wandb.sdk.lib.runid import generate_id  # wandb.util.generate_id is gone in wandb 0.31

    run_id = generate_id()
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def run(cfg: DictConfig, clock: WallClock | None = None) -> dict:
    """One run (or one segment of a resumed run); ``metrics.json`` says ``finished`` at the end."""
    clock = clock or WallClock()
    reset_peak_memory()
    output_dir = Path(cfg.paths.output_dir)
    validate(cfg)
    if not cfg.resume:
        check_new_run_dir(output_dir)
    for kind, text in (("warning", slow_precision(cfg)), ("warning", student_never_trains(cfg)),
                       ("note", precision_fallback(cfg))):
        if text:
            tell(output_dir, kind, text)
    machine_and_commit = provenance()  # the code that runs is the code at the start
    ckpt_path = resume_checkpoint(cfg, output_dir, clock)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    data.setup("fit")  # the splits are read, and checked, before W&B or any checkpoint starts
    teacher = build_teacher(cfg, data) if cfg.method.uses_teacher else None
    student = build_student(cfg, data, teacher)
    module = build_module(cfg, student, teacher, data)
    loggers = build_loggers(cfg, wandb_run_id(output_dir, resumed=bool(ckpt_path)) if cfg.logger and "wandb" in cfg.logger else None)
    kwargs, callbacks = trainer_kwargs(cfg), [*build_callbacks(cfg), clock]
    if "max_time" in kwargs and not any(isinstance(c, Timer) for c in callbacks):
        # Lightning's own Timer would charge a resumed run for the step a stop threw away (a
        # Timer of the user's own callbacks takes over, as Lightning has it)
        callbacks.append(WallClockBudget(kwargs.pop("max_time")))
    if kwargs.get("enable_progress_bar", True) and not sys.stdout.isatty():
        kwargs["enable_progress_bar"] = False  # a redrawn bar fills a log file: one line per evaluation instead
        callbacks.append(EvaluationLines())
    trainer = pl.Trainer(**kwargs, logger=loggers or False, callbacks=callbacks)
    if stop.requested():
        raise SIGTERMException  # stopped while setting up: nothing trained yet
    if trainer.is_global_zero:
        append_log(output_dir, f"training method={cfg.method.name}" + (f", resumed from {ckpt_path}" if ckpt_path else ""))
    trainer.fit(module, train_dataloaders=module.train_dataloader_from(data),
                val_dataloaders=data.val_dataloader(), ckpt_path=ckpt_path)
    metrics = flat_metrics(trainer.callback_metrics)
    if cfg.test:
        trainer.test(module, dataloaders=data.test_dataloader(), verbose=False)
        metrics.update(flat_metrics(trainer.callback_metrics))
    metrics.pop("step", None)  # the loggers' x-axis, not a result
    if ckpt_path and "val/acc" not in metrics:  # resumed with nothing left to train: its last evaluation stands
        saved = {k: v for k, v in last_progress(output_dir).items() if k not in ("epoch", "step")}
        metrics = {**saved, **metrics}
    metrics.update(best_evaluation(metrics, cfg.trainer))
    metrics["time/total_s"] = clock.elapsed()
    metrics.update(peak_memory())
    metrics.update(machine_and_commit, **{"run/seed": cfg.seed, "run/command": run_command()})
    metrics.update(largest_checkpoint(trainer))
    if trainer.is_global_zero:
        for text in module.end_warnings(trainer.max_epochs):
            tell(output_dir, "warning", text)
        module.on_run_end(output_dir, metrics)
        if cfg.method.trains != "teacher":  # a teacher run exports its teacher itself
            export_student(cfg, data, module, output_dir, metrics)
        log_summary(trainer.loggers, write_final_metrics(output_dir, metrics, "finished"))  # W&B's summary is metrics.json
    return metrics


def best_evaluation(metrics: dict, trainer_cfg) -> dict:
    """``test/acc_best``: the best of the evaluations and the final test. Validation runs on the
    real test split, so the final test is one more evaluation: a run that ends mid-epoch
    (max_steps, max_time) after a better final step, or before its first evaluation, counts it.
    Evaluations count only when they see the images the test sees: with another
    ``trainer.limit_val_batches`` than the test's limit their best is a figure on other images
    (``val/acc_best`` keeps it)."""
    same_images = evaluated_share(trainer_cfg.get("limit_val_batches")) == evaluated_share(
        trainer_cfg.get("limit_test_batches"))
    keys = ("val/acc_best", "test/acc") if same_images or "test/acc" not in metrics else ("test/acc",)
    evaluations = [metrics[k] for k in keys if k in metrics]
    return {"test/acc_best": max(evaluations)} if evaluations else {}


def evaluated_share(limit) -> tuple:
    """A ``trainer.limit_*_batches`` value as what it covers: all of the split (None or 1.0), a
    fraction of it (a float) or a number of batches (an int: 1 is one batch, 1.0 all)."""
    if limit is None or (isinstance(limit, float) and limit == 1.0):
        return ("all",)
    return (type(limit).__name__, limit)


def summary(cfg: DictConfig, metrics: dict, output_dir: Path) -> str:
    model = network_name(cfg.teacher if cfg.method.trains == "teacher" else cfg.student)
    parts = [f"dfkd-lab | method={cfg.method.name} | {model} on {cfg.data.name}"]
    if "test/acc" in metrics:
        best = f" (best {100 * metrics['test/acc_best']:.2f}%)" if "test/acc_best" in metrics else ""
        parts.append(f"test acc {100 * metrics['test/acc']:.2f}%{best}")
    if "test/acc_int8" in metrics:  # what the exported int8 model scores
        parts.append(f"int8 {100 * metrics['test/acc_int8']:.2f}%")
    if "teacher/acc" in metrics:
        parts.append(f"teacher {100 * metrics['teacher/acc']:.2f}%")
    parts.append(f"{metrics['time/total_s']:.0f} s")
    parts.append(str(output_dir))
    return " | ".join(parts)


def wandb_run():
    """This process's W&B run, or None (W&B is imported only by its logger)."""
    wandb = sys.modules.get("wandb")
    return wandb.run if wandb is not None else None


def finish_wandb(exit_code: int):
    """Close the W&B run with the run's real exit code (a failed run must not sync as finished),
    so the next multirun job starts a new one."""
    if wandb_run() is not None:
        sys.modules["wandb"].finish(exit_code=exit_code)


# Errors whose message already names the cause and the fix: shown without a traceback, exit 2.
USER_ERRORS = (ConfigError, TeacherError, DatasetUnavailable, TrainSplitForbidden, UnknownLossWeight,
               TrainingDiverged, SynthesisDiverged, FileNotFoundError, DiskWriteError)


def hidden_by_instantiation(err: BaseException) -> BaseException:
    """The bad input behind a Hydra ``InstantiationException``: a user error the instantiated
    class raised, or an argument it does not take (a key added with ``+`` that is no setting of
    it), which would otherwise count as an unexpected error (exit 1)."""
    from hydra.errors import InstantiationException

    cause = err.__cause__
    if not isinstance(err, InstantiationException) or cause is None:
        return err
    if isinstance(cause, USER_ERRORS):
        return cause
    if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
        where = " ".join(str(err).split())
        return ConfigError(f"{where}: a key set for it is not one of its settings; remove it or fix its spelling")
    return err


def report_error(err: BaseException, log: Path | None = None):
    """One paragraph on stderr instead of a traceback (DFKD_DEBUG=1 or HYDRA_FULL_ERROR=1 keeps it)."""
    message = err.args[0] if len(err.args) == 1 else str(err)  # KeyError's str() adds quotes
    where = f"the traceback is in {log}" if log else "set DFKD_DEBUG=1 to see the traceback"
    sys.stderr.write(f"dfkd-train: {type(err).__name__}: {message}\n({where})\n")


def debugging() -> bool:
    return os.environ.get("DFKD_DEBUG") == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1"


def tell(output_dir, kind: str, text: str):
    """A warning or note for the user, on stderr and in the run's log (rank zero only)."""
    if rank_zero_only.rank == 0:
        sys.stderr.write(f"dfkd-train: {kind}: {text}\n")
        append_log(output_dir, f"{kind}: {text}")


def append_log(output_dir, text: str):
    """A line (and a traceback) in the run dir's own log, train.log, which every segment appends to."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)  # run() called without Hydra makes no run dir
    with open(Path(output_dir) / "train.log", "a") as f:
        f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")


def end_unfinished(cfg: DictConfig, err: BaseException, clock: WallClock) -> int:
    """Record a run that did not finish (metrics.json status, the run's log file, a message
    with the command that continues it); returns the exit code."""
    output_dir = Path(cfg.paths.output_dir)
    log = output_dir / "train.log"
    checkpoint = last_checkpoint(output_dir)
    signum = stop.requested()
    if isinstance(err, (SIGTERMException, KeyboardInterrupt, stop.StopRequested)) or (
            isinstance(err, SystemExit) and signum is not None):
        signum = signum or signal.SIGINT
        code, status = stop.exit_code(signum), "stopped"
        then = (f"the state after the last finished step is in {checkpoint}. "
                f"Continue with: {continue_command(output_dir, user_python_path(cfg))}" if checkpoint.is_file()
                else "it stopped before its first checkpoint; start it again")
        message = f"dfkd-train: stopped by {signal.Signals(signum).name}; {then}\n"
        traceback_text = ""
    else:
        code = 2 if isinstance(err, USER_ERRORS) else 1
        status = f"failed: {type(err).__name__}: {err}"
        message = None
        traceback_text = "".join(traceback.format_exception(err))
    if rank_zero_only.rank == 0:
        try:
            if clock.at_last_step is None and finished_metrics(output_dir) is not None:
                # a later command against a finished run failed before it trained: the run's
                # results stand, in metrics.json and on W&B, and its log says what happened
                append_log(output_dir, f"a resume {status} (exit {code}) before training; the finished run's "
                                       f"metrics.json stands\n{traceback_text}".rstrip())
                finish_wandb(0)
            else:
                append_log(output_dir, f"run {status} (exit {code})\n{traceback_text}".rstrip())
                record = {**last_progress(output_dir), "time/total_s": clock.elapsed(), "run/seed": cfg.seed,
                          "run/command": run_command()}  # which run of a sweep it was, even if refused at once
                write_final_metrics(output_dir, record, status)
                if wandb_run() is not None:
                    wandb_run().summary["status"] = status  # the dashboard's column, beside the exit code
        except OSError as write_error:  # a full disk or a read-only run dir: the message still goes out
            sys.stderr.write(f"dfkd-train: could not record the end of the run in {output_dir}: {write_error}\n")
        if message:
            sys.stderr.write(message)
        elif not debugging():
            report_error(err, None if code == 2 else log)
            if isinstance(err, DiskWriteError) and checkpoint.is_file():
                sys.stderr.write(f"Continue with: {continue_command(output_dir, user_python_path(cfg))}\n")
            elif isinstance(err, (TrainingDiverged, SynthesisDiverged)) and checkpoint.is_file():
                sys.stderr.write(f"The checkpoints written before it are intact ({checkpoint}).\n")
    return code


register_configs()


class JobFailed(Exception):
    """One job of a multirun failed (its records say so); the sweep goes on with the others and
    ends with exit 1 naming the first failure."""


class _Jobs:
    started = 0  # jobs hydra_main began in this process: a failure after that is the run's own


@hydra.main(version_base="1.3", config_path=CONF_PKG, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    _Jobs.started += 1
    clock, code = WallClock(), 0
    try:
        with stop.on_signals():
            metrics = run(cfg, clock)
    except BaseException as err:
        if isinstance(err, SystemExit) and stop.requested() is None:
            raise
        err = hidden_by_instantiation(err)
        code = end_unfinished(cfg, err, clock)
        if debugging() and code in (1, 2):
            raise
        if code in (1, 2) and in_multirun():
            # an exception, not an exit: Hydra records the job as failed and runs the sweep's other
            # jobs (an exit would end the sweep, and joblib would kill the jobs running beside it)
            raise JobFailed(f"{cfg.paths.output_dir} (exit {code}): {type(err).__name__}: {err}") from None
        sys.exit(code)
    finally:
        finish_wandb(code)
    if rank_zero_only.rank == 0:
        line = summary(cfg, metrics, Path(cfg.paths.output_dir))
        append_log(cfg.paths.output_dir, f"run finished: {line}")
        print(line, flush=True)
    return metrics.get(cfg.optimized_metric)


def compose_train(overrides: list[str], config_dirs=()) -> DictConfig:
    """The run's config as ``dfkd-train [--config-dir DIR ...] <overrides>`` would compose it (for
    checks made before Hydra starts); the user's config folders are searched as Hydra would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    given = given_value(overrides, "hydra.searchpath", [])
    given = given if isinstance(given, list) else []  # anything else Hydra reports itself
    paths = [*(f"file://{Path(d).absolute()}" for d in config_dirs), *given]
    GlobalHydra.instance().clear()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*(o for o in overrides if not o.startswith("hydra.")),
                                           *searchpath_override(paths)])


def config_dirs(args: list[str]) -> list[str]:
    """The folders of ``--config-dir DIR`` / ``-cd DIR`` / ``--config-dir=DIR`` in ``args``."""
    found = [b for a, b in pairwise(args) if a in ("--config-dir", "-cd")]
    return found + [a.split("=", 1)[1] for a in args if a.startswith("--config-dir=")]


def check_config_dirs(args: list[str]):
    """A user's config folder that does not exist is named (Hydra only warns, and then cannot
    find the method or teacher the folder was to add)."""
    searchpath = given_value(args, "hydra.searchpath", [])
    given = [("--config-dir", d) for d in config_dirs(args)]
    given += [("hydra.searchpath", str(p).removeprefix("file://")) for p in (searchpath if isinstance(searchpath, list) else [])
              if str(p).startswith("file://")]
    for key, folder in given:
        if not Path(folder).is_dir():
            raise ConfigError(f"{key} {folder}: no such folder (a folder of your own configs: method/, teacher/, ...)")


def check_extras(args: list[str]):
    """An option that needs an optional extra which is not installed is named with the pip command
    (Hydra would fail to locate a class of it, naming neither)."""
    needs = []
    if given_value(args, "hparams_search") not in (None, "", "null"):
        needs.append(("hparams_search=", "optuna", "optuna"))
    if given_value(args, "hydra/launcher") == "slurm":
        needs.append(("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"))
    for option, module, extra in needs:
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{option} needs the {extra} extra, which is not installed: pip install 'dfkd-lab[{extra}]' "
                              "(from a checkout: pip install '.[" + extra + "]')")


def main():
    """``dfkd-train``: a ``resume=<run dir>`` brings back the run's own overrides, and the run dir
    must be writable, both checked before Hydra writes anything."""
    try:
        args = resume_args(sys.argv[1:])
        multirun = any(a in ("-m", "--multirun") for a in args)
        default = Path(os.environ.get("PROJECT_ROOT", ".")) / "outputs"  # conf/paths/default.yaml
        check_writable(Path(str(given_value(args, "hydra.sweep.dir" if multirun else "hydra.run.dir", default))))
        if not multirun and given_value(args, "resume") in (None, "") and given_value(args, "hydra.run.dir"):
            check_new_run_dir(Path(str(given_value(args, "hydra.run.dir"))))  # before Hydra rewrites its .hydra/
        check_config_dirs(args)
        check_extras(args)
        check_overrides(args, partial(compose_train, config_dirs=config_dirs(args)))
    except ConfigError as err:
        report_error(err)
        sys.exit(2)
    except RunFinished as done:
        sys.stderr.write(f"dfkd-train: {done}\n")
        sys.exit(0)
    sys.argv = [sys.argv[0], *args]
    started = _Jobs.started
    try:
        hydra_main()
    except SystemExit as exit_:
        # a multirun's jobs may run in other processes (joblib), where this one cannot see them start
        refusal = refused_by_hydra(args) if exit_.code == 1 and not multirun and _Jobs.started == started else None
        if refusal is not None:
            if "@method." in refusal:  # Hydra placed a method file's defaults under method.
                sys.stderr.write("dfkd-train: a method YAML starts with the line '# @package _global_' "
                                 "(docs/extending.md)\n")
            sys.exit(2)  # bad input, as our own checks report it; Hydra's message is above
        raise


def refused_by_hydra(args: list[str]) -> str | None:
    """Why ``args`` fail to compose (an unknown key, a wrong type, a missing option), or None:
    Hydra reports those itself and exits 1, which says "unexpected error" to a script."""
    try:
        compose_train([a for a in args if "=" in a and not a.startswith("-")], config_dirs(args))
    except COMPOSITION_ERRORS as err:
        return str(err)
    except Exception:  # noqa: BLE001 - anything else is not the command line's fault
        return None
    return None


silence_known_noise()
os.environ.setdefault("WANDB_MODE", "offline")

if __name__ == "__main__":
    main()
