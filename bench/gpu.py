"""The one-command GPU check: `python bench/gpu.py [--data PATH] [--out FILE] [--epochs N]`.

On a CUDA machine, in a few minutes, writes one JSON with:
- 10-epoch fp16 training (training seconds, images/s, EMA accuracy plain and flip), eager and compiled;
- torch CUDA inference per TTA mode: batch-1 latency under the shared protocol, throughput at batch 512;
- fp32 exactness: the CUDA fp32 reference (TF32 off) against the CPU reference on the same images;
- DDP on one GPU through torchrun (world size 1, NCCL), a 1-epoch run;
- onnxruntime CUDA and TensorRT rows where those packages exist, else skipped with the reason.
It needs only PyTorch, numpy, onnx and the CPU onnxruntime. On a machine without CUDA it exits with one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train(data: str | None, epochs: int, out: Path, name: str, compile: bool = False) -> dict:
    from dawnpipe.train.api import config_from_options
    from dawnpipe.train.trainer import train

    cfg = config_from_options(
        data=data, epochs=epochs, out=out, name=name, device="cuda", eval_every=epochs, compile=compile
    )
    result = train(cfg, progress=False)
    m = result.metrics
    return {
        "run": str(result.run_dir),
        "epochs": epochs,
        "train_seconds": m["train_seconds"],
        "train_images_per_s": m["train_images_per_s"],
        "ema_test_acc": m["ema_test_acc"],
        "ema_test_acc_flip": m["ema_test_acc_flip"],
    }


def _inference(run: str, images) -> dict:
    from dawnpipe.common.tta import ALL_MODES
    from dawnpipe.infer.backends import load
    from dawnpipe.infer.latency import Protocol, measure_rows
    from dawnpipe.infer.modes import run_mode

    rows = {}
    with load(run, device="cuda") as model:
        runs = {m: (lambda x, m=m: run_mode(model, x, m)) for m in ALL_MODES}
        single = measure_rows(runs, images[:200], batch=1, protocol=Protocol(), sync=model.synchronize)
        bulk = measure_rows(
            runs, images, batch=512, protocol=Protocol(calls=3, min_seconds=0.0, warmup=2), sync=model.synchronize
        )
        for mode in ALL_MODES:
            rows[mode] = {
                "precision": model.precision,
                "batch1": single[mode].to_dict(),
                "images_per_s_at_512": bulk[mode].images_per_s,
            }
    return rows


def _exactness(run: str, images) -> dict:
    import numpy as np

    from dawnpipe.infer.backends import load

    with load(run, device="cuda", precision="fp32") as gpu, load(run, device="cpu", precision="fp32") as cpu:
        a, b = gpu.infer(images[:1000]), cpu.infer(images[:1000])
    return {
        "max_abs_logit_diff": float(np.abs(a - b).max()),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
    }


def _ddp(data: str | None, out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "dawnpipe",
        "train",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--name",
        "ddp",
        "--device",
        "cuda",
    ]
    if data:
        command += ["--data", data]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    return {
        "returncode": done.returncode,
        "seconds": time.perf_counter() - started,
        "last_line": (done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""])[-1],
    }


def _onnxruntime_cuda(run: str, images) -> dict:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"onnxruntime has no CUDA provider here (available: {ort.get_available_providers()})"}
    from dawnpipe.export.api import export_onnx_model, load_source
    from dawnpipe.infer.backends import load

    onnx = export_onnx_model(load_source(run), Path(run), precision="fp16")
    with load(onnx.path, provider="cuda") as model:
        t0 = time.perf_counter()
        model.infer(images)
        model.synchronize()
        return {"provider": model.provider, "images_per_s": len(images) / (time.perf_counter() - t0)}


def _tensorrt(run: str, images) -> dict:
    if importlib.util.find_spec("tensorrt") is None:
        return {"skipped": "TensorRT is not installed (import tensorrt fails)"}
    from dawnpipe.export.api import build_engine_artifact, export_onnx_model, load_source
    from dawnpipe.infer.backends import load

    onnx = export_onnx_model(load_source(run), Path(run), precision="fp16")
    engine = build_engine_artifact(onnx, Path(run))
    with load(engine.path) as model:
        t0 = time.perf_counter()
        model.infer(images)
        return {"engine": engine.path.name, "images_per_s": len(images) / (time.perf_counter() - t0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: the official archive via the cache)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU is visible to PyTorch here; run it on a GPU machine", file=sys.stderr)
        return 1
    from dawnpipe.train.data import load_cifar

    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "started": time.time()}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        report["train_eager"] = _train(args.data, args.epochs, out, "eager")
        report["train_compiled"] = _train(args.data, args.epochs, out, "compiled", compile=True)
        run = report["train_eager"]["run"]
        images = load_cifar(args.data).test_x
        for name, step in (
            ("inference_torch_cuda", lambda: _inference(run, images)),
            ("fp32_exactness_vs_cpu", lambda: _exactness(run, images)),
            ("ddp_one_gpu", lambda: _ddp(args.data, out)),
            ("onnxruntime_cuda", lambda: _onnxruntime_cuda(run, images)),
            ("tensorrt", lambda: _tensorrt(run, images)),
        ):
            try:
                report[name] = step()
            except Exception as err:  # one part failing must not lose the others' figures
                report[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    report["seconds"] = time.time() - report["started"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
