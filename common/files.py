"""Atomic writes and content hashes, so finished work is never half-overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dawnpipe.common.errors import DawnpipeError

_CHUNK = 1 << 20  # bytes read per hash update


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


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
