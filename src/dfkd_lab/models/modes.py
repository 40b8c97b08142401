"""Evaluate a model in eval mode for one block, whatever mode it was in before."""

from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module):
    """BatchNorm reads (and leaves) its running statistics and dropout is off inside the block;
    the model's previous mode comes back on exit, after an error too."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
