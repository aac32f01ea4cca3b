"""The steps of bench/gpu.py, each run in its own process by ``run_step(name, args)`` (bench/gpu.py's docstring).

Run folders go to ``args.work``: train_eager writes ``eager/``, which the later steps evaluate. Every figure names
its device, precision and statistic.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRAIN, SMOKE_TEST, SMOKE_WIDTH, SMOKE_BATCH = 2048, 512, 0.125, 64  # --smoke: the plumbing only (the width
# of the test suite's models, so a CPU run reuses the compilations the suite has cached)


def run_step(name: str, args: Any) -> dict[str, Any]:
    """One step's result (a JSON-able dict); a step that cannot run here says skipped and why."""
    return _STEPS[name](args, Path(args.work))


def _environment(args: Any, work: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from dawnpipe.common.machine import cpu_features

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": props.total_memory / 2**30,
            "sm": f"{props.major}.{props.minor}",
        }
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.splitlines()[:20]
    return info


def _data(args: Any, work: Path) -> dict[str, Any]:
    from dawnpipe.train.data import load_cifar

    started = time.perf_counter()
    data = load_cifar(args.data)
    return {
        "source": args.data,
        "sha256": data.source_sha256,
        "train_images": len(data.train_y),
        "test_images": len(data.test_y),
        "seconds": time.perf_counter() - started,
        "note": "decoded once and cached; later steps read the cache",
    }


def _train(args: Any, work: Path, mode: str) -> dict[str, Any]:
    """One training step of the check: ``mode`` eager (no CUDA graph), graph (the default CUDA path: the step
    captured and replayed) or compiled (torch.compile, its cache saved and, on the warm run, loaded)."""
    from dawnpipe.export.flops import artifact_flops
    from dawnpipe.train.api import config_from_options
    from dawnpipe.train.trainer import train

    options: dict[str, Any] = dict(data=args.data, epochs=args.epochs, out=work, device=args.device, overwrite=True)
    if args.smoke:
        options.update(
            epochs=1, train_limit=SMOKE_TRAIN, test_limit=SMOKE_TEST, width=SMOKE_WIDTH, batch_size=SMOKE_BATCH
        )
    name, compiled = mode, mode == "compiled"
    options.update(compile=compiled, cuda_graph=mode == "graph")
    cfg = config_from_options(name=name, eval_every=1, **options)
    result = train(cfg, progress=False)
    cold = _process_seconds()  # process start to a trained, evaluated, written run: what a user's first run waits
    # the same run again in this process, as airbench94 times itself after a warm-up run: the kernels, cuDNN's
    # choices, the allocator's pool and (compiled) the graphs are there already
    again = train(config_from_options(name=f"{name}-warm", eval_every=1, **options), progress=False)
    w = again.metrics
    m = result.metrics
    forward = artifact_flops(result.run_dir).model_flops  # per image, the deployed graph (conv, linear, the rest)
    steady = m.get("steady_images_per_s")
    epochs = json.loads((result.run_dir / "manifest.json").read_text())["runs"]["train"]["config"]["epochs"]
    return {
        "run": str(result.run_dir),
        "recipe": "page (post 8)" + (" at smoke size" if args.smoke else ""),
        "epochs": epochs,
        "precision": json.loads((result.run_dir / "manifest.json").read_text())["runs"]["train"]["device"]["precision"],
        "train_seconds": m["train_seconds"],
        "warmup_seconds": m.get("warmup_seconds"),  # untimed warm-up steps (3 on CUDA), outside train_seconds
        "wall_seconds": m.get("wall_seconds"),  # train() called to its manifest written (data, model, eval)
        "cold_seconds": cold,
        "cold_statistic": "process start (imports included) to the first run's manifest written, this step's process",
        "warm": {
            "train_seconds": w["train_seconds"],
            "warmup_seconds": w.get("warmup_seconds"),
            "wall_seconds": w.get("wall_seconds"),
            "ema_test_acc_flip": w["ema_test_acc_flip"],
            "statistic": "a second run of the same config in the same process, after the first (airbench's way)",
        },
        "first_epoch_seconds": m["first_epoch_seconds"],
        "steady_images_per_s": steady,
        "train_images_per_s_overall": m["train_images_per_s"],
        "forward_gflops_per_image": forward / 1e9,
        "effective_tflops_steady": 3 * forward * steady / 1e12 if steady else None,
        "effective_tflops_statistic": "3 x forward FLOPs x images / second, median epoch of 2..N",
        "ema_test_acc": m["ema_test_acc"],
        "ema_test_acc_flip": m["ema_test_acc_flip"],
        "compiled": m.get("compiled"),
        "step": m.get("step"),  # whether the CUDA graph was captured and replayed, or why not
        "warm_compile_cache": (w.get("compiled") or {}).get("cache"),  # compiled: the warm run loaded the cache
        "skipped_nonfinite_steps": m.get("skipped_nonfinite_steps", "not applicable (no fp16 loss scaling)"),
    }


