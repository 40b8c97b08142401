"""Loss terms as pure functions of tensors, one module per kind; ``terms`` registers them by name."""

from . import terms  # noqa: F401  (registers the built-in terms)
