"""Atomic writes, content hashes and the folder lock, so finished work is never half-overwritten.

The lock is an ``fcntl.flock`` on ``<folder>/.lock``: the kernel releases it when the process ends, however it
ends, so a killed writer never leaves a folder locked. It is re-entrant within a process (the trainer holds its
run folder and then updates the manifest in it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError, DiskFull

_CHUNK = 1 << 20  # bytes read per hash update
LOCK_NAME = ".lock"
_HELD: dict[str, list[int]] = {}  # resolved folder -> [lock fd, depth]: re-entrant within one process


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` if needed and check we can write there, with a one-line error naming ``option`` (the
    option that gave the folder) and what is wrong with the path itself."""
    path = check_folder_option(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
    except OSError as err:
        raise DawnpipeError(
            f"cannot write to the {option} folder {path} ({err.strerror})", f"pass a writable folder with {option}"
        ) from None
    return path


def check_folder_option(path: str | Path, option: str) -> Path:
    """Refuse, before any work and without creating anything, a folder option whose path is a file or lies under
    one, or whose nearest existing folder cannot be written."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not blocker.is_dir():
        where = "is a file" if blocker == path else f"lies under {blocker}, which is a file"
        raise DawnpipeError(f"{option} {path} {where}, where a folder belongs", f"pass a folder with {option}")
    if not os.access(blocker, os.W_OK | os.X_OK):
        raise DawnpipeError(f"{option} {path} cannot be written ({blocker} is read-only)", f"pass a writable {option}")
    return path


_FULL = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL = 1 << 20  # bytes: a writer that failed with less than this left has run out of room


def atomic_write(path: str | Path, write: Callable[[Path], Any], expected_bytes: int | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers see the old file or the new one, never half.

    A disk (or quota) that fills up during the write is one ``DiskFull`` line naming the folder, the file, the bytes
    it needed (``expected_bytes``, where the caller knows them) and the free space; the temporary file is removed
    and the old file, if any, is left whole. Some writers do not say ENOSPC (``torch.save`` raises a RuntimeError
    about a position); a failure that leaves the disk all but full is read as one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        if err.errno in _FULL:
            raise no_space(path, expected_bytes) from None
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        full = _out_of_room(err, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise no_space(path, expected_bytes) from None
        raise
    return path


def _out_of_room(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in _FULL:
        return True
    if isinstance(err, OSError | RuntimeError):
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL
        except OSError:
            return False
    return False


def no_space(path: Path, needed: int | None = None, fix: str = "free space or pass another --out") -> DiskFull:
    """The one line for a write that found no room (the free space read now, after any temporary was removed)."""
    free = free_bytes(path.parent)
    need = f"about {human_bytes(needed)} needed, " if needed else ""
    return DiskFull(f"no space left on {path.parent} writing {path.name} ({need}{human_bytes(free)} free)", fix)


def ensure_room(folder: str | Path, needed: int, what: str, option: str = "--out") -> None:
    """Before any work: refuse a folder without room for ``needed`` bytes (``what`` is the file that will need it)."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise DiskFull(
            f"no room on {folder} for {what} (about {human_bytes(needed)} needed, {human_bytes(free)} free)",
            f"free space or pass another {option}",
        )


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent), None if unknown."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def human_bytes(count: int | None) -> str:
    """1.2 MB, 26 MB, 3.4 GB (decimal units, two significant figures)."""
    if count is None:
        return "an unknown amount"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{count} bytes"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON (indented, keys in insertion order) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


@contextmanager
def folder_lock(path: str | Path, wait: float = 0.0) -> Iterator[bool]:
    """Hold ``<path>/.lock`` exclusively while the block runs; yields True when this call took the lock, False when
    this process already held it. ``wait``: seconds to wait for another process's lock (short read-modify-writes
    wait; a training run does not). Another holder past the wait is a one-line error naming its pid."""
    import fcntl

    path = ensure_writable_dir(path)
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield False
        finally:
            _HELD[key][1] -= 1
        return
    handle = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            holder = os.read(handle, 32).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            raise DawnpipeError(
                f"{path} is being written by another dawnpipe process (pid {holder})",
                "wait for it to finish, or write somewhere else (another --name or --out)",
            ) from None
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [handle, 1]
    try:
        yield True
    finally:
        del _HELD[key]
        os.close(handle)  # closing releases the flock
