"""The torch backend builds TTA views on its device exactly as the host does, decides selective TTA identically,
and runs graph-captured (torch.compile on a CPU, with a one-line eager fallback; CUDA graphs on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dawnpipe.common.tta import (
    ALL_MODES,
    apply_view,
    parse_mode,
    selective_logits,
    softmax_confidence,
    tta_logits,
    views,
)
from dawnpipe.infer.backends import load
from dawnpipe.infer.modes import run_mode
from dawnpipe.infer.torch_backend import bucket, device_confidence
from tests.conftest import assert_logits_close, make_images

_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def images():
    return make_images(12, seed=31)[0]  # 48 images


@pytest.mark.parametrize("mode", ALL_MODES)
def test_device_built_views_equal_the_host_views_exactly(images, mode):
    base, _ = parse_mode(mode)
    on_device = torch.from_numpy(images).to("cuda" if _CUDA else "cpu")
    for view in views(base):
        np.testing.assert_array_equal(apply_view(on_device, view).cpu().numpy(), apply_view(images, view))


def test_the_device_confidence_is_the_host_confidence_bit_for_bit():
    rng = np.random.default_rng(0)
    logits = (rng.normal(0, 4, size=(4096, 10)) * rng.choice([0.01, 1, 30], size=(4096, 1))).astype(np.float32)
    on_device = device_confidence(torch.from_numpy(logits).to("cuda" if _CUDA else "cpu")).cpu().numpy()
    np.testing.assert_array_equal(on_device, softmax_confidence(logits))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_device_tta_matches_host_tta_and_selects_the_same_images(trained_run, images, mode):
    base, selective = parse_mode(mode)
    with load(trained_run, device="cpu", precision="fp32") as model:
        tta_views = views(base)
        if not selective:
            want = tta_logits(model.infer, images, tta_views)
            got, _ = model.run_tta(images, tta_views)
            assert_logits_close(got, want, 1e-5)
            return
        plain = softmax_confidence(model.infer(images))
        threshold = float(np.median(plain))  # about half the images take the extra views
        want, want_chosen = selective_logits(model.infer, images, tta_views, threshold)
        got, chosen = model.run_tta(images, tta_views, threshold)
        np.testing.assert_array_equal(chosen, want_chosen)
        assert 0 < chosen.sum() < len(images)
        assert_logits_close(got, want, 1e-5)
        # run_mode (what latency rows, predict and the server call) takes the device path for torch
        result = run_mode(model, images, mode, threshold=threshold)
        np.testing.assert_array_equal(result.selected, want_chosen)


def test_graph_captured_on_a_cpu_runs_compiled_and_agrees_with_eager(trained_run, images):
    with (
        load(trained_run, device="cpu", precision="fp32") as eager,
        load(trained_run, device="cpu", precision="fp32", graphs=True) as graphed,
    ):
        assert graphed.name == "torch-graphs" and graphed.describe()["graphs"].startswith("torch.compile")
        # batch 1 (what latency is timed at) and a dynamic batch; torch specializes size 1 and this torch's conv
        # guards split sizes 2-15 from 16 and up (TORCH_LOGS=recompiles), so each range costs a CPU compilation
        for n in (1, 9):
            assert_logits_close(graphed.infer(images[:n]), eager.infer(images[:n]), 1e-4)
        assert graphed.graph_notice is None


def test_graph_captured_falls_back_to_eager_with_one_notice(trained_run, images, monkeypatch, capsys):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("no compiler here (simulated)")

    monkeypatch.setattr(torch, "compile", refuse)
    with (
        load(trained_run, device="cpu", precision="fp32") as eager,
        load(trained_run, device="cpu", precision="fp32", graphs=True) as graphed,
    ):
        np.testing.assert_array_equal(graphed.infer(images), eager.infer(images))
        graphed.infer(images[:3])
        assert graphed.describe()["graphs"] == "eager (torch.compile failed)"
    err = capsys.readouterr().err
    assert err.count("notice: torch.compile failed") == 1 and "torch-graphs on CPU continues in eager mode" in err


def test_buckets_keep_small_batches_exact_and_round_large_ones_up():
    assert [bucket(n) for n in (1, 2, 3, 6, 8, 9, 100, 256, 257)] == [1, 2, 3, 6, 8, 16, 128, 256, 512]


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason="needs a CUDA GPU")
def test_cuda_graphs_agree_with_eager_and_inference_does_not_autotune(trained_run, images):
    torch.backends.cudnn.benchmark = True  # as a training run in the same process leaves it
    with (
        load(trained_run, device="cuda", precision="fp32") as eager,
        load(trained_run, device="cuda", precision="fp32", graphs=True) as graphed,
    ):
        assert torch.backends.cudnn.benchmark is False
        for n in (1, 2, 6, 11, 48):
            assert_logits_close(graphed.infer(images[:n]), eager.infer(images[:n]), 1e-4)
        assert graphed.describe()["graphs"] == "CUDA graphs per batch size"