def _process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat's start time against /proc/uptime), the cold
    clock's origin; None where the OS does not say."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks after boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def _inference(args: Any, work: Path) -> dict[str, Any]:
    from dawnpipe.common.tta import ALL_MODES
    from dawnpipe.infer.backends import load
    from dawnpipe.infer.latency import Protocol, measure_rows
    from dawnpipe.infer.modes import run_mode
    from dawnpipe.train.data import load_cifar

    images = load_cifar(args.data, test_limit=SMOKE_TEST if args.smoke else None).test_x
    # smoke: the two modes the step's ratios need (each further mode adds compile time on a CPU; the dynamic batches
    # selective modes rely on are checked graph-captured in tests/infer/test_torch_backend.py)
    modes = ("none", "flip") if args.smoke else ALL_MODES
    single_protocol = Protocol(rounds=1, calls=3, min_seconds=0.0, warmup=1) if args.smoke else Protocol()
    bulk_protocol = Protocol(rounds=1 if args.smoke else 5, calls=3, min_seconds=0.0, warmup=2)
    bulk_batch = 4 if args.smoke else 512  # smoke: 4 and its flip's 8 share one CPU compilation with batch 2
    rows: dict[str, Any] = {}
    for graphs in (False, True):
        with load(work / "eager", device=args.device, graphs=graphs) as model:
            runs = {m: (lambda x, m=m: run_mode(model, x, m)) for m in modes}
            single = measure_rows(runs, images[:200], batch=1, protocol=single_protocol, sync=model.synchronize)
            bulk = measure_rows(runs, images, batch=bulk_batch, protocol=bulk_protocol, sync=model.synchronize)
            rows[model.name] = {
                "precision": model.precision,
                "describe": model.describe().get("graphs", "eager"),
                "graph_notice": getattr(model, "graph_notice", None),
                "modes": {
                    m: {"batch1": single[m].to_dict(), f"images_per_s_at_{bulk_batch}": bulk[m].images_per_s}
                    for m in modes
                },  # fmt: skip
            }
    eager, graphed = rows["torch"]["modes"]["none"], rows["torch-graphs"]["modes"]["none"]
    rows["graph_vs_eager_batch1_p50"] = graphed["batch1"]["p50_ms"] / eager["batch1"]["p50_ms"]
    rows["flip_vs_none_batch1_p50"] = {
        name: rows[name]["modes"]["flip"]["batch1"]["p50_ms"] / rows[name]["modes"]["none"]["batch1"]["p50_ms"]
        for name in ("torch", "torch-graphs")
    }
    rows["statistic"] = (
        f"per image ms at batch 1 (one distinct image per call), shared protocol; images/s at {bulk_batch}"
    )
    return rows


