"""Lines a normal run would print that its user cannot act on, filtered where they come from.

Each entry says why it is noise here. ``WANDB_SILENT=false`` brings W&B's own lines back.
"""

import logging
import os
import warnings

NOISE = [
    # the frozen teacher is in eval mode on purpose (DistillationModule.train keeps it there)
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # inside Lightning's own code (torch's pytree API change), nothing a user can change
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # data-free methods optimise manually and checkpoint every N steps: the state after the step
    # is the one a resumed run must continue from
    r"Using ModelCheckpoint with manual optimization",
    # data-free training iterates over step numbers (StepStream), never with worker processes
    r"Your `IterableDataset` has `__len__` defined",
    # a resumed run writes into the checkpoint folder of its first segment, as it should
    r"Checkpoint directory .* exists and is not empty",
    # under DDP each rank tests a shard of the test split and the accuracy is reduced over
    # ranks, which equals a single process's (tests/test_ddp.py)
    r"Using `DistributedSampler` with the dataloaders. During `trainer.test\(\)`",
    # a run that ends before its first evaluation (trainer.max_steps within an epoch) has no
    # best to keep; its last.ckpt and its final test (which counts as the best) are written anyway
    r"`ModelCheckpoint\(monitor='val/acc'\)` could not find the monitored key",
    # resume=<file>.ckpt starts a new run dir from another run's checkpoint: the source run's
    # best-checkpoint bookkeeping is not this run's to continue
    r"The dirpath has changed from",
]

# Lightning's information lines (GPU/TPU availability, product tips, "Trainer.fit stopped: ...",
# "Received SIGTERM"): the run prints what matters itself; Lightning's warnings still show.
BANNER_LOGGERS = ("pytorch_lightning", "lightning_fabric")


def silence_known_noise():
    """Idempotent; called in every process that trains (DDP spawns fresh interpreters)."""
    for message in NOISE:
        warnings.filterwarnings("ignore", message=message)
    for name in BANNER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")
