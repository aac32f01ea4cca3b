"""airbench94 beside dawnpipe: the published recipe (PyPI ``airbench`` 0.1.8, unchanged) on dawnpipe's data.

    python bench/airbench.py --data ../shared/data/cifar10-jpeg.tar.gz --runs 5 --out F.json   # on a GPU
    python bench/airbench.py --data DIR --device cpu --smoke --out F.json                       # anywhere

What is adapted, and nothing else:
- data loading: airbench reads ``cifar10/train.pt`` and ``cifar10/test.pt`` from its working directory (and would
  download CIFAR-10 through torchvision when they are missing); this script writes them from the data dawnpipe
  trains on (uint8 NHWC images, labels, classes: airbench's own format), in a scratch folder it runs in;
- device plumbing, on a CPU only (``--device cpu``): airbench moves everything to CUDA in half precision and times
  with CUDA events; on a CPU the moves are identities, half precision stays fp32 (CPU half convolutions are
  emulated) and the events read the wall clock. Where torchvision cannot be imported (this project's CPU
  machines), its one used piece, ``transforms.Normalize``, is given by a stand-in with the same arithmetic.
The recipe (network, hyperparameters, schedule, lookahead, TTA) is airbench's, called through ``warmup94`` and
``train94``. Its own printed time and TTA accuracy are what is reported, per run after one warm-up.

The package comes from, in order: an installed ``airbench`` 0.1.8, or ``--source`` (the sdist .tar.gz, checked
against the sha256 below, or its unpacked folder). ``pip download airbench==0.1.8 --no-deps --no-binary :all:``
fetches the sdist; bench/README.md says how it travels to a GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

SDIST = "airbench-0.1.8.tar.gz"
SDIST_SHA256 = "f85885d8afe9018b8da132a4224ad7b47d75c9f99fd985d0a687567a25cf4a33"  # PyPI's file, checked on use
PUBLISHED = {"tta_accuracy": 0.9401, "seconds": 3.83, "gpu": "A100", "pflop": 0.36}  # airbench's README (0.1.8)


def import_airbench(source: str | None) -> tuple[types.ModuleType, str]:
    """(airbench 0.1.8, which torchvision it uses): installed, or from ``source`` (the checked sdist, or its
    unpacked folder)."""
    vision = _torchvision_or_stand_in()
    if source:
        path = Path(source)
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != SDIST_SHA256:
                raise SystemExit(f"error: {path} is not PyPI's {SDIST} (sha256 {digest[:12]}...); download it again")
            target = Path(tempfile.mkdtemp(prefix="airbench-src-"))
            with tarfile.open(path) as tar:
                tar.extractall(target, filter="data")
            path = target / "airbench-0.1.8"
        sys.path.insert(0, str(path))
    airbench = _import_package("airbench")
    if airbench is None:
        raise SystemExit(
            "error: airbench 0.1.8 is not installed and no --source was given; pip download airbench==0.1.8 "
            "--no-deps --no-binary :all: and pass --source airbench-0.1.8.tar.gz"
        )
    return airbench, vision


def _import_package(name: str) -> types.ModuleType | None:
    """The installed package ``name``, never this script: run as ``python bench/airbench.py`` (or imported by
    bench/gpu.py) the script's own folder is first on sys.path, and ``import airbench`` would find this file."""
    import importlib

    here = Path(__file__).resolve().parent
    mine = sys.modules.get(name)
    if mine is not None and Path(getattr(mine, "__file__", "") or "").resolve().parent == here:
        del sys.modules[name]  # this script, imported under the package's name
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
    finally:
        sys.path[:] = saved


def _torchvision_or_stand_in() -> str:
    """The real torchvision, or a stand-in for the one piece airbench 0.1.8 uses once its data files exist."""
    try:
        import torchvision  # noqa: F401

        return "torchvision"
    except Exception:  # not installed, or installed for another torch (it fails to import then)
        pass
    import torch

    class Normalize(torch.nn.Module):  # torchvision.transforms.Normalize's arithmetic on NCHW tensors
        def __init__(self, mean, std):
            super().__init__()
            self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

        def forward(self, x):
            mean = self.mean.to(x.device, x.dtype).view(-1, 1, 1)
            return (x - mean) / self.std.to(x.device, x.dtype).view(-1, 1, 1)

    def no_download(*_args, **_kwargs):
        raise RuntimeError("the stand-in torchvision cannot download; the data files are written before training")

    vision = types.ModuleType("torchvision")
    vision.transforms = types.ModuleType("torchvision.transforms")
    vision.transforms.Normalize = Normalize
    vision.datasets = types.ModuleType("torchvision.datasets")
    vision.datasets.CIFAR10 = no_download
    sys.modules.update({"torchvision": vision, "torchvision.transforms": vision.transforms})
    sys.modules["torchvision.datasets"] = vision.datasets
    return "stand-in (transforms.Normalize only)"


