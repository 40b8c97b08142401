"""``dfkd-train``: compose the config, seed, build, fit, test, write metrics, return the metric."""

import os
import sys
import time
import warnings
from importlib import resources
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .atomic import DiskWriteError, save_json
from .build import (
    build_callbacks,
    build_data,
    build_loggers,
    build_module,
    build_student,
    build_teacher,
    trainer_kwargs,
)
from .callbacks.checkpointing import largest_checkpoint
from .callbacks.metrics import flat_metrics, log_summary, peak_memory
from .config import ConfigError, register_configs
from .data import TrainSplitForbidden
from .data.sources import DatasetUnavailable
from .losses.weighting import UnknownLossWeight
from .methods.data_free import SynthesisDiverged
from .zoo import TeacherError

# The configs ship inside the package: Hydra reads them as the package's resources (CONF_PKG);
# CONF_DIR is the same folder as a path, for code that lists it.
CONF_PKG = "pkg://dfkd_lab.conf"
CONF_DIR = str(resources.files("dfkd_lab") / "conf")


def last_checkpoint(output_dir) -> Path:
    """Where the checkpoint callbacks keep the newest state (conf/callbacks/default.yaml)."""
    return Path(output_dir) / "checkpoints" / "last.ckpt"


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> str | None:
    if not cfg.resume:
        return None
    path = last_checkpoint(output_dir) if cfg.resume == "last" else Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(
            f"resume={cfg.resume}: no checkpoint at {path}; run with hydra.run.dir=<the old run dir> resume=last"
        )
    return str(path)


def wandb_run_id(output_dir: Path) -> str:
    """One W&B id per run dir, so a resumed run continues the same W&B run."""
    path = output_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    from wandb.sdk.lib.runid import generate_id  # wandb.util.generate_id is gone in wandb 0.31

    run_id = generate_id()
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def run(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(cfg)
    teacher = build_teacher(cfg, data) if cfg.method.uses_teacher else None
    student = build_student(cfg, data, teacher)
    module = build_module(cfg, student, teacher, data)
    ckpt_path = resume_checkpoint(cfg, output_dir)
    loggers = build_loggers(cfg, wandb_run_id(output_dir) if cfg.logger and "wandb" in cfg.logger else None)
    trainer = pl.Trainer(**trainer_kwargs(cfg), logger=loggers or False, callbacks=build_callbacks(cfg))
    data.setup("fit")
    trainer.fit(module, train_dataloaders=module.train_dataloader_from(data),
                val_dataloaders=data.val_dataloader(), ckpt_path=ckpt_path)
    metrics = flat_metrics(trainer.callback_metrics)
    if cfg.test:
        trainer.test(module, dataloaders=data.test_dataloader(), verbose=False)
        metrics.update(flat_metrics(trainer.callback_metrics))
    if "val/acc_best" in metrics:
        metrics["test/acc_best"] = metrics["val/acc_best"]  # validation runs on the real test split
    metrics["time/total_s"] = time.perf_counter() - start
    metrics.update(peak_memory())
    metrics.update(largest_checkpoint(trainer))
    if trainer.is_global_zero:
        module.on_run_end(output_dir, metrics)
        save_json(output_dir / "metrics.json", metrics, "metrics file")
        log_summary(trainer.loggers, metrics)
        print(summary(cfg, metrics, output_dir))
    return metrics


def summary(cfg: DictConfig, metrics: dict, output_dir: Path) -> str:
    model = cfg.teacher.arch if cfg.method.trains == "teacher" else cfg.student.arch
    parts = [f"dfkd-lab | method={cfg.method.name} | {model} on {cfg.data.name}"]
    if "test/acc" in metrics:
        parts.append(f"test acc {100 * metrics['test/acc']:.2f}% (best {100 * metrics.get('test/acc_best', 0):.2f}%)")
    if "teacher/acc" in metrics:
        parts.append(f"teacher {100 * metrics['teacher/acc']:.2f}%")
    parts.append(f"{metrics['time/total_s']:.0f} s")
    parts.append(str(output_dir))
    return " | ".join(parts)


def finish_wandb():
    """Close the W&B run so the next multirun job starts a new one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


# Errors whose message already names the cause and the fix: shown without a traceback.
USER_ERRORS = (ConfigError, TeacherError, DatasetUnavailable, TrainSplitForbidden, UnknownLossWeight,
               SynthesisDiverged, FileNotFoundError, DiskWriteError)

# Exit status of a run stopped by SIGTERM (128 + 15, what a shell reports), after its checkpoint.
SIGTERM_EXIT = 143


def report_error(err: Exception):
    """One paragraph on stderr instead of a traceback (DFKD_DEBUG=1 or HYDRA_FULL_ERROR=1 keeps it)."""
    message = err.args[0] if len(err.args) == 1 else str(err)  # KeyError's str() adds quotes
    sys.stderr.write(f"dfkd-train: {type(err).__name__}: {message}\n"
                     "(set DFKD_DEBUG=1 to see the traceback)\n")


register_configs()


@hydra.main(version_base="1.3", config_path=CONF_PKG, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except USER_ERRORS as err:
        if os.environ.get("DFKD_DEBUG") == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report_error(err)
        sys.exit(2)
    except SIGTERMException:
        sys.stderr.write(
            f"dfkd-train: stopped by SIGTERM; the state after the last finished step is in "
            f"{last_checkpoint(cfg.paths.output_dir)}. Continue with "
            f"hydra.run.dir={cfg.paths.output_dir} resume=last\n")
        sys.exit(SIGTERM_EXIT)
    finally:
        finish_wandb()
    return metrics.get(cfg.optimized_metric)


# Data-free methods optimise manually and checkpoint every N steps: the state after the step is
# the one a resumed run must continue from, so Lightning's warning about it is noise here.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

os.environ.setdefault("WANDB_MODE", "offline")

if __name__ == "__main__":
    main()
