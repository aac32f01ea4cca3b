"""CIFAR-10 in every form users have it, decoded once to uint8 arrays and cached by content hash.

Accepted sources (``--data``):
- the official ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/`` folder;
- an image folder ``train/<class>/*``, ``test/<class>/*`` as a folder or a ``.tar``/``.tar.gz``.
With no ``--data`` the official archive is taken from the cache folder, downloaded (progress bar, md5 check)
when missing. Decoded arrays land in ``<cache>/decoded-<sha256>.npz`` so the next run starts at once.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.files import atomic_write, sha256_file

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the CIFAR page
IMAGE_SIZE = 32  # pixels, height and width
_FIX = (
    "pass --data PATH to cifar-10-python.tar.gz, a cifar-10-batches-py/ folder, or an image folder "
    "(train/<class>/*, test/<class>/*) or its .tar/.tar.gz"
)
_IMAGE_MEMBER = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)$")


@dataclass(frozen=True)
class Cifar:
    """Decoded data: images uint8 (N, 32, 32, 3) RGB, labels int64 (N,), class names, where it came from."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str
    source_sha256: str

    def describe(self) -> dict:
        """What the manifest records about the data."""
        return {
            "source": self.source,
            "sha256": self.source_sha256,
            "classes": list(self.classes),
            "train_images": len(self.train_y),
            "test_images": len(self.test_y),
        }


def cache_dir() -> Path:
    """Where downloads and decoded arrays live: $DAWNPIPE_CACHE, else ~/.cache/dawnpipe."""
    return Path(os.environ.get("DAWNPIPE_CACHE", Path.home() / ".cache" / "dawnpipe"))


def load_cifar(
    data: str | Path | None = None, *, train_limit: int | None = None, test_limit: int | None = None
) -> Cifar:
    """Load CIFAR-10 from ``data`` (or the cached official archive), using the decoded cache when present."""
    path = _official_archive() if data is None else Path(data).expanduser()
    if not path.exists():
        raise DawnpipeError(f"data path {path} does not exist", _FIX)
    digest = _source_hash(path)
    cached = cache_dir() / f"decoded-{digest[:32]}.npz"
    arrays = _read_cache(cached)
    if arrays is None:
        arrays = _decode(path)
        _write_cache(cached, arrays)
    train_x, train_y, test_x, test_y, classes = arrays
    train_idx, test_idx = balanced_subset(train_y, train_limit), balanced_subset(test_y, test_limit)
    return Cifar(
        train_x[train_idx], train_y[train_idx], test_x[test_idx], test_y[test_idx], tuple(classes), str(path), digest
    )


def balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the first ``limit`` images taken round-robin over classes, in dataset order."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if limit <= 0:
        raise DawnpipeError(f"a limit of {limit} images leaves nothing", "pass a positive --train-limit/--test-limit")
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each image within its class
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    order = np.lexsort((np.arange(len(labels)), rank))  # all first-of-class, then all second-of-class, ...
    return np.sort(order[:limit])


# ---------------------------------------------------------------------------------------------- sources


def _official_archive() -> Path:
    target = cache_dir() / "cifar-10-python.tar.gz"
    if target.exists():
        return target
    try:
        from tqdm import tqdm

        with urllib.request.urlopen(CIFAR10_URL, timeout=30) as response:
            total = int(response.headers.get("Content-Length", 0))
            md5 = hashlib.md5()

            def _download(tmp: Path) -> None:
                with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10") as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        md5.update(block)
                        bar.update(len(block))
                if md5.hexdigest() != CIFAR10_MD5:
                    raise DawnpipeError(
                        f"downloaded CIFAR-10 has md5 {md5.hexdigest()}, expected {CIFAR10_MD5}",
                        "retry the download, or pass --data PATH to a copy you trust",
                    )

            atomic_write(target, _download)
    except OSError as err:
        reason = getattr(err, "reason", err)
        raise DawnpipeError(
            f"CIFAR-10 is not in the cache ({target}) and could not be downloaded ({reason})", _FIX
        ) from None
    return target


