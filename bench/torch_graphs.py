"""torch eager against the graph-captured torch backend (``torch-graphs``) on one run, interleaved in one process.

    python bench/torch_graphs.py RUN_DIR [--rounds 5] [--threads 2]

On a GPU ``torch-graphs`` replays CUDA graphs; on a CPU it is ``torch.compile`` without graphs (dynamic batch),
which is what this measures here. Reported: the seconds the first calls took (compilation), then for TTA modes
none and flip at batch 1 (mean/p50/p99 per image) and at batch 256 (images/s) both backends' figures and the
graph-captured/eager ratio per round, all through the shared latency protocol.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from dawnpipe.infer.backends import load  # noqa: E402
from dawnpipe.infer.latency import Protocol, measure_rows  # noqa: E402
from dawnpipe.infer.modes import run_mode  # noqa: E402
from dawnpipe.train.checkpoint import load_checkpoint  # noqa: E402
from dawnpipe.train.data import load_cifar  # noqa: E402

MODES = ("none", "flip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    data = load_checkpoint(args.run_dir)["data"]
    images = load_cifar(data["source"], trusted_sha256=data["sha256"], test_limit=2048).test_x
    eager = load(args.run_dir, "torch", threads=args.threads)
    graphed = load(args.run_dir, "torch-graphs", threads=args.threads)
    compile_s = {}
    for batch in (1, 256):  # the first call at each size class compiles (batch 1 is specialised by dynamo)
        started = time.perf_counter()
        graphed.infer(images[:batch])
        compile_s[f"first_call_batch_{batch}"] = time.perf_counter() - started
    runs = {}
    for mode in MODES:
        runs[f"torch_{mode}"] = lambda x, m=mode: run_mode(eager, x, m)
        runs[f"torch-graphs_{mode}"] = lambda x, m=mode: run_mode(graphed, x, m)
    single = measure_rows(runs, images[:200], batch=1, protocol=Protocol(rounds=args.rounds))
    bulk = measure_rows(runs, images, batch=256, protocol=Protocol(args.rounds, 2, 0.0, 1))
    ratios = {
        mode: {
            "batch1_p50": single[f"torch-graphs_{mode}"].p50_ms / single[f"torch_{mode}"].p50_ms,
            "batch256_images_per_s": bulk[f"torch-graphs_{mode}"].images_per_s / bulk[f"torch_{mode}"].images_per_s,
            "batch256_per_round": [
                e / g
                for g, e in zip(
                    bulk[f"torch-graphs_{mode}"].round_p50_ms, bulk[f"torch_{mode}"].round_p50_ms, strict=True
                )
            ],
        }
        for mode in MODES
    }
    write_result(
        "torch_graphs",
        {
            "run": str(args.run_dir),
            "threads": args.threads,
            "graphs": graphed.describe().get("graphs"),
            "graph_notice": graphed.graph_notice,
            "precision": eager.precision,
            "first_call_seconds": compile_s,
            "batch1": {name: t.to_dict() for name, t in single.items()},
            "batch256_images_per_s": {name: t.images_per_s for name, t in bulk.items()},
            "graphed_over_eager": ratios,
            "images": "JPEG CIFAR-10 test images (first 2048, class-balanced)",
        },
    )
    eager.close()
    graphed.close()


if __name__ == "__main__":
    main()
