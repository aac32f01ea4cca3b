"""End-to-end training on tiny synthetic data: learning, repeatability, run folder, NaN, Ctrl-C and resume."""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train import trainer as trainer_mod
from dawnpipe.train.api import config_from_options
from dawnpipe.train.checkpoint import load_checkpoint
from dawnpipe.train.trainer import train
from tests.conftest import StopAfter


def _cfg(image_folder, out, **overrides):
    # no calibration hold-out: the tests below count steps of 256 images / 64 = 4 per epoch
    options = dict(data=image_folder, epochs=2, batch_size=64, lr=2.0, width=0.125, out=out, device="cpu", holdout=0)
    options.update(overrides)
    return config_from_options(**options)


def test_tiny_run_learns_and_writes_run_folder(trained_run):
    payload = load_checkpoint(trained_run)
    final = payload["metrics"]["final"]
    assert final["ema_test_acc"] >= 0.75  # 4 classes: chance is 0.25
    assert set(payload) >= {"model", "ema", "model_config", "normalization", "classes", "input", "metrics"}
    assert payload["classes"] == ["c0", "c1", "c2", "c3"] and payload["input"]["dtype"] == "uint8"
    assert len(payload["metrics"]["epochs"]) == 6 and payload["state"]["complete"]
    manifest = json.loads((trained_run / "manifest.json").read_text())
    entry = manifest["artifacts"]["checkpoint"]
    assert entry["path"] == "checkpoint.pt" and len(entry["sha256"]) == 64
    assert entry["made_from"]["data_sha256"] and manifest["runs"]["train"]["device"]["type"] == "cpu"
    assert not list(trained_run.glob("*.tmp")) and not list(trained_run.glob(".*.tmp"))


