"""The one error type users see.

Every expected failure (bad path, corrupt file, wrong shape, missing GPU) raises ``DawnpipeError`` with a
single line that names the problem and the fix. The CLI prints that line and exits 1; anything else is a bug
and keeps its traceback.
"""


class DawnpipeError(Exception):
    """A user-facing failure: ``str(err)`` is one line saying what is wrong and how to fix it; ``problem`` and
    ``fix`` are kept apart so a caller can restate the fix (the pipeline names its own ``--resume``)."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        message = problem if fix is None else f"{problem}; {fix}"
        super().__init__(" ".join(message.split()))  # always a single line
        self.problem, self.fix = problem, fix


class Interrupted(DawnpipeError):
    """A run stopped by Ctrl-C or SIGTERM at a safe point; the pipeline restates its ``fix`` (how to continue)."""


class BackendRefused(DawnpipeError):
    """A backend that cannot run an artifact (an int8 graph refused for disagreeing with fp32, a graph a runtime
    cannot compile): one line for ``export`` or ``eval`` alone; a family records it as "skipped: reason" for that
    backend and goes on."""


class DiskFull(DawnpipeError):
    """A write that found no room: ``problem`` names the folder, the file, the bytes it needed (where known) and
    the free space; ``fix`` says what to do (a training run restates it with its ``--resume``)."""
