"""Paired accuracy difference between two sets of run folders (same seeds, same test images), per TTA mode.

    python bench/paired_runs.py --new runs/quick-i45-s0 runs/quick-i45-s1 --old runs/quick-new-s0 runs/quick-new-s1
    python bench/paired_runs.py --new docs/results/entrants/airbench94-s0-fp16 \
        --old docs/results/entrants/airbench94-s0 --backend onnxruntime --new-precision fp16 --old-precision fp32

Each folder's ``eval.json`` (``dawnpipe eval RUN --tta none,flip --no-latency``) holds one bit per test image for
each mode; the folders pair in the order given (seed with seed), each test image counts once (seeds add spread, not
sample size: costs.stats.paired_difference), and every row must name the same test-image sha256. Rows are taken
from one backend (torch unless ``--backend``) and, where given, one precision per side. Used for issue 45's check
that the rebuilt training step trains as the step before it, and for a float16 import against its float32 source.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rows(folder: Path, backend: str, precision: str | None) -> dict[str, dict]:
    """The folder's eval rows of ``backend`` (and ``precision``), by TTA mode; refused where a mode has two."""
    rows = [
        r for r in json.loads((folder / "eval.json").read_text())["rows"]
        if r["backend"] == backend and precision in (None, r["precision"])
    ]  # fmt: skip
    by_mode = {r["tta"]: r for r in rows}
    if len(by_mode) != len(rows):
        raise SystemExit(f"error: {folder} has several {backend} rows per mode; name the precision to compare")
    return by_mode


def compare(new: list[Path], old: list[Path], backend: str = "torch", precisions: tuple = (None, None)) -> dict:
    """{mode: {per-seed accuracies, the pooled paired difference and its 95% interval}} over modes both sides have."""
    import numpy as np

    from dawnpipe.costs.stats import paired_difference
    from dawnpipe.infer.scoring import unpack_bits

    if len(new) != len(old) or not new:
        raise SystemExit("error: give the same number (>= 1) of --new and --old folders, seed against seed")
    new_rows = [_rows(f, backend, precisions[0]) for f in new]
    old_rows = [_rows(f, backend, precisions[1]) for f in old]
    modes = sorted(set.intersection(*(set(r) for r in new_rows + old_rows)))
    result = {}
    for mode in modes:
        pairs = [(n[mode], o[mode]) for n, o in zip(new_rows, old_rows, strict=True)]
        if len({r["test_images_sha256"] for pair in pairs for r in pair}) != 1:
            raise SystemExit(f"error: the {mode} rows were scored on different test images; score both on one set")
        a = [unpack_bits(n["correct_bits"], n["images"]).astype(np.float64) for n, _ in pairs]
        b = [unpack_bits(o["correct_bits"], o["images"]).astype(np.float64) for _, o in pairs]
        d = paired_difference(a, b)
        result[mode] = {
            "new_accuracy_by_pair": [n["accuracy"] for n, _ in pairs],
            "old_accuracy_by_pair": [o["accuracy"] for _, o in pairs],
            "difference_points": 100 * d.difference,
            "ci95_points": [100 * d.low, 100 * d.high],
            "method": d.method,
            "images": d.images,
            "seed_pairs": d.seed_pairs,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=Path, nargs="+", required=True)
    parser.add_argument("--old", type=Path, nargs="+", required=True)
    parser.add_argument("--backend", default="torch", help="the rows' backend (torch, onnxruntime, openvino, ...)")
    parser.add_argument("--new-precision", default=None, help="only the --new rows of this precision")
    parser.add_argument("--old-precision", default=None, help="only the --old rows of this precision")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {
        "new": [str(p) for p in args.new],
        "old": [str(p) for p in args.old],
        "backend": args.backend,
        "precisions": {"new": args.new_precision, "old": args.old_precision},
        "modes": compare(args.new, args.old, args.backend, (args.new_precision, args.old_precision)),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