def test_same_seed_repeats_exactly(image_folder, tmp_path):
    a = train(_cfg(image_folder, tmp_path, name="a", epochs=1), progress=False)
    b = train(_cfg(image_folder, tmp_path, name="b", epochs=1), progress=False)
    wa, wb = load_checkpoint(a.checkpoint)["ema"], load_checkpoint(b.checkpoint)["ema"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_batch_larger_than_data(image_folder, tmp_path):
    with pytest.raises(DawnpipeError, match="larger than the 256 training images"):
        train(_cfg(image_folder, tmp_path, batch_size=1024), progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(image_folder, tmp_path):
    # epoch 1 trains at a sane rate; the lr then jumps to 1e30 and the loss overflows in epoch 2
    good = train(_cfg(image_folder, tmp_path, name="nan", epochs=1), progress=False)
    before = good.checkpoint.read_bytes()
    cfg = _cfg(image_folder, tmp_path, name="nan2", epochs=3, lr=1e30)
    with pytest.raises(DawnpipeError, match="NaN or infinite") as info:
        train(cfg, progress=False)
    assert "\n" not in str(info.value)
    assert good.checkpoint.read_bytes() == before  # other runs untouched
    ckpt = tmp_path / "nan2" / "checkpoint.pt"
    # the message says whether an epoch finished; a checkpoint exists exactly then, and holds finite weights
    assert ckpt.exists() == ("is kept at" in str(info.value)), str(info.value)
    if ckpt.exists():
        saved = load_checkpoint(ckpt)
        assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_ctrl_c_keeps_checkpoint_and_resume_matches_uninterrupted_run(image_folder, tmp_path, monkeypatch):
    whole = train(_cfg(image_folder, tmp_path, name="whole", epochs=2), progress=False)
    monkeypatch.setattr(trainer_mod, "graceful_interrupt", lambda: contextlib.nullcontext(StopAfter(6)))
    with pytest.raises(DawnpipeError, match="--resume"):
        train(_cfg(image_folder, tmp_path, name="cut", epochs=2), progress=False)
    cut = load_checkpoint(tmp_path / "cut")
    state = cut["state"]
    assert (state["epoch"], state["step_in_epoch"], state["complete"]) == (1, 2, False)
    # the interrupted process's wall runs to the interruption, past its last finished epoch, and the 2 steps it
    # ran of epoch 2 are kept by the checkpoint, so their seconds are carried too
    (first_process,) = state["clock"]["process_walls"]
    assert first_process >= cut["metrics"]["epochs"][0]["elapsed_s"] and state["clock"]["partial_epoch_seconds"] > 0
    monkeypatch.undo()
    resumed = train(_cfg(image_folder, tmp_path, resume=tmp_path / "cut"), progress=False)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(resumed.checkpoint)
    assert all(torch.allclose(a["ema"][k].float(), b["ema"][k].float(), atol=1e-5) for k in a["ema"])
    # the wall time covers both processes: the first one's (to its interruption) plus this one's
    final = resumed.metrics
    assert final["processes"] == 2 and whole.metrics["processes"] == 1
    assert final["wall_seconds_all_processes"] == pytest.approx(first_process + final["wall_seconds"], abs=1e-6)
    epochs = b["metrics"]["epochs"]
    assert epochs[1]["train_seconds"] > state["clock"]["partial_epoch_seconds"]
    assert final["train_seconds"] == pytest.approx(sum(e["train_seconds"] for e in epochs))
    with pytest.raises(DawnpipeError, match="already finished"):
        train(_cfg(image_folder, tmp_path, resume=tmp_path / "cut"), progress=False)


def test_an_interruption_in_the_first_epoch_still_counts_its_process_and_seconds(image_folder, tmp_path, monkeypatch):
    # stopped after 2 of epoch 1's 4 steps, before any epoch was recorded: the history alone shows no trace of
    # that process, yet its steps are kept; the checkpoint's clock carries its wall and the epoch's seconds
    monkeypatch.setattr(trainer_mod, "graceful_interrupt", lambda: contextlib.nullcontext(StopAfter(2)))
    with pytest.raises(DawnpipeError, match="--resume"):
        train(_cfg(image_folder, tmp_path, name="early", epochs=2), progress=False)
    state = load_checkpoint(tmp_path / "early")["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (0, 2)
    partial = state["clock"]["partial_epoch_seconds"]
    assert partial > 0 and len(state["clock"]["process_walls"]) == 1
    monkeypatch.undo()
    resumed = train(_cfg(image_folder, tmp_path, resume=tmp_path / "early"), progress=False)
    assert resumed.metrics["processes"] == 2
    epochs = load_checkpoint(resumed.checkpoint)["metrics"]["epochs"]
    # epoch 1's clock holds both parts; its images/s is over the images this process trained in its own part
    assert epochs[0]["train_seconds"] > partial
    assert epochs[0]["train_images_per_s"] == pytest.approx(2 * 64 / (epochs[0]["train_seconds"] - partial), rel=1e-6)


def test_ema_updates_count_global_steps(image_folder, tmp_path):
    # 256 images / batch 64 = 4 steps per epoch: shorter than ema_every (5), so a per-epoch counter never updated
    result = train(_cfg(image_folder, tmp_path, name="ema", epochs=5, batch_size=64), progress=False)
    state = load_checkpoint(result.checkpoint)["state"]
    assert state["ema_updates"] == 20 // 5
    assert result.metrics["ema_test_acc"] >= 0.75


def test_warm_up_steps_are_untimed_and_leave_the_run_bit_identical(image_folder, tmp_path, eager_run):
    # fp32 on the CPU: 2 warm-up steps (what a GPU run does by default: 3) change nothing the run trains
    eager, _ = eager_run
    warmed = train(_cfg(image_folder, tmp_path, name="warmed", epochs=1, warmup_steps=2), progress=False)
    a, b = load_checkpoint(eager.checkpoint), load_checkpoint(warmed.checkpoint)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert a["state"]["optimizer"]["state"].keys() == b["state"]["optimizer"]["state"].keys()
    assert warmed.metrics["warmup_seconds"] > 0 and eager.metrics["warmup_seconds"] == 0  # none by default on a CPU


def test_sync_bn_is_refused_before_any_work(tmp_path):
    # convert_sync_batchnorm would replace every GhostBatchNorm with plain BN; refused before data is read
    cfg = config_from_options(data=tmp_path / "no-such-data", sync_bn=True, out=tmp_path)
    with pytest.raises(DawnpipeError, match="ghost batch norm"):
        train(cfg, progress=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("batch, world", [(500, 1), (48, 1), (64, 4)])
def test_a_batch_that_does_not_split_into_ghost_groups_is_refused_before_any_work(tmp_path, batch, world):
    # GhostBatchNorm would fall back to plain BN on such a batch: the recipe would change without a word
    from dawnpipe.train.trainer import _check_switches

    cfg = config_from_options(data=tmp_path / "no-such-data", batch_size=batch, out=tmp_path)
    with pytest.raises(DawnpipeError, match="ghost batch-norm groups; ghost BN would silently become plain"):
        _check_switches(cfg, world)
    if world == 1:
        with pytest.raises(DawnpipeError, match=f"--batch-size {batch} gives {batch} images per process"):
            train(cfg, progress=False)
        assert not any(tmp_path.iterdir())
    _check_switches(config_from_options(batch_size=512, out=tmp_path), world)  # 512 splits on 1 or 4 processes


def test_an_overflowing_fp16_step_is_skipped_on_device_and_counted():
    # fp32 tensors on the CPU stand for fp16's gradients: the constant loss scale unscales and flags them, the fused
    # SGD kernel reads the flag; the injected inf reaches neither weights nor momentum, and the count is on the device
    from dawnpipe.train.loss_scaling import ConstantLossScale

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    params = list(model.parameters())
    optimizer = torch.optim.SGD([{"params": params, "weight_decay": 5e-4}], lr=torch.tensor(0.1), momentum=0.9,
                                nesterov=True, fused=True)  # fmt: skip
    scale = ConstantLossScale(512.0, params, torch.device("cpu"))
    x = torch.randn(8, 4)

    def step(poison: bool = False) -> None:
        optimizer.zero_grad(set_to_none=True)
        scale.scale(model(x).square().mean()).backward()
        if poison:
            model.weight.grad[0, 0] = float("inf")  # the injected overflow
        scale.unscale_(optimizer)
        optimizer.step()

    reference = copy.deepcopy(model)
    step()
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    reference(x).square().mean().backward()
    plain.step()
    assert all(torch.allclose(p, r, rtol=1e-6) for p, r in zip(params, reference.parameters(), strict=True))  # unscaled
    before = [p.detach().clone() for p in params]
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in params]
    assert scale.skipped_steps() == 0
    step(poison=True)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], m) for p, m in zip(params, momentum, strict=True))
    assert scale.skipped_steps() == 1
    step()
    assert not torch.equal(model.weight, before[0]) and torch.isfinite(model.weight).all()
    assert scale.skipped_steps() == 1  # a good step after the bad one is taken
    restored = ConstantLossScale(512.0, params, torch.device("cpu"))
    restored.load_state_dict({"scale": 128.0, "growth_factor": 2.0})  # a GradScaler checkpoint: two halvings
    assert restored.skipped_steps() == 2