def _source_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's relative paths and file bytes in sorted order."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _decode(path: Path) -> tuple:
    try:
        if path.is_dir():
            batches = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
            if (batches / "data_batch_1").exists():
                return _from_batches({p.name: p.read_bytes() for p in batches.iterdir() if p.is_file()}, str(path))
            if (path / "train").is_dir() and (path / "test").is_dir():
                files = {str(p.relative_to(path)): p for p in path.rglob("*") if p.is_file()}
                return _from_image_files({k: v.read_bytes for k, v in files.items()}, str(path))
            raise DawnpipeError(f"{path} holds neither cifar-10-batches-py files nor train/ and test/ folders", _FIX)
        if not tarfile.is_tarfile(path):
            raise DawnpipeError(f"{path} is neither a folder nor a tar archive", _FIX)
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DawnpipeError(
            f"{path} could not be read as an archive ({type(err).__name__}: {err}); "
            "it is probably truncated or corrupt",
            "download or copy it again",
        ) from None
    batch_files = {Path(k).name: v for k, v in members.items() if "cifar-10-batches-py/" in k or "_batch" in k}
    if "data_batch_1" in batch_files:
        return _from_batches(batch_files, str(path))
    return _from_image_files({k: (lambda b=v: b) for k, v in members.items()}, str(path))


def _from_batches(files: dict[str, bytes], where: str) -> tuple:
    """Official python-pickle batches: data (10000, 3072) uint8 in CHW order, labels list."""
    needed = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    missing = [n for n in needed if n not in files]
    if missing:
        raise DawnpipeError(f"{where} lacks CIFAR-10 batch files {missing}", "download or extract it again")

    def unpickle(name: str) -> dict:
        try:
            return pickle.loads(files[name], encoding="bytes")
        except Exception as err:  # a damaged pickle can raise almost anything
            raise DawnpipeError(
                f"{where}: batch file {name} is corrupt ({type(err).__name__})", "download or extract it again"
            ) from None

    def arrays(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [unpickle(n) for n in names]
        x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x, dtype=np.uint8), np.concatenate([p[b"labels"] for p in parts]).astype(np.int64)

    train_x, train_y = arrays(needed[:5])
    test_x, test_y = arrays(["test_batch"])
    classes = [c.decode() for c in unpickle("batches.meta")[b"label_names"]]
    return train_x, train_y, test_x, test_y, classes


def _from_image_files(files: dict, where: str) -> tuple:
    """Image folder (any prefix before train/ and test/): classes are the sorted sub-folder names."""
    split_items: dict[str, list[tuple[str, str, object]]] = {"train": [], "test": []}
    for name, read in sorted(files.items()):
        match = _IMAGE_MEMBER.search(name)
        if match and not Path(name).name.startswith("."):
            split_items[match.group(1)].append((name, match.group(2), read))
    if not split_items["train"] or not split_items["test"]:
        raise DawnpipeError(f"{where} has no train/<class>/ and test/<class>/ images", _FIX)
    classes = sorted({c for _, c, _ in split_items["train"]})
    test_classes = sorted({c for _, c, _ in split_items["test"]})
    if classes != test_classes:
        raise DawnpipeError(
            f"{where}: train classes {classes} differ from test classes {test_classes}",
            "give train/ and test/ the same class folders",
        )
    index = {c: i for i, c in enumerate(classes)}
    out = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Pillow releases the GIL while decoding
        for split in ("train", "test"):
            items = split_items[split]
            images = list(pool.map(lambda item: _decode_image(item[0], item[2](), where), items))
            out += [np.stack(images), np.array([index[c] for _, c, _ in items], dtype=np.int64)]
    return (*out, classes)


def _decode_image(name: str, data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise DawnpipeError(
            f"{where}: {name} is not an image Pillow can read", "remove non-image files from the data folder"
        ) from None
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise DawnpipeError(
            f"{where}: {name} is {size[0]}x{size[1]}, not {IMAGE_SIZE}x{IMAGE_SIZE}",
            "resize the data set to 32x32 first (training data is never resized silently)",
        )
    return rgb


# ---------------------------------------------------------------------------------------------- cache


def _read_cache(path: Path) -> tuple | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["train_x"], z["train_y"], z["test_x"], z["test_y"], [str(c) for c in z["classes"]]
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None


def _write_cache(path: Path, arrays: tuple) -> None:
    train_x, train_y, test_x, test_y, classes = arrays

    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=np.array(classes))

    try:
        atomic_write(path, _save)
    except OSError:
        pass  # the cache is an optimisation; a read-only cache folder must not stop training


def cached_test_images(source_sha256: str, limit: int) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """The first ``limit`` (class-balanced) test images of an already-decoded source, or None if not cached."""
    arrays = _read_cache(cache_dir() / f"decoded-{source_sha256[:32]}.npz")
    if arrays is None:
        return None
    _, _, test_x, test_y, classes = arrays
    idx = balanced_subset(test_y, limit)
    return test_x[idx], test_y[idx], classes
