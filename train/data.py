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
import re
import stat
import sys
import tarfile
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dawnpipe.common.errors import DawnpipeError, DiskFull
from dawnpipe.common.files import atomic_write, sha256_file
from dawnpipe.train.cifar_batches import BATCH_FILES, IMAGE_SIZE, MAX_BATCH_BYTES, decode_batches

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the CIFAR page
MAX_IMAGE_FILE_BYTES = 1 << 20  # a 32x32 image file is a few kB; a larger one is refused unread
MAX_TOTAL_BYTES = 2 << 30  # bytes of accepted archive members, read one at a time (CIFAR-10 is 180 MB)
MAX_MEMBERS = 1_000_000  # archive entries looked at (CIFAR-10 has 60,000 images)
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
    data: str | Path | None = None,
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
    verify_md5: bool = True,
    trusted_sha256: str | None = None,
) -> Cifar:
    """Load CIFAR-10 from ``data`` (or the cached official archive), using the decoded cache when present.

    Official pickle batches must match their published md5 unless ``verify_md5`` is False or the source's
    sha256 is ``trusted_sha256`` (the data a checkpoint says it was trained on, accepted at training).
    """
    path = _official_archive() if data is None else Path(data).expanduser()
    check_data_path(path)
    digest = _source_hash(path)
    cached = cache_dir() / f"decoded-{digest[:32]}.npz"
    arrays = _read_cache(cached)
    if arrays is None:
        arrays = _decode(path, verify_md5=verify_md5 and digest != trusted_sha256)
        _write_cache(cached, arrays)
    train_x, train_y, test_x, test_y, classes = arrays
    if len(classes) < 2:
        raise DawnpipeError(
            f"{path} has {len(classes)} class ({', '.join(classes)}); a classifier needs at least 2",
            "give train/ and test/ one sub-folder per class",
        )
    train_idx, test_idx = balanced_subset(train_y, train_limit), balanced_subset(test_y, test_limit)
    return Cifar(
        train_x[train_idx], train_y[train_idx], test_x[test_idx], test_y[test_idx], tuple(classes), str(path), digest
    )


def check_data_path(path: Path) -> None:
    """Refuse a missing path or one that is neither a regular file nor a folder (a named pipe would hang)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        raise DawnpipeError(f"data path {path} does not exist", _FIX) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DawnpipeError(f"data path {path} is not a regular file or folder (a pipe or device?)", _FIX)


def balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the first ``limit`` images taken round-robin over classes, in dataset order."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if limit <= 0:
        raise DawnpipeError(f"a limit of {limit} images leaves nothing", "pass a positive --train-limit/--test-limit")
    return np.sort(interleaved_order(labels)[:limit])


def interleaved_order(labels: np.ndarray) -> np.ndarray:
    """All indices, classes taken round-robin (every first-of-class image, then every second, ...), so any run of
    consecutive images covers the classes evenly. Timing takes its images in this order: the archives list the
    test set class by class, and the first 200 images of a class-sorted set are all one class, whose selected
    fraction under selective TTA is not the test set's."""
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each image within its class
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return np.lexsort((np.arange(len(labels)), rank))


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
        digest.update(bytes.fromhex(sha256_file(file)))  # streamed: a huge stray file costs time, not memory
    return digest.hexdigest()


def _decode(path: Path, *, verify_md5: bool = True) -> tuple:
    try:
        if path.is_dir():
            batches = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
            if (batches / "data_batch_1").exists():
                files = {p.name: p for p in batches.iterdir() if p.name in BATCH_FILES and p.is_file()}
                return decode_batches(_read_limited(files, str(path)), str(path), verify_md5=verify_md5)
            if (path / "train").is_dir() and (path / "test").is_dir():
                found = {str(p.relative_to(path)): p for p in path.rglob("*") if p.is_file()}
                images = {k: v for k, v in found.items() if _IMAGE_MEMBER.search(k)}
                _check_sizes({k: v.stat().st_size for k, v in images.items()}, str(path), MAX_IMAGE_FILE_BYTES)
                return _from_image_files({k: v.read_bytes for k, v in images.items()}, str(path))
            raise DawnpipeError(f"{path} holds neither cifar-10-batches-py files nor train/ and test/ folders", _FIX)
        if not tarfile.is_tarfile(path):
            raise DawnpipeError(f"{path} is neither a folder nor a tar archive", _FIX)
        members = _read_archive(path)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DawnpipeError(
            f"{path} could not be read as an archive ({type(err).__name__}: {err}); "
            "it is probably truncated or corrupt",
            "download or copy it again",
        ) from None
    batch_files = {Path(k).name: v for k, v in members.items() if Path(k).name in BATCH_FILES}
    if "data_batch_1" in batch_files:
        return decode_batches(batch_files, str(path), verify_md5=verify_md5)
    return _from_image_files({k: (lambda b=v: b) for k, v in members.items()}, str(path))


