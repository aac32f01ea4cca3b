"""Training throughput of this checkout's step against an older commit's, on this CPU, in interleaved rounds.

    python bench/step_compare.py OLD_COMMIT [--width 1.0] [--batch 256] [--steps 6] [--rounds 3] [--precision bf16]

OLD_COMMIT is checked out into a temporary git worktree (a tree from before ``--precision`` runs at its ``auto``,
bf16 on a CPU with native bf16: compare there at ``--precision bf16``). Each round trains one warm epoch of
``steps`` steps of the real JPEG CIFAR-10 with each tree in its own process (the old first in odd rounds, the new
first in even ones),
importing dawnpipe from that tree alone (``python -S`` with a PYTHONPATH link, as bench/gpu.py's steps do), and
takes the trainer's own images/s for the epoch; both share the decoded-data cache. The ratio is new over old per
round: a step that got leaner on the host must not have got slower here.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_EPOCH = """
import json, sys, tempfile
from dawnpipe.train.api import config_from_options
from dawnpipe.train.config import TrainConfig
from dawnpipe.train.trainer import train
data, width, batch, steps, precision = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
# a tree from before --precision trains at `auto`: bf16 on a CPU with native bf16, which --precision bf16 matches
chosen = {"precision": precision} if "precision" in TrainConfig.__dataclass_fields__ else {}
with tempfile.TemporaryDirectory() as out:
    cfg = config_from_options(data=data, epochs=1, batch_size=batch, width=width, train_limit=batch * steps,
                              test_limit=500, out=out, holdout=0, device="cpu", name="x", **chosen)
    print(json.dumps(train(cfg, progress=False).metrics["train_images_per_s"]))
"""


def _epoch(tree: Path, links: Path, args: argparse.Namespace, data: str) -> float:
    """images/s of one warm epoch trained by ``tree``'s dawnpipe, in a process that imports nothing else of ours."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(links), *site.getsitepackages()])}
    command = [sys.executable, "-S", "-c", _EPOCH, data, str(args.width), str(args.batch), str(args.steps),
               args.precision]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from bench.common import data_source, write_result

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    data = data_source()
    if data is None:
        sys.exit("bench/step_compare.py needs CIFAR-10: set DAWNPIPE_BENCH_DATA or place ../shared/data")
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), args.old], check=True,
                       capture_output=True)  # fmt: skip
        try:
            trees = {"old": old_tree, "new": ROOT}
            links = {}
            for name, tree in trees.items():
                links[name] = Path(tmp) / f"links-{name}"
                links[name].mkdir()
                (links[name] / "dawnpipe").symlink_to(tree, target_is_directory=True)
            _epoch(ROOT, links["new"], argparse.Namespace(**{**vars(args), "steps": 1}), data)  # decode data first
            figures: dict[str, list[float]] = {"old": [], "new": []}
            for r in range(args.rounds):
                for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                    figures[name].append(_epoch(trees[name], links[name], args, data))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], check=False)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    ratios = [n / o for n, o in zip(figures["new"], figures["old"], strict=True)]
    write_result(
        "step_compare",
        {
            "old_commit": args.old,
            "new_commit": head + (" (with uncommitted changes)" if _dirty() else ""),
            "width": args.width,
            "batch": args.batch,
            "steps_per_round": args.steps,
            "precision": args.precision,
            "statistic": "trainer images/s over one warm epoch per round, each tree in its own process",
            "old_images_per_s": figures["old"],
            "new_images_per_s": figures["new"],
            "new_over_old_per_round": ratios,
        },
    )
    print(json.dumps({"new_over_old_per_round": ratios}))


def _dirty() -> bool:
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
    return bool(status.stdout.strip())


if __name__ == "__main__":
    main()
