"""The bad-input harness: every refusal is one line naming the problem and the fix, and changes nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from dawnpipe.cli import main

ROOT = Path(__file__).resolve().parents[2]


def tree_digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (the folder lock excluded: taking it is not a change)."""
    found = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.name != ".lock":
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def check_one_line(stderr: str, output: str = "") -> str:
    """Exactly one non-empty stderr line, ``error: problem; fix``, and no traceback anywhere."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "; " in lines[0], lines[0]
    assert "Traceback" not in stderr + output
    return lines[0]


def refused(args: list[str], *, protect: tuple[Path, ...] = (), expect: tuple[str, ...] = ()) -> str:
    """Run the CLI in-process; assert a refusal (exit 1 or 2, one line) that left ``protect`` untouched."""
    before = tree_digest(*protect)
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    line = check_one_line(result.stderr, result.output)
    assert tree_digest(*protect) == before, "a refused command changed files it was given"
    for text in expect:
        assert text in line, line
    return line


def run_cli(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (signals, pipes, memory peaks)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dawnpipe", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def peak_rss_mb(code: str, timeout: float = 120) -> tuple[int, int, str]:
    """Run ``code`` in a fresh interpreter: its exit code, peak resident memory in MB as the kernel counts it
    (ru_maxrss of the child), and its stderr."""
    probe = (
        f"import resource, subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-c', {code!r}], capture_output=True, text=True)\n"
        f"print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
        f"print(r.stderr, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout)
    code_text, peak = done.stdout.split()
    return int(code_text), int(peak), done.stderr