def _read_archive(path: Path) -> dict[str, bytes]:
    """The archive's batch or image members, read one at a time; each size is checked before it is read."""
    members: dict[str, bytes] = {}
    total = 0
    with tarfile.open(path, mode="r:*") as tar:
        for count, member in enumerate(tar, start=1):
            if count > MAX_MEMBERS:
                raise DawnpipeError(f"{path} has more than {MAX_MEMBERS:,} entries", "pass the CIFAR-10 data only")
            if not member.isfile():  # links, devices and pipes are never followed or read
                continue
            if Path(member.name).name in BATCH_FILES:
                limit = MAX_BATCH_BYTES
            elif _IMAGE_MEMBER.search(member.name):
                limit = MAX_IMAGE_FILE_BYTES
            else:
                continue  # not data: never read
            _check_sizes({member.name: member.size}, str(path), limit)
            total += member.size
            if total > MAX_TOTAL_BYTES:
                raise DawnpipeError(
                    f"{path} unpacks to more than {MAX_TOTAL_BYTES >> 30} GB of data", "pass the CIFAR-10 data only"
                )
            handle = tar.extractfile(member)
            members[member.name] = handle.read(member.size) if handle else b""
    return members


def _read_limited(files: dict[str, Path], where: str) -> dict[str, bytes]:
    _check_sizes({k: v.stat().st_size for k, v in files.items()}, where, MAX_BATCH_BYTES)
    return {k: v.read_bytes() for k, v in files.items()}


def _check_sizes(sizes: dict[str, int], where: str, limit: int) -> None:
    """Refuse any entry larger than ``limit`` before a byte of it is read."""
    for name, size in sizes.items():
        if size > limit:
            raise DawnpipeError(
                f"{where}: {name} is {size:,} bytes, more than any CIFAR-10 file needs ({limit:,}); it was not read",
                "remove it, or pass the CIFAR-10 data only",
            )


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
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            size = image.size
            if size != (IMAGE_SIZE, IMAGE_SIZE):  # checked before decoding: a huge image is never decompressed
                raise DawnpipeError(
                    f"{where}: {name} is {size[0]}x{size[1]}, not {IMAGE_SIZE}x{IMAGE_SIZE}",
                    "resize the data set to 32x32 first (training data is never resized silently)",
                )
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise DawnpipeError(
            f"{where}: {name} is not an image Pillow can read", "remove non-image files from the data folder"
        ) from None


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
        atomic_write(path, _save, expected_bytes=sum(a.nbytes for a in (train_x, train_y, test_x, test_y)))
    except DiskFull as full:  # the cache is an optimisation: a full disk is said, and the run goes on without it
        print(f"notice: the decoded data was not cached: {full.problem}", file=sys.stderr, flush=True)
    except OSError:
        pass  # a read-only cache folder must not stop training either


def cached_test_images(source_sha256: str, limit: int) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """The first ``limit`` (class-balanced) test images of an already-decoded source, or None if not cached."""
    arrays = _read_cache(cache_dir() / f"decoded-{source_sha256[:32]}.npz")
    if arrays is None:
        return None
    _, _, test_x, test_y, classes = arrays
    idx = balanced_subset(test_y, limit)
    return test_x[idx], test_y[idx], classes


def pixel_statistics(images: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and std in pixel units, exactly, from 256-bin histograms (no float copy of the data)."""
    mean, std = [], []
    values = np.arange(256, dtype=np.float64)
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        m = float(hist @ values / hist.sum())
        mean.append(m)
        std.append(float(np.sqrt(hist @ (values - m) ** 2 / (hist.sum() - 1))))
    return {"mean": mean, "std": std}
