"""Loaders on synthetic data in every format, the decoded cache, and each bad-input case."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train import data as data_mod
from dawnpipe.train.data import balanced_subset, interleaved_order, load_cifar
from tests.conftest import CLASSES, make_images, png_bytes, tar_folder, write_batches, write_image_folder


def _check(loaded, splits, classes=CLASSES):
    assert loaded.classes == tuple(classes)
    assert loaded.train_x.dtype == np.uint8 and loaded.train_x.shape[1:] == (32, 32, 3)
    # the same set of (image, label) pairs, whatever order the format stores them in
    for split, x, y in (("train", loaded.train_x, loaded.train_y), ("test", loaded.test_x, loaded.test_y)):
        want_x, want_y = splits[split]
        assert len(y) == len(want_y)
        key = lambda xs, ys: sorted((int(label), xi.tobytes()) for xi, label in zip(xs, ys, strict=True))  # noqa: E731
        assert key(x, y) == key(want_x, want_y)


def test_image_folder_dir(image_folder, tiny_splits):
    _check(load_cifar(image_folder), tiny_splits)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_image_folder_archive_with_prefix(tmp_path, image_folder, tiny_splits, suffix):
    archive = tar_folder(image_folder, tmp_path / f"data{suffix}", arcname="cifar10")
    _check(load_cifar(archive), tiny_splits)


def test_official_batches_folder_and_archive(tmp_path, tiny_splits):
    folder = write_batches(tmp_path / "cifar-10-batches-py", tiny_splits)
    # home-made batches are not the published files: refused by md5 unless asked for
    assert "md5" in _error(folder) and "--unofficial-batches" in _error(folder)
    _check(load_cifar(folder, verify_md5=False), tiny_splits)
    _check(load_cifar(tmp_path, verify_md5=False), tiny_splits)  # the parent of cifar-10-batches-py works too
    archive = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz", arcname="cifar-10-batches-py")
    _check(load_cifar(archive, verify_md5=False), tiny_splits)
    # a checkpoint's own training data (its sha256) is trusted by eval without the flag
    digest = data_mod._source_hash(archive)
    _check(load_cifar(archive, trusted_sha256=digest), tiny_splits)


def test_second_load_reads_the_cache(image_folder, monkeypatch, tiny_splits):
    load_cifar(image_folder)
    monkeypatch.setattr(data_mod, "_decode", lambda path: pytest.fail("decoded again despite the cache"))
    _check(load_cifar(image_folder), tiny_splits)


def test_limits_are_class_balanced(image_folder):
    loaded = load_cifar(image_folder, train_limit=40, test_limit=8)
    assert len(loaded.train_y) == 40 and np.bincount(loaded.train_y).tolist() == [10, 10, 10, 10]
    assert np.bincount(loaded.test_y).tolist() == [2, 2, 2, 2]
    assert balanced_subset(np.array([0, 0, 1, 1]), None).tolist() == [0, 1, 2, 3]
    assert interleaved_order(np.array([0, 0, 0, 1, 1, 2])).tolist() == [0, 3, 5, 1, 4, 2]


def _error(path) -> str:
    with pytest.raises(DawnpipeError) as info:
        load_cifar(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope") and "--data" in _error(tmp_path / "nope")


def test_unknown_folder(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    assert "neither" in _error(tmp_path)


def test_corrupt_archive(tmp_path, image_folder):
    archive = tar_folder(image_folder, tmp_path / "d.tar.gz")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "truncated or corrupt" in _error(truncated)


def test_classes_differ(tmp_path):
    train, test = make_images(4, seed=3), make_images(2, seed=4)
    write_image_folder(tmp_path, {"train": train})
    write_image_folder(tmp_path, {"test": test}, classes=["c0", "c1", "c2", "other"])
    assert "differ" in _error(tmp_path)


def test_non_image_file_is_named(tmp_path, tiny_splits):
    write_image_folder(tmp_path, {"train": make_images(2, 5), "test": make_images(1, 6)})
    (tmp_path / "train" / "c0" / "notes.jpg").write_text("not an image")
    assert "notes.jpg" in _error(tmp_path)


def test_wrong_size_is_named(tmp_path):
    write_image_folder(tmp_path, {"train": make_images(2, 5), "test": make_images(1, 6)})
    big = np.zeros((40, 40, 3), dtype=np.uint8)
    (tmp_path / "test" / "c1" / "big.png").write_bytes(png_bytes(big))
    message = _error(tmp_path)
    assert "big.png" in message and "40x40" in message


class _FakeResponse:
    """Stands in for the network (urllib only; no ML dependency is faked)."""

    def __init__(self, body: bytes):
        self.body, self.headers = body, {"Content-Length": str(len(body))}

    def read(self, n=-1):
        chunk, self.body = self.body[:n], self.body[n:]
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_md5_mismatch(monkeypatch):
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", lambda *a, **k: _FakeResponse(b"garbage" * 100))
    message = _error(None)
    assert "md5" in message and not (data_mod.cache_dir() / "cifar-10-python.tar.gz").exists()


def test_no_network_says_pass_data(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", offline)
    assert "--data" in _error(None) and "could not be downloaded" in _error(None)
