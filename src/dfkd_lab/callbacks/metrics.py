"""Metrics on disk. During a run, every evaluation rewrites ``progress.json`` (the latest
metrics) and appends to ``curve.jsonl`` (accuracy vs wall time), so an interrupted run keeps
what it measured. ``metrics.json`` is written once, when the run ends, with its ``status``
(``finished``, ``stopped``, ``failed: <error>``): a run without one did not end (it was killed).
Wall time counts every segment of a resumed run (``WallClock``).
"""

import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..atomic import atomic_write, save_json
from ..report import read_curve, utc_minute


def flat_metrics(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = value
    return out


class TimeAtLastStep:
    """Mixin for a clock callback (``now()``): ``at_last_step`` is its time when the last training
    step or evaluation ended. A checkpoint holds the state after the last finished step, and a
    step a stop threw away is redone by the resumed run, so its time must not be counted twice:
    a clock's checkpointed time is this one."""

    at_last_step = None

    def now(self) -> float:
        raise NotImplementedError

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.at_last_step = self.now()

    def on_train_batch_end(self, trainer, *args, **kwargs):
        super().on_train_batch_end(trainer, *args, **kwargs)
        self.at_last_step = self.now()

    def on_validation_end(self, trainer, pl_module):
        super().on_validation_end(trainer, pl_module)
        self.at_last_step = self.now()

    def saved_time(self) -> float:
        return self.now() if self.at_last_step is None else self.at_last_step


class WallClock(TimeAtLastStep, pl.Callback):
    """Seconds since the run started, over all its segments: the time so far travels in every
    checkpoint and a resumed run continues from it, so time axes never go back."""

    def __init__(self):
        self.start = time.time()  # wall time, not perf_counter: DDP spawn reads it in other processes
        self.before = 0.0  # seconds of the earlier segments, up to the checkpoint resumed from

    def elapsed(self) -> float:
        return self.before + time.time() - self.start

    now = elapsed

    def state_dict(self) -> dict:
        return {"elapsed_s": self.saved_time()}

    def load_state_dict(self, state_dict: dict):
        self.before = state_dict["elapsed_s"]

    @staticmethod
    def of(trainer) -> "WallClock | None":
        return next((c for c in trainer.callbacks if isinstance(c, WallClock)), None)


class MetricsWriter(pl.Callback):
    """``progress.json`` and ``curve.jsonl`` at every evaluation (``path`` names the folder's
    ``metrics.json``, which the run writes itself when it ends)."""

    def __init__(self, path: str):
        self.progress = Path(path).with_name("progress.json")
        self.curve = self.progress.with_name("curve.jsonl")
        self._clock = WallClock()  # when the trainer has none
        self._last_step = None  # the step of the curve's last row

    def _rewrite_curve(self, rows: list[dict]):
        text = "".join(json.dumps(row) + "\n" for row in rows)
        atomic_write(self.curve, lambda tmp: tmp.write_text(text), "accuracy curve")

    def on_train_start(self, trainer, pl_module):
        """A resumed run redoes what came after its checkpoint (a SIGKILL can land after an
        evaluation's row, or half-way through writing it, but before its checkpoint): drop those
        rows, so none is listed twice. A new run starts its own curve."""
        if not trainer.is_global_zero or not self.curve.is_file():
            return
        kept = [row for row in read_curve(self.curve) if row["step"] <= trainer.global_step] \
            if trainer.ckpt_path is not None else []
        if "".join(json.dumps(row) + "\n" for row in kept) != self.curve.read_text():
            self._rewrite_curve(kept)
        self._last_step = kept[-1]["step"] if kept else None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = flat_metrics(trainer.callback_metrics)
        metrics.pop("step", None)  # the logged x-axis; the row has its own
        clock = WallClock.of(trainer) or self._clock
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "time_s": clock.elapsed(), **metrics}
        self.curve.parent.mkdir(parents=True, exist_ok=True)
        if row["step"] == self._last_step:
            # a run resumed from a checkpoint written before its epoch's evaluation evaluates that step
            # again: the new row replaces the old one instead of listing the step twice
            self._rewrite_curve([*read_curve(self.curve)[:-1], row])
        else:
            with open(self.curve, "a") as f:
                f.write(json.dumps(row) + "\n")
        self._last_step = row["step"]
        save_json(self.progress, {**metrics, "epoch": trainer.current_epoch, "step": trainer.global_step,
                                  "time/total_s": row["time_s"]}, "progress file")


class EvaluationLines(pl.Callback):
    """One line per evaluation on stdout, for runs whose output goes to a file or a pipe
    (where Lightning's redrawn progress bar writes kilobytes of carriage returns)."""

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = flat_metrics(trainer.callback_metrics)
        clock = WallClock.of(trainer)
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        if "val/acc" in metrics:
            parts.append(f"val acc {100 * metrics['val/acc']:.2f}%")
        if clock is not None:
            parts.append(f"{clock.elapsed():.0f} s")
        print(" | ".join(parts), flush=True)


def write_final_metrics(output_dir, metrics: dict, status: str) -> dict:
    """``metrics.json``, once, as the run ends: its metrics, how it ended and when (UTC; a
    report dates its table by its runs, not by the day it was made). Returns what it wrote."""
    record = {**metrics, "status": status, "run/ended": utc_minute()}
    save_json(Path(output_dir) / "metrics.json", record, "metrics file")
    return record


def last_progress(output_dir) -> dict:
    """The metrics of the last evaluation, or {} when there was none."""
    path = Path(output_dir) / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def reset_peak_memory():
    """Start this run's peak memory from the memory in use now: the jobs of a sweep (and the
    trials of a search) share one process, whose peak would otherwise carry over from job to job.
    On Linux (``/proc/self/clear_refs``); elsewhere the host figure stays the process's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    except OSError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_rss_kib() -> float:
    """The peak resident memory in KiB: Linux's VmHWM, which ``reset_peak_memory`` resets (the
    process's ``ru_maxrss`` also keeps the RSS it had when it was exec'ed: a bench cell's would
    start at its launcher's); elsewhere ``ru_maxrss``."""
    import resource
    import sys

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**10 if sys.platform == "darwin" else rss


def peak_memory() -> dict:
    """Peak memory of this run (see ``reset_peak_memory``), a cost users compare across methods:
    host max RSS, and the CUDA allocator's peak when a GPU was used."""
    out = {"mem/peak_mb": peak_rss_kib() / 2**10}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["mem/gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def log_summary(loggers, metrics: dict):
    """Final metrics into the W&B run summary, so dashboards sort and compare runs by them."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(metrics)
