"""The GPU check in one command, built so that a 15-minute loan of a GPU cannot lose its figures.

    python bench/gpu.py --data build/gpu/cifar10-jpeg.tar.gz --out $OUT/gpu.json            # on the GPU
    python bench/gpu.py --data DIR --device cpu --smoke --out /tmp/gpu.json                 # anywhere, 1 epoch

Every step runs in its own process under its own time limit (a hang, a crash or an out-of-memory in one step
cannot take the others with it), and the JSON is rewritten (temporary name, then rename) after every step, so a
run killed at any point leaves every finished step's figures. ``--skip a,b`` leaves steps out. Steps, cheapest
evidence first:

- environment: nvidia-smi, the CPU and its flags, torch, CUDA, cuDNN, Triton, onnxruntime versions;
- data: decode and cache the data set once (later steps read the cache);
- train_graph, train_eager, train_compiled: the step captured as a CUDA graph (the default), eager, and
  torch.compile'd (its compile cache saved by the cold run and loaded by the warm one); the page recipe
  (10 epochs; ``--smoke``: 1 epoch on 2,048 images), fp16 on CUDA,
  each run twice in its own process: cold (process start to the first trained, written run) and warm (the same
  run again in that process, as airbench94 times itself), reporting the first epoch apart from the steady state
  (median images/s of epochs 2..N), effective TFLOP/s
  (3 x forward FLOPs x images / steady seconds), whether the compiled run really ran compiled, and the
  non-finite steps the fp16 loss scaling skipped;
- graph_agreement: the captured training step against the eager one, 4 steps in fp32 (TF32 off) from one seed,
  the largest relative weight difference;
- inference: torch eager and graph-captured, every TTA mode, batch-1 latency under the shared protocol and
  throughput at batch 512;
- exactness: fp32 on the device against fp32 on the CPU, 1,000 images;
- ddp: torchrun at world size 1 (NCCL on CUDA), under a 180 s limit with the collective timeout (120 s) below it;
- onnxruntime_cuda, tensorrt: fp16 ONNX (recorded in the run's manifest) on onnxruntime's CUDA provider and as a
  TensorRT engine, timed with the shared protocol, or skipped with the reason;
- airbench: bench/airbench.py, airbench94 0.1.8 on the same data, a warm-up then ``--airbench-runs`` runs.
bench/README.md gives the exact command for the lent GPU machine (no install, data carried, results to $OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = (
    "environment",
    "data",
    "train_graph",
    "train_eager",
    "train_compiled",
    "graph_agreement",
    "ghost_bn",
    "inference",
    "exactness",
    "ddp",
    "onnxruntime_cuda",
    "tensorrt",
    "airbench",
)
LIMITS_S = {  # per step on the GPU; --smoke on a CPU uses SMOKE_LIMITS_S
    "environment": 60,
    "data": 240,
    "train_graph": 150,
    "train_eager": 150,
    "train_compiled": 300,
    "graph_agreement": 90,
    "ghost_bn": 90,
    "inference": 240,
    "exactness": 90,
    "ddp": 180,
    "onnxruntime_cuda": 180,
    "tensorrt": 240,
    "airbench": 240,
}
SMOKE_LIMITS_S = {name: 300 for name in STEPS}
DDP_COLLECTIVE_TIMEOUT_S = 120  # below the DDP step's own limit, so NCCL's error arrives before the kill
_RESULT = "@@gpu.py-result@@ "  # a step's stdout line carrying its JSON result


def main() -> int:
    args = _parse()
    if args.run_step:
        return _child(args)
    problem = _check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="dawnpipe-gpu-"))
    report: dict = {
        "command": sys.argv,
        "device": args.device,
        "smoke": args.smoke,
        "steps": {},
        "started": time.time(),
    }
    _write(args.out, report)
    limits = SMOKE_LIMITS_S if args.smoke else LIMITS_S
    for name in STEPS:
        if name in args.skip:
            report["steps"][name] = {"status": "skipped", "reason": "--skip"}
        else:
            print(f"[gpu.py] {name} (limit {limits[name]} s)", file=sys.stderr, flush=True)
            report["steps"][name] = _run_step(name, args, work, limits[name])
            print(f"[gpu.py] {name}: {report['steps'][name]['status']}", file=sys.stderr, flush=True)
        report["seconds"] = time.time() - report["started"]
        _write(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (the problem and where to look), not usage text."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message}; see `python bench/gpu.py --help`\n")


def _parse() -> argparse.Namespace:
    parser = _OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 in any form dawnpipe reads (no network there)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON written after every step")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="1 epoch on 2,048 images, short timings")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to leave out, from {', '.join(STEPS)}")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", default=None, help="scratch folder for run folders (default: a new temp folder)")
    parser.add_argument("--airbench-runs", type=int, default=5)
    parser.add_argument("--airbench-source", default=None, help="airbench-0.1.8.tar.gz (see bench/airbench.py)")
    parser.add_argument("--run-step", default=None, help=argparse.SUPPRESS)  # internal: run one step here
    args = parser.parse_args()
    args.skip = tuple(s.strip() for s in args.skip.split(",") if s.strip())
    return args


def _check(args: argparse.Namespace) -> str | None:
    """Every option, before any work: an unknown step, an --out that cannot be written, a missing --data."""
    unknown = [s for s in args.skip if s not in STEPS]
    if unknown:
        return f"unknown --skip step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}"
    if not Path(args.data).exists():
        return f"--data {args.data} does not exist; copy the data next to the checkout (bench/README.md)"
    if args.epochs < 1 or args.airbench_runs < 1:
        return "--epochs and --airbench-runs must be at least 1"
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        probe = args.out.parent / f".{args.out.name}.probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        return f"--out {args.out} cannot be written ({err.strerror}); pass a writable path"
    if args.out.exists() and args.out.is_dir():
        return f"--out {args.out} is a folder; pass a file path"
    if args.device == "cuda" and "environment" not in args.skip:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to PyTorch here; pass --device cpu --smoke to check the plumbing"
    return None


def _write(out: Path, report: dict) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)


def _run_step(name: str, args: argparse.Namespace, work: Path, limit: float) -> dict:
    """One step in its own process under ``limit`` seconds: its result, or the error with the tail of stderr."""
    command = [sys.executable, str(Path(__file__).resolve()), "--run-step", name, "--data", args.data, "--out",
               str(args.out), "--device", args.device, "--epochs", str(args.epochs), "--work", str(work),
               "--airbench-runs", str(args.airbench_runs)]  # fmt: skip
    command += ["--smoke"] if args.smoke else []
    command += ["--airbench-source", args.airbench_source] if args.airbench_source else []
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as err:
        return {"status": "timeout", "seconds": limit, "stderr_tail": _tail(err.stderr)}
    seconds = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode == 0 and lines:
        result = json.loads(lines[-1][len(_RESULT) :])
        status = "skipped" if set(result) == {"skipped"} else "ok"
        return {"status": status, "seconds": seconds, "result": result}
    return {"status": "error", "seconds": seconds, "returncode": done.returncode, "stderr_tail": _tail(done.stderr)}


def _tail(text: str | bytes | None, lines: int = 25) -> list[str]:
    """What stderr says about a failure: dawnpipe's own one-line errors (a torchrun rank prints its own before
    torchrun's summary buries it), then the last lines, torchrun's ===== banners and blank lines dropped."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    kept = [ln for ln in (text or "").splitlines() if ln.strip() and not set(ln.strip()) <= set("=-*")]
    ours = [ln for ln in kept if ln.startswith("error: ")]
    return ours[-5:] + [ln for ln in kept[-lines:] if ln not in ours]


def _child(args: argparse.Namespace) -> int:
    from bench.gpu_steps import run_step

    result = run_step(args.run_step, args)
    print(_RESULT + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.path.insert(0, str(ROOT))  # bench.gpu_steps; dawnpipe itself comes from PYTHONPATH or an install
    sys.exit(main())
