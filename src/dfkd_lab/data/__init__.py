"""Real datasets (offline-first) and synthetic transfer sets."""

from .datamodule import ClassificationData, TrainSplitForbidden

__all__ = ["ClassificationData", "TrainSplitForbidden"]
