"""A stop request (SIGTERM from a scheduler, SIGINT from Ctrl-C) that a run honours within seconds.

Both signals ask Lightning to stop after the current training step (SIGINT is forwarded as
SIGTERM, so both save ``checkpoints/last.ckpt`` the same way). A step can be long: one
DeepInversion batch takes minutes on a CPU, longer than a scheduler's grace period (often
30 s). So a long inner synthesis loop calls ``check()`` at every iteration; inside
``abortable()`` (the caller holds a copy of the state from before the step) it raises
``StopRequested`` and the caller puts that state back before the checkpoint is written.
A second Ctrl-C stops at once, without a checkpoint.
"""

import signal
from contextlib import contextmanager


class StopRequested(Exception):
    """A stop signal arrived during an abortable part of a step."""


class _State:
    signum: int | None = None  # the first stop signal received
    abortable: bool = False


_state = _State()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def requested() -> int | None:
    """The stop signal received (``signal.SIGTERM`` or ``signal.SIGINT``), or None."""
    return _state.signum


def exit_code(signum: int) -> int:
    """What a shell reports for a process ended by ``signum``: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(signum)


def _handle(signum, frame):
    if _state.signum is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # pressed twice: stop now
    if _state.signum is None:
        _state.signum = signum
    if signum == signal.SIGINT:
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler (it composes with ours) stops the loop


@contextmanager
def on_signals(reset: bool = True):
    """While a run is in progress, SIGTERM and SIGINT request a stop instead of killing it;
    ``reset=False`` keeps a stop requested earlier in this process (a benchmark's later cells)."""
    if reset:
        _state.signum = None
    _state.abortable = False
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def abortable():
    """Inside: ``check()`` raises ``StopRequested`` once a stop was requested."""
    _state.abortable = True
    try:
        yield
    finally:
        _state.abortable = False


def check():
    """Call once per iteration of a long inner loop."""
    if _state.signum is not None and _state.abortable:
        raise StopRequested(signal.Signals(_state.signum).name)
