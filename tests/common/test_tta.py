"""TTA views: the airbench94 mode is airbench94's own tta_level 2, view for view and weight for weight (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dawnpipe.common.tta import apply_view, selective_logits, tta_logits, views


def _airbench_infer_mirror_translate(inputs: torch.Tensor, net) -> torch.Tensor:
    """airbench 0.1.8, airbench/utils.py, ``infer.infer_mirror_translate`` (tta_level 2), as published; NCHW."""

    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    logits = infer_mirror(inputs, net)
    pad = 1
    padded_inputs = F.pad(inputs, (pad,) * 4, "reflect")
    inputs_translate_list = [
        padded_inputs[:, :, 0:32, 0:32],
        padded_inputs[:, :, 2:34, 2:34],
    ]
    logits_translate_list = [infer_mirror(inputs_translate, net) for inputs_translate in inputs_translate_list]
    logits_translate = torch.stack(logits_translate_list).mean(0)
    return 0.5 * logits + 0.5 * logits_translate


def _airbench_view_set(x: torch.Tensor) -> list[torch.Tensor]:
    """airbench94's six inputs of one batch, in its order."""
    padded = F.pad(x, (1,) * 4, "reflect")
    crops = [padded[:, :, 0:32, 0:32], padded[:, :, 2:34, 2:34]]
    return [x, x.flip(-1), *(v for c in crops for v in (c, c.flip(-1)))]


def _images(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def test_airbench94_views_are_airbench94s_inputs_and_flip_translate_differs_in_two():
    images = _images()
    want = _airbench_view_set(_nchw(images))
    for mode, expected in (("airbench94", 6), ("flip-translate", 4)):
        got = [_nchw(apply_view(images, v)) for v in views(mode)]
        matched = sum(any(torch.equal(a, g) for g in got) for a in want)
        assert matched == expected, mode
    ours = views("airbench94")
    assert [v.weight for v in ours] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125] and sum(v.weight for v in ours) == 1
    assert all(torch.equal(a, _nchw(apply_view(images, v))) for a, v in zip(want, ours, strict=True))  # its order


def test_airbench94_logits_equal_airbench94s_own_infer_in_fp32():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 32 * 32, 10)
    ).eval()
    images = _images(32)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(_nchw(batch)).numpy()

    with torch.no_grad():
        want = _airbench_infer_mirror_translate(_nchw(images), net).numpy()
    got = tta_logits(run, images, views("airbench94"), batch=64)
    assert np.abs(got - want).max() < 1e-5  # fp32, summation order differs
    other = tta_logits(run, images, views("flip-translate"), batch=64)
    assert np.abs(other - want).max() > 1e-3  # not the same policy: a test that can tell them apart
    logits, chosen = selective_logits(run, images, views("airbench94"), threshold=1.0, batch=64)  # all selected
    assert chosen.all() and np.abs(logits - want).max() < 1e-5


@pytest.mark.parametrize("shift", [1, 2])
def test_every_mode_weighs_to_one_and_keeps_the_plain_view(shift):
    for mode in ("flip", "translate", "flip-translate", "airbench94"):
        chosen = views(mode, shift)
        assert abs(sum(v.weight for v in chosen) - 1) < 1e-12 and chosen[0].is_identity()