def _graph_agreement(args: Any, work: Path) -> dict[str, Any]:
    """The captured step against the eager step: the same seed, one epoch of 2,048 images (4 steps of 512; smoke: 32
    of 64 at width 0.125) in fp32 with TF32 off, once each way, then the largest weight difference relative to the
    tensor's scale. A replay reading a stale learning rate, a missed EMA update or gradients accumulated across
    replays would differ by far more than cuDNN's nondeterministic backward kernels do."""
    import torch

    from dawnpipe.train.api import config_from_options
    from dawnpipe.train.checkpoint import load_checkpoint
    from dawnpipe.train.trainer import train

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    options: dict[str, Any] = dict(data=args.data, epochs=1, train_limit=SMOKE_TRAIN, test_limit=SMOKE_TEST,
                                   precision="fp32", out=work, device=args.device, holdout=0,
                                   overwrite=True)  # fmt: skip
    if args.smoke:
        options.update(width=SMOKE_WIDTH, batch_size=SMOKE_BATCH)
    runs = {mode: train(config_from_options(name=f"agree-{mode}", cuda_graph=mode == "graph", **options),
                        progress=False) for mode in ("graph", "eager")}  # fmt: skip
    loaded = {mode: load_checkpoint(r.checkpoint) for mode, r in runs.items()}
    graph, eager = loaded["graph"], loaded["eager"]
    worst, where = 0.0, None
    for key, value in eager["model"].items():
        if value.is_floating_point():
            gap = float((graph["model"][key] - value).abs().max() / value.abs().max().clamp_min(1e-12))
            if gap >= worst:
                worst, where = gap, key
    return {
        "graph_ran": runs["graph"].metrics["step"]["cuda_graph"],
        "graph_notice": runs["graph"].metrics["step"]["notice"],
        "max_relative_weight_diff": worst,
        "at": where,
        "train_loss": {mode: state["metrics"]["epochs"][0]["train_loss"] for mode, state in loaded.items()},
        "note": "fp32, TF32 off, same seed and data order; relative to each tensor's largest magnitude",
    }


def _ghost_bn(args: Any, work: Path) -> dict[str, Any]:
    """Ghost BN's kernels on the real layer shapes (bench/ghost_bn.py): the library's gathered group norm against the
    copy-free candidate, the per-group batch norm and plain BN's floor, fp16 at batch 512 (smoke: fp32, tiny)."""
    from bench.ghost_bn import measure

    if args.smoke:
        return measure(args.device, "fp32", width=SMOKE_WIDTH, batch=SMOKE_BATCH, rounds=2, calls=2)
    return measure(args.device, "fp16", width=1.0, batch=512, rounds=5, calls=10)


def _exactness(args: Any, work: Path) -> dict[str, Any]:
    import numpy as np

    from dawnpipe.infer.backends import load
    from dawnpipe.train.data import load_cifar

    images = load_cifar(args.data, test_limit=SMOKE_TEST if args.smoke else None).test_x[:1000]
    with (
        load(work / "eager", device=args.device, precision="fp32") as dev,
        load(work / "eager", device="cpu", precision="fp32") as cpu,
    ):
        a, b = dev.infer(images), cpu.infer(images)
    return {
        "device": args.device,
        "images": len(images),
        "max_abs_logit_diff": float(np.abs(a - b).max()),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "note": "fp32 with TF32 off on both sides",
    }


def _ddp(args: Any, work: Path) -> dict[str, Any]:
    from bench.gpu import DDP_COLLECTIVE_TIMEOUT_S, _tail
    from dawnpipe.train.distributed import TIMEOUT_ENV

    epochs = 1 if args.smoke else 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
               "dawnpipe", "train", "--data", args.data, "--epochs", str(epochs), "--out", str(work), "--name", "ddp",
               "--device", args.device, "--eval-every", str(epochs), "--overwrite"]  # fmt: skip
    if args.smoke:
        command += ["--train-limit", str(SMOKE_TRAIN), "--test-limit", str(SMOKE_TEST), "--width", str(SMOKE_WIDTH)]
        command += ["--batch-size", str(SMOKE_BATCH)]
    env = {**os.environ, TIMEOUT_ENV: str(DDP_COLLECTIVE_TIMEOUT_S)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=170)
    result: dict[str, Any] = {"returncode": done.returncode, "seconds": time.perf_counter() - started}
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: " + " | ".join(_tail(done.stderr, lines=8)))
    ddp = json.loads((work / "ddp" / "manifest.json").read_text())["runs"]["train"]
    epochs_run = ddp["metrics"]
    single = work / "eager" / "manifest.json"
    result.update(backend="nccl" if args.device == "cuda" else "gloo", world_size=ddp["world_size"], metrics=epochs_run)
    if single.exists() and epochs_run.get("steady_images_per_s"):
        eager = json.loads(single.read_text())["runs"]["train"]["metrics"]
        if eager.get("steady_images_per_s"):
            result["steady_images_per_s_vs_single_process"] = (
                epochs_run["steady_images_per_s"] / eager["steady_images_per_s"]
            )
    return result


