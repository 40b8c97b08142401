"""Classifier zoo (by name), generators and feature taps."""

from . import airbench, lenet, resnet, vgg, wrn  # noqa: F401  (registers the factories)
from .registry import build_model, model_names

__all__ = ["build_model", "model_names"]
