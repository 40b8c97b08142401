"""The registry of named loss terms: ``loss.weights.NAME`` weighs the function registered as NAME.

A term is a function whose parameters name the inputs it reads (``teacher_logits``,
``student_logits``, ``temperature``, ...; a parameter with a default may go unoffered). Whoever computes terms (a synthesizer, the student
step) offers its inputs by name and calls ``compute_terms``: each term with a non-zero weight
is called with the inputs it asks for, so adding a term to a method is registering a function
and naming it in the method's ``terms``, never another ``if`` in the loop. Users register
their own terms the same way, in their own module (docs/extending.md).
"""

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping

import torch

LOSS_TERMS: dict[str, Callable[..., torch.Tensor]] = {}


class UnknownLossTerm(LookupError):
    pass


def register_loss(name: str):
    """Decorator: ``@register_loss("name")`` makes the function the term ``loss.weights.name`` weighs."""

    def register(fn):
        known = LOSS_TERMS.get(name)
        if known is not None and _qualified(known) != _qualified(fn):
            raise ValueError(f"loss term {name!r} is already registered by {_qualified(known)}; "
                             f"pick another name for {_qualified(fn)}")
        LOSS_TERMS[name] = fn
        return fn

    return register


def _qualified(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def loss_term(name: str) -> Callable[..., torch.Tensor]:
    """The function registered as ``name``."""
    try:
        return LOSS_TERMS[name]
    except KeyError:
        raise UnknownLossTerm(
            f"no loss term is registered as {name!r} (registered: {sorted(LOSS_TERMS)}); register one "
            f"with @register_loss({name!r}) in a module the method imports"
        ) from None


@functools.cache
def _parameters(fn) -> tuple[tuple[str, bool], ...]:
    """(name, required) of each named parameter of ``fn``."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple((p.name, p.default is inspect.Parameter.empty)
                 for p in inspect.signature(fn).parameters.values() if p.kind in named)


def term_inputs(name: str) -> tuple[str, ...]:
    """The input names term ``name`` reads: its parameters."""
    return tuple(key for key, _ in _parameters(loss_term(name)))


def is_active(weights: Mapping, name: str) -> bool:
    """A term worth computing: its weight is set and non-zero."""
    return float(weights.get(name) or 0.0) != 0.0


def reads(names: Iterable[str], weights: Mapping, input_name: str) -> bool:
    """Whether any active term among ``names`` reads ``input_name`` (e.g. to install a hook
    only when a term will read what it records)."""
    return any(is_active(weights, n) and input_name in term_inputs(n) for n in names)


class Lazy:
    """An input made only when a term first reads it, then reused by the others (e.g. a student
    forward that only the adversarial terms need)."""

    def __init__(self, make: Callable[[], object]):
        self.make = make


def compute_terms(names: Iterable[str], weights: Mapping, inputs: Mapping) -> dict[str, torch.Tensor]:
    """Every term among ``names`` with a non-zero weight, in the order of ``names`` (the order
    they are summed in), each called with the ``inputs`` its parameters name."""
    if isinstance(names, (set, frozenset)):
        raise TypeError(f"give the term names {sorted(names)} as a tuple: their order is the order they are summed in")
    made: dict[str, object] = {}

    def read(key: str, term: str):
        if key not in made:
            if key not in inputs:
                raise TypeError(f"loss term {term!r} reads {key!r}, which is not available here "
                                f"(available: {sorted(inputs)})")
            value = inputs[key]
            made[key] = value.make() if isinstance(value, Lazy) else value
        return made[key]

    terms = {}
    for name in names:
        if is_active(weights, name):
            fn = loss_term(name)
            value = fn(**{key: read(key, name) for key, required in _parameters(fn) if required or key in inputs})
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"loss term {name!r} ({_qualified(fn)}) returned {shape}, not a scalar tensor: "
                                "reduce it (e.g. .mean()) to the one number to minimise")
            terms[name] = value
    return terms
