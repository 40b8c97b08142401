"""Metrics on disk: a flat ``metrics.json`` and an accuracy-vs-time curve (``curve.jsonl``).

Both are rewritten at every evaluation, so an interrupted run keeps what it measured.
"""

import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..atomic import save_json


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


class MetricsWriter(pl.Callback):
    def __init__(self, path: str):
        self.path = Path(path)
        self.curve = self.path.with_name("curve.jsonl")
        self._start = None

    def on_fit_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = flat_metrics(trainer.callback_metrics)
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step,
               "time_s": time.perf_counter() - (self._start or time.perf_counter()), **metrics}
        self.curve.parent.mkdir(parents=True, exist_ok=True)
        with open(self.curve, "a") as f:
            f.write(json.dumps(row) + "\n")
        save_json(self.path, metrics, "metrics file")


def peak_memory() -> dict:
    """Peak memory of this process, a cost users compare across methods: host max RSS, and
    the CUDA allocator's peak when a GPU was used."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"mem/peak_mb": rss / (2**20 if sys.platform == "darwin" else 2**10)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["mem/gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def log_summary(loggers, metrics: dict):
    """Final metrics into the W&B run summary, so dashboards sort and compare runs by them."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(metrics)