def write_data(data: str, folder: Path, smoke: bool = False) -> dict:
    """dawnpipe's data as airbench's cifar10/train.pt and test.pt (its format: uint8 NHWC images, labels, classes);
    ``smoke``: 1,024 training images (tiled when there are fewer: one airbench batch) and at most 512 test
    images, class-balanced."""
    import numpy as np
    import torch

    from dawnpipe.train.data import balanced_subset, load_cifar

    cifar = load_cifar(data)
    splits = {"train": (cifar.train_x, cifar.train_y), "test": (cifar.test_x, cifar.test_y)}
    (folder / "cifar10").mkdir(parents=True, exist_ok=True)
    for split, (x, y) in splits.items():
        if smoke:
            size = 1024 if split == "train" else 512
            keep = balanced_subset(y, min(len(y), size))
            keep = np.resize(keep, max(len(keep), size) if split == "train" else len(keep))  # tiled: one batch
            x, y = x[keep], y[keep]
        record = {"images": torch.from_numpy(x), "labels": torch.from_numpy(y), "classes": list(cifar.classes)}
        torch.save(record, folder / "cifar10" / f"{split}.pt")
        splits[split] = (x, y)
    return {"source": data, "sha256": cifar.source_sha256, **{k: len(v[1]) for k, v in splits.items()}}


@contextlib.contextmanager
def cpu_plumbing(airbench: types.ModuleType):
    """airbench's CUDA calls made to run on a CPU (fp32, wall-clock events); restored afterwards."""
    import torch

    class WallEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            self.t = 0.0

        def record(self) -> None:
            self.t = time.perf_counter()

        def elapsed_time(self, end: WallEvent) -> float:
            return (end.t - self.t) * 1000.0

    utils = sys.modules["airbench.utils"]
    loader = utils.CifarLoader
    saved = (torch.cuda.Event, torch.cuda.synchronize, torch.nn.Module.cuda, torch.nn.Module.half, torch.Tensor.half)

    class CpuLoader(loader):
        def __init__(self, *args, gpu=0, **kwargs):
            super().__init__(*args, gpu="cpu", **kwargs)

    torch.cuda.Event, torch.cuda.synchronize = WallEvent, lambda *a, **k: None
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.nn.Module.half = lambda self: self.float()
    torch.Tensor.half = lambda self, *a, **k: self.float()
    utils.CifarLoader = CpuLoader
    try:
        yield CpuLoader
    finally:
        torch.cuda.Event, torch.cuda.synchronize, torch.nn.Module.cuda, torch.nn.Module.half, torch.Tensor.half = saved
        utils.CifarLoader = loader


def _final_row(printed: str) -> dict:
    """airbench's own last table row (epoch 'eval'): its TTA accuracy and total time."""
    rows = [line for line in printed.splitlines() if line.startswith("|") and "eval" in line]
    if not rows:
        raise RuntimeError(f"airbench printed no final row: {printed[-300:]!r}")
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    return {"tta_accuracy": float(cells[5]), "seconds": float(cells[6])}


def run(args: argparse.Namespace) -> dict:
    import torch

    airbench, vision = import_airbench(args.source)
    work = Path(tempfile.mkdtemp(prefix="airbench-"))
    data = write_data(args.data, work, smoke=args.smoke)
    os.chdir(work)  # airbench opens cifar10/*.pt relative to its working directory
    hyp = sys.modules["airbench.lib_airbench94"].hyp
    epochs = 1 if args.smoke else hyp["opt"]["train_epochs"]
    plumbing = cpu_plumbing(airbench) if args.device == "cpu" else contextlib.nullcontext(airbench.CifarLoader)
    runs = []
    with plumbing as loader_class:
        loader = loader_class("cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"], altflip=True)
        with contextlib.redirect_stdout(io.StringIO()):
            airbench.warmup94(loader, epochs=epochs)
        for index in range(args.runs):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                airbench.train94(loader, epochs=epochs, run=index)
            runs.append(_final_row(printed.getvalue()))
    seconds = [r["seconds"] for r in runs]
    accuracy = [r["tta_accuracy"] for r in runs]
    return {
        "benchmark": "airbench94 (PyPI airbench 0.1.8, recipe unchanged)",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "torchvision": vision,
        "data": data,
        "epochs": epochs,
        "smoke": args.smoke,
        "runs": runs,
        "mean_seconds": sum(seconds) / len(seconds),
        "mean_tta_accuracy": sum(accuracy) / len(accuracy),
        "statistic": "airbench's own total_time_seconds and tta_val_acc per run, after one warm-up run",
        "published": PUBLISHED,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 in any form dawnpipe reads")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="1,024 training images, 1 epoch: the plumbing only")
    parser.add_argument("--source", default=None, help=f"{SDIST} (sha256 checked) or its unpacked folder")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the result")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA GPU is visible; pass --device cpu for the smoke size", file=sys.stderr)
            return 1
    args.data = str(Path(args.data).resolve())  # the run changes its working directory
    args.out = args.out.resolve() if args.out else None
    args.source = str(Path(args.source).resolve()) if args.source else None
    result = run(args)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
