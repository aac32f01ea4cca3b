"""How a run is watched and stopped: the progress bar and epoch lines; Ctrl-C / SIGTERM handled at a training step
boundary so the checkpoint written on the way out is whole; SIGTERM turned into Ctrl-C for the stages that have no
steps (an export, an evaluation), which are abandoned whole."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


def progress_bar(total: int, enabled: bool) -> Any:
    """A live bar on a terminal; in a log (stderr not a TTY) no carriage-return frames, only the epoch lines."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        disable=not (enabled and sys.stderr.isatty()),
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}",
    )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One epoch's summary: the bar's postfix on a terminal, a log line otherwise."""
    ema = f" ema_test_acc={record['ema_test_acc']:.4f}" if "ema_test_acc" in record else ""
    return (
        f"epoch {record['epoch']}/{epochs} loss={record['train_loss']:.3f} "
        f"train_acc={record['train_acc']:.4f}{ema} {record['elapsed_s']:.0f}s"
    )


@contextlib.contextmanager
def closing(bar):
    """Close the progress bar however the loop ends, so an error line never lands on a half-drawn bar."""
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[dict[str, Any]]:
    """First Ctrl-C or SIGTERM (what schedulers and containers send) sets a flag the loop honours at the next
    step boundary, so the saved state is whole; a second signal interrupts at once."""
    flag: dict[str, Any] = {"stop": False, "why": "interrupted"}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        flag["why"] = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def abandon_on_sigterm(problem: str, how: str) -> Iterator[None]:
    """SIGTERM (what schedulers and containers send) ends a stage like Ctrl-C does: the stage is abandoned (its files
    are written under temporary names, so nothing half-written is kept) and one line, ``problem``, says ``how`` to
    continue. Training installs its own handler (graceful_interrupt) while it runs."""
    from dawnpipe.common.errors import Interrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(problem, how) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
