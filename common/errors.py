"""The one error type users see.

Every expected failure (bad path, corrupt file, wrong shape, missing GPU) raises ``DawnpipeError`` with a
single line that names the problem and the fix. The CLI prints that line and exits 1; anything else is a bug
and keeps its traceback.
"""


class DawnpipeError(Exception):
    """A user-facing failure: ``str(err)`` is one line saying what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        message = problem if fix is None else f"{problem}; {fix}"
        super().__init__(" ".join(message.split()))  # always a single line


class Interrupted(DawnpipeError):
    """A run stopped by Ctrl-C or SIGTERM at a safe point; ``problem`` and ``fix`` kept apart so a caller (the
    pipeline) can restate how to continue."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem, fix)
        self.problem, self.fix = problem, fix


class BackendRefused(DawnpipeError):
    """A backend that cannot run an artifact (an int8 graph refused for disagreeing with fp32, a graph a runtime
    cannot compile): one line for ``export`` or ``eval`` alone; a family records it as "skipped: reason" for that
    backend and goes on."""


class DiskFull(DawnpipeError):
    """A write that found no room: ``problem`` names the folder, the file, the bytes it needed (where known) and
    the free space; ``fix`` says what to do. Kept apart so a caller can restate the fix (a training run names its
    ``--resume``)."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem, fix)
        self.problem, self.fix = problem, fix
