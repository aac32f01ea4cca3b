"""Shared fixtures: tiny learnable CIFAR-like data written by the tests in every format the loader reads.

Class k images are a class colour plus noise, so a tiny ResNet-9 learns them in a few epochs whatever the
flips and translations. Nothing here needs the real CIFAR-10 or a network.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawnpipe.common.precision import AUTO_CPU_PRECISION_ENV

# The suite states its precision: `auto` means fp32 on every CPU, so no test's figure depends on whether the CPU has
# bf16 (tests about bf16 ask for it by name, and run emulated where it is not native). Set before any test runs and
# inherited by every command a test starts. `DAWNPIPE_AUTO_CPU_PRECISION=bf16 python -m pytest` runs the whole suite
# with `auto` meaning bf16, as a bf16 CPU would without the pin.
os.environ.setdefault(AUTO_CPU_PRECISION_ENV, "fp32")
CLASSES = ["c0", "c1", "c2", "c3"]
_PALETTE = np.array([[230, 40, 40], [40, 200, 60], [50, 60, 220], [220, 210, 40]], dtype=np.int16)


def make_images(per_class: int, seed: int, num_classes: int = len(CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) images and int64 labels of a learnable colour task."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    noise = rng.integers(-60, 61, size=(len(labels), 32, 32, 3))
    images = np.clip(_PALETTE[labels % len(_PALETTE)][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_image_folder(
    root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes=CLASSES, fmt: str = "png"
) -> Path:
    """train/<class>/<i>.png and test/<class>/<i>.png (lossless, so pixels round-trip exactly)."""
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.{fmt}")
    return root


def write_batches(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes=CLASSES) -> Path:
    """The official cifar-10-batches-py layout: 5 pickled training batches, a test batch, batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = splits["train"]
    chunks = np.array_split(np.arange(len(train_y)), 5)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": rows, b"labels": y.tolist(), b"batch_label": name.encode()}, handle)

    for i, idx in enumerate(chunks, start=1):
        dump(f"data_batch_{i}", train_x[idx], train_y[idx])
    dump("test_batch", *splits["test"])
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [c.encode() for c in classes]}, handle)
    return folder


def tar_folder(source: Path, target: Path, arcname: str = "") -> Path:
    """Pack ``source`` into a .tar or .tar.gz (by suffix)."""
    mode = "w:gz" if target.name.endswith(".gz") else "w"
    with tarfile.open(target, mode) as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(Path(arcname) / path.relative_to(source)), recursive=False)
    return target


def assert_logits_close(got, want, rel: float) -> None:
    """Logits of two kernels (onnxruntime and torch, folded and unfolded, compiled and eager, one batch size and
    another) agree to within ``rel`` of the logits' own scale: max |want|, at least 1.

    Why relative: vectorised kernels of different widths (AVX2, AVX-512, VNNI) sum in different orders, and the
    rounding they leave grows with the size of what is summed, not with a fixed number; a bound written as an
    absolute figure holds on the CPU it was tuned on only.
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    worst = float(np.abs(got - want).max()) if want.size else 0.0
    assert worst <= rel * scale, f"logits differ by {worst:.3g}, more than {rel:g} x their scale {scale:.3g}"


def assert_is_ghost_bn(kernel) -> list:
    """fp64 on the CPU: ``kernel(x, weight, bias, ghost, eps)`` gives the per-group reference's output (channels_last)
    and input, weight and bias gradients, for 4 groups of 16 images whose mean is far from zero. Returns what the
    kernel returned, for checks of its extra outputs."""
    import torch

    from bench.ghost_bn import ghost_reference

    torch.manual_seed(0)
    x = (torch.randn(64, 8, 6, 5, dtype=torch.float64) * 2 + 3).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64)
    grad = torch.randn(64, 8, 6, 5, dtype=torch.float64)
    got = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    want = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    returned = kernel(*got, 16, 1e-5)
    out = returned[0] if isinstance(returned, tuple) else returned
    reference = ghost_reference(*want, 16, 1e-5)
    assert out.shape == reference.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, reference, atol=1e-12)
    (out * grad).sum().backward()
    (reference * grad).sum().backward()
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-10)
    var, mean = torch.var_mean(x.view(4, 16, 8, 6, 5), dim=(1, 3, 4), correction=0)
    return [mean, torch.rsqrt(var + 1e-5), *(returned if isinstance(returned, tuple) else ())]


def png_bytes(image: np.ndarray) -> bytes:
    """A PNG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class StopAfter(dict):
    """The trainer's interrupt flag, raised after ``n`` steps (as a first Ctrl-C would): patch
    ``dawnpipe.train.trainer.graceful_interrupt`` with ``lambda: contextlib.nullcontext(StopAfter(n))``."""

    def __init__(self, n: int):
        super().__init__(stop=False)
        self.left = n

    def __getitem__(self, key):
        if key == "why":
            return "interrupted"
        self.left -= 1
        return self.left < 0


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own decoded-data cache, never the user's."""
    monkeypatch.setenv("DAWNPIPE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """64 training and 16 test images per class."""
    return {"train": make_images(64, seed=1), "test": make_images(16, seed=2)}


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, tiny_splits) -> Path:
    """The tiny data as an image folder."""
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"), tiny_splits)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, image_folder) -> Path:
    """A tiny trained run folder shared by export, infer and costs tests."""
    from dawnpipe.train.api import config_from_options
    from dawnpipe.train.trainer import train

    out = tmp_path_factory.mktemp("runs")
    cfg = config_from_options(
        data=image_folder, epochs=6, batch_size=32, lr=2.0, width=0.125, out=out, name="tiny", device="cpu"
    )
    return train(cfg, progress=False).run_dir
