"""A registry of classifier factories, so configs and tests can name models by string."""

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: make a factory available as ``build_model(name, ...)``."""

    def wrap(factory):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = factory
        return factory

    return wrap


def model_names() -> list[str]:
    return sorted(_MODELS)


def build_model(arch: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Build a registered classifier; an unknown name lists the known ones."""
    if arch not in _MODELS:
        raise KeyError(f"unknown arch {arch!r}: choose one of {', '.join(model_names())}")
    return _MODELS[arch](num_classes=num_classes, in_channels=in_channels)