def test_compile_failure_falls_back_to_eager_with_a_notice(image_folder, tmp_path, monkeypatch, capsys):
    def broken(module, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    eager = train(_cfg(image_folder, tmp_path, name="eager", epochs=1), progress=False)
    fallback = train(_cfg(image_folder, tmp_path, name="fallback", epochs=1, compile=True), progress=False)
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice: torch.compile")]
    assert len(notices) == 1 and "no C++ compiler found" in notices[0] and "eager" in notices[0]
    a, b = load_checkpoint(eager.checkpoint)["ema"], load_checkpoint(fallback.checkpoint)["ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the failed first call changed nothing


def _drift(a: dict, b: dict, init: dict) -> dict[str, float]:
    """Per tensor of the state dict: how far run ``b`` ended from run ``a``, as a fraction of how far ``a`` moved
    from the shared initial state in training (the L2 norm of each). A tensor training never moves (frozen BN
    scales, the whitening filters) must match exactly (inf otherwise).

    Why relative to the distance trained: correct kernels that round differently (fused, vectorised, compiled)
    drift apart chaotically from the first step, and in this recipe the biases train at 64x the weights' rate,
    so an absolute tolerance on every parameter holds on one CPU and fails on another (issue 35: 0.022 on
    ``prep.1.bias`` on AVX-512, 0.0026 on AVX2). Rounding moves a run a small fraction of the way it trained; a
    wrong step (a learning-rate group lost, BatchNorm statistics dropped) moves it a large one.
    """
    out = {}
    for k, start in init.items():
        if not start.is_floating_point():
            continue
        moved = float((a[k].double() - start.double()).norm())
        apart = float((a[k].double() - b[k].double()).norm())
        out[k] = apart / moved if moved > 0 else (0.0 if apart == 0 else float("inf"))
    return out


def _train_capturing_init(cfg) -> tuple:
    """Train ``cfg`` and return (result, the model's state when training began)."""
    captured: dict = {}

    from dawnpipe.train import parts

    class Spy(parts.EMA):
        def __init__(self, model, *args, **kwargs):
            captured.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().__init__(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parts, "EMA", Spy)
        result = train(cfg, progress=False)
    return result, captured


_DRIFT_LIMIT = 0.25  # of the distance trained; the compiled step measured 0.6% on AVX2 (EPYC), its faults 99-100%


def _agree(eager, other, init) -> tuple[float, str]:
    a, b = load_checkpoint(eager.checkpoint)["model"], load_checkpoint(other.checkpoint)["model"]
    drift = _drift(a, b, init)
    worst = max(drift, key=drift.get)
    return drift[worst], worst


@pytest.fixture(scope="module")
def eager_run(image_folder, tmp_path_factory):
    """One eager epoch and the model's state when it began: the reference every compiled step is held to."""
    return _train_capturing_init(_cfg(image_folder, tmp_path_factory.mktemp("eager"), name="eager", epochs=1))


@pytest.mark.slow
def test_compiled_step_agrees_with_eager(image_folder, tmp_path, eager_run):
    """The compiled training step takes the eager step's path: every tensor ends within a quarter of the distance
    it trained (rounding of other kernels only), the loss and the EMA accuracy agree.

    Checked on an AMD EPYC with AVX2 only (worst drift 0.6%, prep.1.bias) and against the AVX-512 Xeon figures
    of issue 35 (prep.1.bias 0.022 apart on a bias of 0.63 trained from 0: 3.5%).
    """
    eager, init = eager_run
    compiled = train(_cfg(image_folder, tmp_path, name="compiled", epochs=1, compile=True), progress=False)
    worst, name = _agree(eager, compiled, init)
    assert worst < _DRIFT_LIMIT, (name, worst)
    losses = [load_checkpoint(r.checkpoint)["metrics"]["epochs"][0]["train_loss"] for r in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    assert abs(eager.metrics["ema_test_acc"] - compiled.metrics["ema_test_acc"]) <= 0.05


def _bias_lr_dropped(module, bias_lr_scale=64.0):
    """A faulty 'compiled' step: the BN biases' gradients lose the recipe's x64 learning-rate scale."""
    for p in module.parameters():
        if p.ndim <= 1 and p.requires_grad:
            p.register_hook(lambda grad: grad / bias_lr_scale)
    return module


def _batchnorm_statistics_lost(module):
    """A faulty 'compiled' step: every forward's BatchNorm running statistics are thrown away."""

    def forward(x):
        saved = [b.detach().clone() for b in module.buffers()]
        out = module(x)
        with torch.no_grad():
            for buffer, old in zip(module.buffers(), saved, strict=True):
                buffer.copy_(old)
        return out

    return forward


@pytest.mark.parametrize("fault", [_bias_lr_dropped, _batchnorm_statistics_lost])
def test_the_agreement_check_fails_on_a_wrong_compiled_step(image_folder, tmp_path, monkeypatch, fault, eager_run):
    # torch.compile replaced by an eager step with one injected fault: the check above must catch it
    eager, init = eager_run
    monkeypatch.setattr(torch, "compile", lambda module, **options: fault(module))
    faulty = train(_cfg(image_folder, tmp_path, name="faulty", epochs=1, compile=True), progress=False)
    # the faulty step ran in place of the compiled one, and the record does not call it compiled: no graph was
    assert faulty.metrics["compiled"]["ran_compiled"] is False and faulty.metrics["compiled"]["graphs"] == 0
    worst, name = _agree(eager, faulty, init)
    assert worst > 2 * _DRIFT_LIMIT, (name, worst)  # measured: 0.99 (bias lr lost), 1.0 (BN statistics lost)


@pytest.fixture(scope="module")
def eager_bf16_run(image_folder, tmp_path_factory):
    """One eager bf16 epoch (emulated where the CPU has no bf16) and the model's state when it began."""
    out = tmp_path_factory.mktemp("eager-bf16")
    return _train_capturing_init(_cfg(image_folder, out, name="eager-bf16", epochs=1, precision="bf16"))


def test_bf16_training_is_asked_for_and_recorded_on_any_cpu(eager_bf16_run):
    """bf16: the run trains in bf16 autocast whether or not the CPU has it natively, and every record says bf16."""
    result, _ = eager_bf16_run
    payload = load_checkpoint(result.checkpoint)
    assert payload["train_config"]["precision"] == "bf16"
    assert payload["state"]["precision"] == {"device": "cpu", "autocast": "bf16"}
    device = json.loads((result.run_dir / "manifest.json").read_text())["runs"]["train"]["device"]
    assert device["precision"] == "bf16" and device["precision_asked"] == "bf16" and "bf16_native" in device
    assert math.isfinite(payload["metrics"]["epochs"][0]["train_loss"])


@pytest.mark.slow
def test_compiled_bf16_step_agrees_with_eager_bf16(image_folder, tmp_path, eager_bf16_run):
    """bf16, compiled: the step trains (issue 43: inductor's fused bf16 rounding made the global max pool's backward
    divide by zero, NaN from step 1, on every CPU; train.compiled keeps eager's casts) and takes eager bf16's path:
    every tensor within a quarter of the distance it trained, the loss within 2%."""
    eager, init = eager_bf16_run
    compiled = train(_cfg(image_folder, tmp_path, name="compiled-bf16", epochs=1, compile=True, precision="bf16"),
                     progress=False)  # fmt: skip
    assert compiled.metrics["compiled"]["ran_compiled"] and compiled.metrics["compiled"]["graphs"] >= 1
    worst, name = _agree(eager, compiled, init)
    assert worst < _DRIFT_LIMIT, (name, worst)
    losses = [load_checkpoint(r.checkpoint)["metrics"]["epochs"][0]["train_loss"] for r in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
