"""Stopping a training run on SIGTERM (what SLURM and other schedulers send) or SIGINT (Ctrl-C).

A stop is the exception `Stopped`, a SystemExit of status 128 + the signal's number (143, 130: what a shell reports
for a process the signal ended), so that a scheduler never takes a stopped run for a finished one.

Where it is raised:
- inside `stoppable()` (the commands that train), at once, wherever the process is, except during a fit;
- during a fit (`deferred()`), at the fit's next training or validation step (`raise_if_stopped`, called by the
  trainer's callback), so that a checkpoint or a log row is never cut off half-written;
- in processes that `handle_signals()` without `stoppable()` (the workers of `--jobs`), at the next fit step or the
  next fold (`raise_if_stopped`), never while idle: such a process ends when its pool is shut down.

A second SIGINT (Ctrl-C pressed again) while a stop waits for the fit's next step stops at once, whatever is being
written; any other second signal changes nothing: the first one is being handled.
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(SystemExit):
    """A run stopped by a signal; exits 128 + the signal's number when nothing catches it.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)

    @property
    def name(self) -> str:
        """SIGTERM, SIGINT, ..."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def __reduce__(self):  # from a worker process to the pool's owner: the signal, not the status
        return type(self), (self.signum,)


class _State:
    installed: dict | None = None  # the handlers replaced (None: medcad's are not installed)
    immediate = 0  # depth of `stoppable()`: a signal raises at once there (outside fits)
    fitting = 0  # depth of `deferred()`: a signal waits for the fit's next step
    signum: int | None = None  # the signal that stops this process


_state = _State()


def _on_signal(signum: int, frame) -> None:
    if _state.signum is not None:
        if signum == signal.SIGINT and _state.immediate:  # Ctrl-C again: the user will not wait for the next step
            raise Stopped(signum)
        return  # the stop is under way
    _state.signum = signum
    if _state.immediate and not _state.fitting:
        raise Stopped(signum)


def handle_signals() -> bool:
    """Install medcad's handler of SIGTERM and SIGINT in this process (a no-op outside the main thread, where Python
    cannot set handlers, and when installed already). Returns whether it installed them now."""
    if _state.installed is not None or threading.current_thread() is not threading.main_thread():
        return False
    _state.installed = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    return True


@contextmanager
def stoppable():
    """Inside, SIGTERM and SIGINT raise `Stopped` (at the next step while a fit runs); the handlers before are
    restored, and the stop forgotten, when the outermost one ends."""
    installed = handle_signals()
    _state.immediate += 1
    try:
        yield
    finally:
        _state.immediate -= 1
        if installed:
            for s, handler in (_state.installed or {}).items():
                signal.signal(s, handler)
            _state.installed, _state.signum = None, None


@contextmanager
def deferred():
    """A fit: a signal stops it at its next step (`raise_if_stopped`), or as it ends."""
    _state.fitting += 1
    try:
        yield
    finally:
        _state.fitting -= 1
    raise_if_stopped()


def requested() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _state.signum


def raise_if_stopped() -> None:
    """Raise `Stopped` when a signal asked this process to stop (where stopping loses nothing: between steps, before
    a fold)."""
    if _state.signum is not None:
        raise Stopped(_state.signum)


class _SignalStack(ctypes.Structure):  # POSIX stack_t (Linux)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextmanager
def own_signal_stack():
    """Keep the calling thread's alternate signal stack (`sigaltstack`) across a call into a library that replaces
    it. OpenVINO's `compile_model` installs an 11.5 KB stack of its own on the calling thread and leaves it there
    once the model is freed; CPython runs Python signal handlers with SA_ONSTACK, so the next SIGTERM or SIGINT was
    delivered onto freed memory and the process died of SIGSEGV (exit 139) instead of stopping (143, 130). Linux
    only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)
