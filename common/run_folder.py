"""One guard for every folder dawnpipe writes: a safe name, one writer at a time, finished work kept.

    with RunFolder(path) as folder:          # exclusive lock, stale temporaries of killed writers removed
        folder.claim_new(overwrite=False)    # refuses a folder that holds a finished or interrupted run
        ...write artifacts...

The lock is ``common.files.folder_lock``, the one lock every writer of a folder takes. Temporaries are the
``.<name>.<random>.tmp`` files ``common.files.atomic_write`` makes; under the lock no other writer can own one,
so any found then were left by a process killed mid-write (kill -9, power loss) and are removed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import LOCK_NAME, folder_lock
from dawnpipe.common.manifest import MANIFEST_NAME, read_manifest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}$")
_STALE_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$|^\.probe-[A-Za-z0-9_]{8}$")


def check_run_name(name: str) -> str:
    """A run name is one plain path component, so ``--name`` can never reach outside ``--out``."""
    if not _NAME.match(name) or name in (".", ".."):
        raise DawnpipeError(
            f"run name {name!r} is not a plain folder name",
            "use letters, digits and . _ - + = only (no slashes, no leading dot), at most 128 characters",
        )
    return name


class RunFolder:
    """An output folder held exclusively by this process while it writes (context manager, re-entrant).

    ``wait``: seconds to wait for another process's lock (short manifest updates wait; a training run does not).
    """

    def __init__(self, path: str | Path, wait: float = 0.0) -> None:
        self.path = Path(path)
        self.wait = wait
        self._lock: contextlib.AbstractContextManager[bool] | None = None
        self.removed_temporaries: list[str] = []

    def __enter__(self) -> RunFolder:
        lock = folder_lock(self.path, self.wait)
        if lock.__enter__():  # the first hold in this process: temporaries found now were left by a killed writer
            self.removed_temporaries = self._remove_stale_temporaries()
        self._lock = lock
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)

    def state(self) -> str:
        """``empty`` (nothing of a run), ``finished``, ``interrupted`` (a checkpoint, training never completed)."""
        manifest = self.path / MANIFEST_NAME
        if manifest.is_file():
            try:
                train = read_manifest(self.path).get("runs", {}).get("train")
            except (DawnpipeError, AttributeError):  # unreadable or foreign: the checkpoint decides, below
                train = None
            if train:
                return "finished"
        if (self.path / "checkpoint.pt").exists():
            return "interrupted"
        return "finished" if manifest.exists() else "empty"

    def claim_new(self, *, overwrite: bool = False) -> None:
        """Make sure a new run may be written here; with ``overwrite``, delete the old run's files first."""
        state = self.state()
        if state == "empty":
            return
        if not overwrite:
            fix = (
                f"continue it with --resume {self.path}, or replace it with --overwrite"
                if state == "interrupted"
                else "pick another --name, or pass --overwrite to replace it and every file made from it"
            )
            raise DawnpipeError(f"{self.path} already holds a {state} run; it was left untouched", fix)
        for child in self.path.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _remove_stale_temporaries(self) -> list[str]:
        removed = []
        for child in self.path.iterdir():
            if _STALE_TMP.match(child.name) and child.is_file():
                child.unlink(missing_ok=True)
                removed.append(child.name)
        return removed
