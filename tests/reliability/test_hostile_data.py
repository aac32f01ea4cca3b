"""Hostile data: code in a pickle, decompression bombs, oversized archive members, pipes, one-class sets."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from dawnpipe.train.cifar_batches import safe_unpickle
from tests.conftest import make_images, write_batches, write_image_folder
from tests.reliability.helpers import peak_rss_mb, refused, run_cli

_TRAIN = ["train", "--epochs", "1", "--batch-size", "32", "--width", "0.125", "--device", "cpu"]


class _Payload:
    """Pickles to 'call open(marker, "w")': what an attacker's data_batch_1 would run on a plain pickle.loads."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile_batches(tmp_path: Path, marker: Path) -> Path:
    folder = write_batches(tmp_path / "cifar-10-batches-py", {"train": make_images(8, 1), "test": make_images(2, 2)})
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Payload(marker), b"labels": [0]}))
    return folder


def _called_globals(data: bytes) -> list[tuple[str, str]]:
    """The (module, name) callables a pickle would look up and call, read with pickletools (nothing runs)."""
    strings, called = [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            called.append((strings[-2], strings[-1]))
        elif op.name == "GLOBAL":
            called.append(tuple(arg.split(" ", 1)))
    return called


def test_the_hostile_pickle_is_real(tmp_path):
    """Control, without executing the file: a plain pickle.loads of it would call open(marker, "w"), so the
    tests below can fail."""
    marker = tmp_path / "control-marker"
    data = (_hostile_batches(tmp_path, marker) / "data_batch_1").read_bytes()
    assert ("io", "open") in _called_globals(data)
    assert str(marker) in [arg for _, arg, _ in pickletools.genops(data)]
    assert not marker.exists()


@pytest.mark.parametrize("unofficial", [False, True], ids=["md5-check", "restricted-unpickler"])
def test_pickle_batches_never_run_code(tmp_path, unofficial):
    marker = tmp_path / "pwned"
    folder = _hostile_batches(tmp_path, marker)
    args = [*_TRAIN, "--data", str(folder), "--out", str(tmp_path / "runs")]
    line = refused(args + (["--unofficial-batches"] if unofficial else []), protect=(folder,))
    assert not marker.exists()
    assert ("refused global io.open" in line) if unofficial else ("md5" in line)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint.pt"))


def test_restricted_unpickler_reads_numpy_arrays_and_refuses_everything_else(tmp_path):
    import numpy as np

    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        back = safe_unpickle(pickle.dumps({b"data": array, b"labels": [1, 2]}, protocol=protocol))
        assert np.array_equal(back[b"data"], array) and back[b"labels"] == [1, 2]
    for evil in (pickle.dumps(_Payload(tmp_path / "m")), pickle.dumps(os.getcwd), pickle.dumps(print)):
        with pytest.raises(pickle.UnpicklingError, match="refused global"):
            safe_unpickle(evil)
    assert not (tmp_path / "m").exists()


def _bomb_png(path: Path, side: int) -> Path:
    """A 1-bit grayscale PNG of side x side zero pixels: a few hundred kB on disk, side**2 pixels decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [10_000, 20_000])  # above our 50 MP limit; above Pillow's own bomb limit
def test_predict_refuses_a_decompression_bomb_in_bounded_memory(tmp_path, side):
    bomb = _bomb_png(tmp_path / "bomb.png", side)
    code = f"from dawnpipe.infer.predict import read_images\nread_images([{str(bomb)!r}])"
    status, peak, err = peak_rss_mb(code)
    assert status == 1 and "DawnpipeError" in err and "not decoded" in err
    assert peak < 200, f"rejecting the bomb peaked at {peak} MB"


def test_training_data_bomb_is_refused_from_its_header(tmp_path):
    root = write_image_folder(tmp_path / "data", {"train": make_images(2, 1), "test": make_images(1, 2)})
    _bomb_png(root / "train" / "c0" / "bomb.png", 20_000)
    refused([*_TRAIN, "--data", str(root), "--out", str(tmp_path / "runs")], expect=("bomb.png",))


class _Zeros(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = b"\x00" * len(buffer)
        return len(buffer)


def test_oversized_archive_member_is_refused_unread(tmp_path):
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        member = tarfile.TarInfo("cifar/train/c0/huge.png")
        member.size = 300 << 20  # 300 MB of zeros: 300 kB compressed
        tar.addfile(member, io.BufferedReader(_Zeros(), buffer_size=1 << 20))
    code = f"from dawnpipe.train.data import load_cifar\nload_cifar({str(archive)!r})"
    status, peak, err = peak_rss_mb(code)
    assert status == 1 and "huge.png" in err and "was not read" in err
    assert peak < 200, f"rejecting the member peaked at {peak} MB"


def test_named_pipe_as_data_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "data.fifo"
    os.mkfifo(fifo)
    done = run_cli([*_TRAIN, "--data", str(fifo), "--out", str(tmp_path / "runs")], timeout=60)
    assert done.returncode == 1 and "not a regular file or folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_one_class_data_is_refused(tmp_path):
    images, labels = make_images(4, 1, num_classes=1)
    root = write_image_folder(tmp_path / "data", {"train": (images, labels), "test": (images[:2], labels[:2])})
    refused([*_TRAIN, "--data", str(root), "--out", str(tmp_path / "runs")], expect=("at least 2",))
