"""Batched augmentation: shapes, exactness, determinism under a seed."""

from __future__ import annotations

import torch

from dawnpipe.train.augment import augment, reflect_index
from tests.conftest import make_images


def _batch(n=16):
    return torch.from_numpy(make_images(n // 4, seed=0)[0])


def test_shapes_and_dtype():
    out = augment(_batch(), torch.Generator().manual_seed(0), pad=4, flip=True, cutout=8)
    assert out.shape == (16, 32, 32, 3) and out.dtype == torch.uint8


def test_same_seed_same_batch_other_seed_differs():
    x = _batch()
    a = augment(x, torch.Generator().manual_seed(7), pad=4, flip=True, cutout=8)
    b = augment(x, torch.Generator().manual_seed(7), pad=4, flip=True, cutout=8)
    c = augment(x, torch.Generator().manual_seed(8), pad=4, flip=True, cutout=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_pad_no_flip_is_identity():
    x = _batch()
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), pad=0, flip=False, cutout=0), x)


def test_flip_only_gives_image_or_mirror():
    x = _batch(64)
    out = augment(x, torch.Generator().manual_seed(0), pad=0, flip=True, cutout=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(2)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54


def test_crop_is_a_window_of_the_reflect_padded_image():
    x = _batch(8)
    out = augment(x, torch.Generator().manual_seed(3), pad=4, flip=False, cutout=0)
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2).float(), (4, 4, 4, 4), mode="reflect")
    for i in range(8):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # (c, 9, 9, 32, 32)
        match = (windows == out[i].permute(2, 0, 1).float()[:, None, None]).flatten(3).all(-1).all(0)
        assert bool(match.any())


def test_cutout_zeroes_a_square():
    x = torch.full((4, 32, 32, 3), 200, dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0), pad=0, flip=False, cutout=8)
    assert ((out == 0).all(-1).flatten(1).sum(1) == 64).all()


def test_reflect_index():
    assert reflect_index(5, 2).tolist() == [2, 1, 0, 1, 2, 3, 4, 3, 2]