def _onnxruntime_cuda(args: Any, work: Path) -> dict[str, Any]:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {"skipped": f"onnxruntime has no CUDA provider here ({onnxruntime.get_available_providers()})"}
    onnx = _recorded_export(work / "eager", "fp16")
    return _timed(onnx, args, provider="cuda")


def _tensorrt(args: Any, work: Path) -> dict[str, Any]:
    from dawnpipe.common.errors import DawnpipeError
    from dawnpipe.export.tensorrt_build import tensorrt_status

    try:
        tensorrt_status()
    except DawnpipeError as err:
        return {"skipped": str(err)}
    from dawnpipe.export.api import Artifact, build_engine_artifact, load_source, record

    run = work / "eager"
    onnx = _recorded_export(run, "fp16")
    engine = build_engine_artifact(Artifact(onnx, {}), run)
    record(run, load_source(run), [engine], {"bench": "gpu.py tensorrt"})
    return {"engine": engine.path.name, **_timed(engine.path, args)}


def _recorded_export(run: Path, precision: str) -> Path:
    """An export written and recorded in the run's manifest (so load()'s lineage check accepts it)."""
    from dawnpipe.export.api import export_onnx_model, load_source, record

    source = load_source(run)
    artifact = export_onnx_model(source, run, precision=precision)
    record(run, source, [artifact], {"bench": f"gpu.py {precision}"})
    return artifact.path


def _timed(artifact: Path, args: Any, provider: str = "auto") -> dict[str, Any]:
    """Warmed calls of every TTA mode under the shared latency protocol."""
    from dawnpipe.common.tta import ALL_MODES
    from dawnpipe.infer.backends import load
    from dawnpipe.infer.latency import Protocol, measure_rows
    from dawnpipe.infer.modes import run_mode
    from dawnpipe.train.data import load_cifar

    images = load_cifar(args.data, test_limit=SMOKE_TEST if args.smoke else None).test_x
    with load(artifact, provider=provider) as model:
        runs = {m: (lambda x, m=m: run_mode(model, x, m)) for m in ALL_MODES}
        protocol = Protocol(rounds=1, calls=3, min_seconds=0.0, warmup=1) if args.smoke else Protocol()
        single = measure_rows(runs, images[:200], batch=1, protocol=protocol, sync=model.synchronize)
        return {"backend": model.describe(), "batch1": {m: single[m].to_dict() for m in ALL_MODES}}


def _airbench(args: Any, work: Path) -> dict[str, Any]:
    out = work / "airbench.json"
    command = [sys.executable, str(ROOT / "bench" / "airbench.py"), "--data", args.data, "--device", args.device,
               "--runs", "1" if args.smoke else str(args.airbench_runs), "--out", str(out)]  # fmt: skip
    command += ["--smoke"] if args.smoke else []
    source = args.airbench_source or _carried_sdist()
    if source:
        command += ["--source", source]
    done = subprocess.run(command, capture_output=True, text=True, timeout=230)
    if done.returncode != 0:
        from bench.gpu import _tail

        raise RuntimeError(f"bench/airbench.py exited {done.returncode}: " + " | ".join(_tail(done.stderr, lines=8)))
    return json.loads(out.read_text())


def _carried_sdist() -> str | None:
    """The airbench sdist where bench/README.md carries it (build/gpu/), if it is there."""
    path = ROOT / "build" / "gpu" / "airbench-0.1.8.tar.gz"
    return str(path) if path.is_file() else None


_STEPS = {
    "environment": _environment,
    "data": _data,
    "train_graph": lambda args, work: _train(args, work, "graph"),
    "train_eager": lambda args, work: _train(args, work, "eager"),
    "train_compiled": lambda args, work: _train(args, work, "compiled"),
    "graph_agreement": _graph_agreement,
    "ghost_bn": _ghost_bn,
    "inference": _inference,
    "exactness": _exactness,
    "ddp": _ddp,
    "onnxruntime_cuda": _onnxruntime_cuda,
    "tensorrt": _tensorrt,
    "airbench": _airbench,
}
