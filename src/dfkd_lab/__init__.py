"""dfkd-lab: data-free knowledge distillation with one reproducible entrypoint."""

__version__ = "0.1.0"
