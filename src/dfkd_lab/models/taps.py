"""Read a model's intermediate tensors through forward hooks, leaving its forward untouched."""

from torch import nn

from ..config import ConfigError


class FeatureTap:
    """Record the output of each named submodule (or the input, ``capture="input"``).

    Use as a context manager; the hooks are removed on exit, so nothing leaks across
    batches. ``tap.features`` holds the tensors of the latest forward, in ``names`` order.
    """

    def __init__(self, model: nn.Module, names, capture: str = "output"):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise KeyError(f"{type(model).__name__} has no submodule(s) {missing}")
        self._targets = [modules[n] for n in names]
        self._capture = capture
        self._handles = []
        self._store: dict[int, object] = {}

    def __enter__(self):
        for i, module in enumerate(self._targets):
            if self._capture == "input":
                hook = module.register_forward_pre_hook(self._saver(i, from_input=True))
            else:
                hook = module.register_forward_hook(self._saver(i, from_input=False))
            self._handles.append(hook)
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._store.clear()

    def _saver(self, index, from_input):
        if from_input:
            def hook(module, args):
                self._store[index] = args[0]
        else:
            def hook(module, args, output):
                self._store[index] = output
        return hook

    @property
    def features(self):
        return [self._store[i] for i in range(len(self._targets))]


def stage_tap(model: nn.Module) -> FeatureTap:
    """Outputs of the model's ``feature_layers`` (for feature, relation and attention KD)."""
    if not hasattr(model, "feature_layers"):
        raise ConfigError(
            f"{type(model).__name__} has no feature_layers, the names of its feature stages that a feature "
            "loss term (hint, fsp, at) reads: give the class a feature_layers tuple of submodule names, "
            "or set those weights to 0")
    return FeatureTap(model, model.feature_layers)


def with_stages(model: nn.Module, wanted: bool, forward):
    """``forward()``'s result and, when ``wanted``, the outputs of ``model``'s feature stages
    during it (else None): one forward serves the logits and the feature KD terms."""
    if not wanted:
        return forward(), None
    with stage_tap(model) as tap:
        return forward(), tap.features


def penultimate_tap(model: nn.Module) -> FeatureTap:
    """The input of the final classifier layer: the pre-logit feature."""
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise ConfigError(
            f"{type(model).__name__} has no submodule named 'classifier' (its final layer), whose input, the "
            "pre-logit feature, a loss term of this method reads (activation): name the final layer "
            "classifier, or set that weight to 0")
    return FeatureTap(model, ["classifier"], capture="input")
