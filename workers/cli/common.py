"""Helpers shared by CLI commands: the errors they raise and the app they are given.

Every command takes the composition root's ``App`` with ``@click.pass_obj`` (the
``coexist`` group puts a lazily built one into ``ctx.obj``; tests pass their own with
``CliRunner().invoke(cli, args, obj=app)``).  Failures that reach the group are turned
into one line and an exit code in one place, ``workers.cli.CoexistGroup``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

import click


class UserError(click.ClickException):
    """A problem the user can fix (bad argument, unreachable system): one line, exit 2."""

    exit_code = 2


class NeedsAttention(click.ClickException):
    """Something needs a person, a check failed or nothing was found (exit 1); the reasons
    are printed above."""

    exit_code = 1


class Failure(click.ClickException):
    """A failure mapped by ``workers.errors.explain``: one line and its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(group: click.Group) -> None:
    """The ``coexist`` console script."""
    group.main(prog_name="coexist")


@contextlib.contextmanager
def hard_deadline(seconds: float | None, error: Callable[[], BaseException]) -> Iterator[None]:
    """Raise ``error()`` in this (main) thread after ``seconds``, even inside a blocking
    socket read: a hung server cannot make ``--timeout`` lie.  A timer set by someone else
    (pytest-timeout) keeps running and fires when it would have."""
    if (seconds is None or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    started = time.monotonic()
    ours = started + seconds
    previous_handler = signal.getsignal(signal.SIGALRM)
    previous_delay, _ = signal.getitimer(signal.ITIMER_REAL)
    theirs = started + previous_delay if previous_delay else None

    def fire(signum, frame):
        nonlocal theirs
        if time.monotonic() >= ours - 0.001:
            raise error()
        theirs = None  # the other timer came first: its turn, then ours again
        signal.setitimer(signal.ITIMER_REAL, max(ours - time.monotonic(), 0.001))
        if callable(previous_handler):
            previous_handler(signum, frame)

    signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, previous_delay or seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if theirs is not None:
            signal.setitimer(signal.ITIMER_REAL, max(theirs - time.monotonic(), 0.001))
