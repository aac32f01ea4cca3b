"""Backends against the PyTorch reference, TTA equivalences, selective TTA, latency, evaluation, bad input."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import (
    ALL_MODES,
    TTA_MODES,
    apply_view,
    check_threshold,
    selective_from_views,
    softmax_confidence,
    view_logits,
    views,
)
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.infer.backends import OnnxRuntimeBackend, choose_providers, load, provider_options
from dawnpipe.infer.evaluate import EvalConfig, evaluate
from dawnpipe.infer.latency import Protocol, measure_rows
from dawnpipe.infer.modes import run_mode
from dawnpipe.infer.scoring import unpack_bits, wilson_interval
from dawnpipe.infer.torch_backend import TorchBackend
from dawnpipe.train.calibration import calibrate_threshold, split_holdout
from tests.conftest import assert_logits_close, make_images, write_image_folder


@pytest.fixture(scope="module")
def images():
    return make_images(10, seed=21)[0]


@pytest.fixture(scope="module")
def onnx_plain(trained_run):
    return export(ExportConfig(source=str(trained_run), check_images=128)).onnx


def test_view_definitions():
    assert [len(views(m)) for m in TTA_MODES] == [1, 2, 3, 6, 6]
    for mode in TTA_MODES:
        assert abs(sum(v.weight for v in views(mode)) - 1.0) < 1e-12
    x = np.arange(2 * 32 * 32 * 3, dtype=np.int64).reshape(2, 32, 32, 3).astype(np.uint8)
    flip = views("flip")[1]
    assert np.array_equal(apply_view(x, flip), x[:, :, ::-1])
    assert np.array_equal(apply_view(torch.from_numpy(x), flip).numpy(), x[:, :, ::-1])
    shifted = apply_view(x, views("translate")[1])  # (+1, +1): out[y, x] = in[y + 1, x + 1], reflected at the edge
    assert np.array_equal(shifted[:, :31, :31], x[:, 1:, 1:]) and np.array_equal(shifted[:, 31, :31], x[:, 30, 1:])
    with pytest.raises(DawnpipeError, match="unknown TTA mode"):
        views("rotate")


def test_onnxruntime_backend_matches_torch(trained_run, onnx_plain, images):
    with load(trained_run, precision="fp32") as reference, load(onnx_plain) as deployed:
        assert isinstance(reference, TorchBackend) and isinstance(deployed, OnnxRuntimeBackend)
        assert reference.classes == deployed.classes == ["c0", "c1", "c2", "c3"]
        assert_logits_close(deployed.infer(images), reference.infer(images), 1e-4)


@pytest.mark.trt
@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
    reason="needs TensorRT and a CUDA GPU (neither can be installed on the CPU CI machine)",
)
def test_tensorrt_backend_matches_torch(trained_run, images):
    result = export(ExportConfig(source=str(trained_run), trt=True, precision="fp16", check_images=128))
    with load(result.engine) as engine, load(trained_run, device="cpu", precision="fp32") as reference:
        assert (engine.infer(images).argmax(1) == reference.infer(images).argmax(1)).mean() >= 0.95


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_backend_on_cuda_matches_cpu(trained_run, images):
    with load(trained_run, device="cuda") as gpu, load(trained_run, device="cpu", precision="fp32") as cpu:
        assert (gpu.infer(images).argmax(1) == cpu.infer(images).argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("mode", ["flip", "translate", "flip-translate"])
def test_host_side_tta_equals_baked_in_graph(trained_run, onnx_plain, images, mode, tmp_path):
    baked = export(ExportConfig(source=str(trained_run), tta=mode, out=str(tmp_path), check_images=128)).onnx
    with load(onnx_plain) as plain, load(baked) as graph:
        host = run_mode(plain, images, mode).logits
        inside = run_mode(graph, images, mode).logits  # recognised as already inside: run once, not twice
        assert_logits_close(inside, host, 1e-5)
        assert np.abs(inside - graph.infer(images)).max() == 0
        with pytest.raises(DawnpipeError, match="inside its graph"):
            run_mode(graph, images, "none")


def _threshold_selecting_about_half(model, images):
    confidence = softmax_confidence(run_mode(model, images, "none").logits)
    return float(np.median(confidence))


@pytest.mark.parametrize("mode", ["selective-flip", "selective-flip-translate"])
def test_selective_decisions_identical_at_batch_one_and_n(onnx_plain, images, mode):
    with load(onnx_plain) as model:
        threshold = _threshold_selecting_about_half(model, images)
        whole = run_mode(model, images, mode, threshold=threshold)
        alone = [run_mode(model, images[i : i + 1], mode, threshold=threshold) for i in range(len(images))]
    assert 0 < whole.selected.sum() < len(images)  # the case where a batch-level rule would differ
    assert whole.selected.tolist() == [bool(r.selected[0]) for r in alone]
    assert_logits_close(np.concatenate([r.logits for r in alone]), whole.logits, 1e-5)


def test_selective_from_cache_equals_per_image_path(onnx_plain, images):
    with load(onnx_plain) as model:
        tta_views = views("flip-translate")
        per_view = view_logits(model.infer, images, tta_views)
        for threshold in (0.0, _threshold_selecting_about_half(model, images), 1.0):
            cached, chosen = selective_from_views(per_view, tta_views, threshold)
            live = run_mode(model, images, "selective-flip-translate", threshold=threshold)
            assert chosen.tolist() == live.selected.tolist()
            assert_logits_close(live.logits, cached, 1e-5)
        plain, full = run_mode(model, images, "none").logits, run_mode(model, images, "flip-translate").logits
        assert np.abs(run_mode(model, images, "selective-flip-translate", threshold=0.0).logits - plain).max() == 0
        everything = run_mode(model, images, "selective-flip-translate", threshold=1.0)
        assert_logits_close(everything.logits, full, 1e-5)
        assert everything.views_per_image == 6.0
    with pytest.raises(DawnpipeError, match="outside"):
        check_threshold(1.5)


def test_selective_uses_the_artifacts_calibrated_threshold(trained_run, onnx_plain, images):
    from dawnpipe.export.onnx_export import read_metadata
    from dawnpipe.train.checkpoint import load_checkpoint

    fitted = read_metadata(onnx_plain)["selective"]["threshold"]  # fitted through this ONNX on the hold-out
    with load(onnx_plain) as model:
        assert model.selective["threshold"] == fitted
        own = run_mode(model, images, "selective-flip")
        explicit = run_mode(model, images, "selective-flip", threshold=fitted)
    assert own.selected.tolist() == explicit.selected.tolist()
    # the checkpoint's own threshold comes from the same hold-out through the training model: equal when it trained
    # in fp32 (the suite's pin), within bf16's rounding of a softmax (2**-8 relative) when it trained in bf16
    trained = load_checkpoint(trained_run)
    exact = trained["state"]["precision"]["autocast"] == "fp32"
    assert trained["selective"]["threshold"] == (fitted if exact else pytest.approx(fitted, rel=2**-8))


def test_calibration_hand_computed_and_holdout_errors():
    result = calibrate_threshold(np.array([0.9, 0.2, 0.5, 0.99, 0.7]), 0.4)  # 2 of 5 strictly below
    assert result["threshold"] == 0.7 and result["selected_fraction_holdout"] == 0.4
    assert calibrate_threshold(np.array([0.3, 0.6]), 0.0)["threshold"] == 0.3
    assert calibrate_threshold(np.array([0.3, 0.6]), 1.0)["threshold"] == 1.0
    labels = np.repeat(np.arange(4), 10)
    keep, held = split_holdout(labels, 8, batch_size=4)
    assert len(held) == 8 and sorted(labels[held].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert not set(keep) & set(held) and len(keep) + len(held) == 40
    with pytest.raises(DawnpipeError, match="fewer than one batch"):
        split_holdout(labels, 38, batch_size=4)
    with pytest.raises(DawnpipeError, match="without held-out images"):
        split_holdout(labels, 3, batch_size=4)
    with pytest.raises(DawnpipeError, match="takes every training image of class"):
        split_holdout(np.array([0] * 30 + [1]), 2, batch_size=4)
    with pytest.raises(DawnpipeError, match="negative"):
        split_holdout(labels, -1, batch_size=4)


@pytest.mark.slow
def test_calibration_does_not_depend_on_test_data(tiny_splits, tmp_path):
    from dawnpipe.train.api import config_from_options
    from dawnpipe.train.checkpoint import load_checkpoint
    from dawnpipe.train.trainer import train

    test_x, test_y = tiny_splits["test"]
    corrupted = np.random.default_rng(5).permutation(test_y)  # wrong labels for most test images
    thresholds = []
    for name, labels in (("true", test_y), ("corrupt", corrupted)):
        folder = write_image_folder(tmp_path / name, {"train": tiny_splits["train"], "test": (test_x, labels)})
        cfg = config_from_options(
            data=folder, epochs=2, batch_size=32, width=0.125, out=tmp_path / "runs", name=name, device="cpu"
        )
        thresholds.append(load_checkpoint(train(cfg, progress=False).checkpoint)["selective"])
    assert thresholds[0]["threshold"] == thresholds[1]["threshold"]
    assert thresholds[0]["holdout"]["indices_sha256"] == thresholds[1]["holdout"]["indices_sha256"]


def _fake_rows(slow_rounds: set[int]):
    """Two rows on a fake clock: 'steady' always takes 1 ms; 'noisy' takes 5 ms in the given (timed) rounds, else
    1 ms. ``log`` records every call's row in order."""
    now, log = [0.0], []
    per_round, warmup = 10, 2

    def make(name):
        def run(_x):
            timed_index = sum(1 for n in log if n == name) - warmup
            log.append(name)
            slow = name == "noisy" and timed_index >= 0 and timed_index // per_round in slow_rounds
            now[0] += 0.005 if slow else 0.001

        return run

    return {"steady": make("steady"), "noisy": make("noisy")}, (lambda: now[0]), log


def test_latency_protocol_flags_a_noisy_row_and_interleaves():
    rows, clock, log = _fake_rows(slow_rounds={1})
    protocol = Protocol(rounds=3, calls=10, min_seconds=0.0, warmup=2, max_spread=0.25)
    timings = measure_rows(rows, np.zeros((5, 32, 32, 3), np.uint8), batch=1, protocol=protocol, clock=clock)
    # warm-ups first, then round by round: every row's calls of a round before any row's calls of the next, in
    # the order each row's recorded position says (a new permutation each round, drawn from the recorded seed)
    steady, noisy = timings["steady"], timings["noisy"]
    order = [sorted(rows, key=lambda n: timings[n].round_position[r]) for r in range(3)]
    assert log == ["steady"] * 2 + ["noisy"] * 2 + [name for names in order for name in names for _ in range(10)]
    redrawn = np.random.default_rng(steady.order_seed)  # the orders can be drawn again from the recorded seed
    positions = [[timings[n].round_position[r] for n in rows] for r in range(3)]
    assert [list(redrawn.permutation(2)) for _ in range(3)] == [list(np.argsort(p)) for p in positions]
    assert steady.order_seed == noisy.order_seed and steady.interval == ""
    assert steady.calls == noisy.calls == 30 and steady.rounds == 3
    assert steady.p50_ms == pytest.approx(1.0) and not steady.flagged and steady.spread == pytest.approx(0.0)
    assert noisy.flagged and noisy.round_p50_ms == pytest.approx([1.0, 5.0, 1.0]) and noisy.mean_ms > steady.mean_ms
    assert noisy.p50_ms <= noisy.p90_ms <= noisy.p99_ms and noisy.max_ms == pytest.approx(5.0)


def test_rows_run_in_a_new_order_each_round_and_too_few_rounds_say_so():
    names = [f"row{i}" for i in range(6)]
    quick = Protocol(rounds=5, calls=1, min_seconds=0.0, warmup=0)
    timings = measure_rows({n: lambda x: None for n in names}, np.zeros((2, 32, 32, 3), np.uint8), batch=1,
                           protocol=quick)  # fmt: skip
    orders = {tuple(sorted(names, key=lambda n: timings[n].round_position[r])) for r in range(5)}
    assert len(orders) > 1  # five identical permutations of six rows: odds of 1 in 720**4
    two = measure_rows({"a": lambda x: None}, np.zeros((2, 32, 32, 3), np.uint8), batch=1,
                       protocol=replace(quick, rounds=2))  # fmt: skip
    assert two["a"].interval == "too few rounds (2 < 3): no interval"


def test_latency_calls_take_distinct_images():
    seen = []
    measure_rows(
        {"row": lambda x: seen.append(int(x[0, 0, 0, 0]))},
        np.arange(6, dtype=np.uint8).repeat(32 * 32 * 3).reshape(6, 32, 32, 3),
        batch=1,
        protocol=Protocol(rounds=1, calls=6, min_seconds=0.0, warmup=0),
    )
    assert seen == [0, 1, 2, 3, 4, 5]


def test_wilson_interval():
    low, high = wilson_interval(90, 100)
    assert low < 0.9 < high and 0.82 < low < 0.84
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


def test_evaluate_writes_rows_and_manifest(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = export(ExportConfig(source=str(run), check_images=128)).onnx
    quick = Protocol(rounds=2, calls=2, min_seconds=0.0, warmup=1)
    rows, out = evaluate(EvalConfig(artifact=str(path), tta=("all",), protocol=quick, throughput_batch=16))
    assert [r["tta"] for r in rows] == list(ALL_MODES)
    data = json.loads(out.read_text())
    assert out == run / "eval.json" and len(data["rows"]) == len(ALL_MODES) == 9 and data["format"] == "dawnpipe-eval/2"
    row = data["rows"][1]
    assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1] and row["views_per_image"] == 2.0
    assert row["gflops_per_image"] == pytest.approx(2 * rows[0]["gflops_per_image"])
    assert set(row["per_class"]) == {"c0", "c1", "c2", "c3"}
    b1 = row["latency"]["batch1"]
    assert b1["calls"] == 4 and b1["rounds"] == 2 and b1["p50_ms"] > 0 and row["latency"]["threads"] >= 1
    bits = unpack_bits(row["correct_bits"], row["images"])
    assert int(bits.sum()) == row["correct"]
    for mode in ("selective-flip", "selective-translate", "selective-flip-translate", "selective-airbench94"):
        # the file's own threshold, fitted through it on the run's hold-out: it selects its target there
        selective = next(r for r in rows if r["tta"] == mode)["selective"]
        assert selective["threshold_source"].startswith("fitted on the hold-out through onnxruntime"), selective
        assert abs(selective["holdout_fraction"] - selective["target_fraction"]) <= 0.01
        assert 0 <= selective["selected_fraction"] <= 1
    assert "eval.json" in json.loads((run / "manifest.json").read_text())["artifacts"]
    # a second backend's rows are merged, not overwritten; the checkpoint's threshold was fitted by training
    torch_rows, _ = evaluate(EvalConfig(artifact=str(run), tta=("none", "selective-flip"), latency=False))
    assert torch_rows[1]["selective"]["threshold_source"].startswith("fitted on the hold-out through torch")
    assert {r["backend"] for r in json.loads(out.read_text())["rows"]} == {"onnxruntime", "torch"}


def test_latency_is_timed_on_a_class_balanced_sample(onnx_plain, monkeypatch):
    # the test set is read class by class; timing its first images would time one class only, whose selected
    # fraction under selective TTA is not the test set's
    import dawnpipe.infer.evaluate as evaluate_mod
    from dawnpipe.train.data import interleaved_order, load_cifar

    timed: list[np.ndarray] = []
    real = evaluate_mod.measure_rows

    def recording(rows, images, **kwargs):
        timed.append(images)
        return real(rows, images, **kwargs)

    monkeypatch.setattr(evaluate_mod, "measure_rows", recording)
    quick = Protocol(rounds=1, calls=2, min_seconds=0.0, warmup=1)
    evaluate(EvalConfig(artifact=str(onnx_plain), tta=("none",), protocol=quick, latency_images=8, throughput_batch=8))
    test = load_cifar(json.loads(onnx_plain.with_name("manifest.json").read_text())["runs"]["train"]["data"]["source"])
    assert np.all(np.diff(test.test_y) >= 0)  # the data really is class-sorted, so the test could fail
    order = interleaved_order(test.test_y)
    assert np.array_equal(timed[0], test.test_x[order][:8])  # batch 1: the first 8 of the interleaved order
    assert np.bincount(test.test_y[order][:8]).tolist() == [2, 2, 2, 2]
    assert np.array_equal(timed[1], test.test_x[order])  # throughput: all images, interleaved


def test_eval_cli_prints_table(trained_run, onnx_plain, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "eval",
            str(onnx_plain),
            "--tta",
            "none,flip,selective-flip",
            "--latency-calls",
            "2",
            "--latency-rounds",
            "1",
            "--throughput-batch",
            "24",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "selective-flip" in result.output and (tmp_path / "eval.json").exists()
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert {r["latency"]["throughput"]["batch"] for r in rows} == {24}  # the batch asked for, named in every row


def test_eval_without_latency_prints_dashes_not_nan(onnx_plain, tmp_path):
    args = ["eval", str(onnx_plain), "--tta", "none", "--no-latency", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("onnxruntime/CPU "))
    assert "nan" not in row and row.split()[-4:] == ["-", "-", "-", "-"], row  # mean, p50, p99, img/s: unmeasured


def test_eval_refuses_to_merge_into_an_unreadable_eval_json_before_any_work(onnx_plain, tmp_path):
    damaged = tmp_path / "eval.json"
    damaged.write_text('{"format": "dawnpipe-eval/2", "rows": [')  # cut short: its rows cannot be read back
    args = ["eval", str(onnx_plain), "--tta", "none", "--no-latency", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "rows lost" in result.output and "move it aside" in result.output
    assert damaged.read_text() == '{"format": "dawnpipe-eval/2", "rows": [' and sorted(tmp_path.iterdir()) == [damaged]


def test_eval_times_several_artifacts_in_one_session(trained_run, onnx_plain, tmp_path):
    # torch from the run folder and onnxruntime from its ONNX: accuracy per artifact, latency in one session, so
    # costs pairs their rows round by round
    args = ["eval", str(trained_run), str(onnx_plain), "--tta", "none,flip", "--latency-calls", "2"]
    args += ["--latency-rounds", "2", "--throughput-batch", "8", "--test-limit", "40", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "checkpoint.pt:" in result.output and f"{onnx_plain}:" in result.output  # each one's rows under its name
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert sorted((r["backend"], r["tta"]) for r in rows) == [
        ("onnxruntime", "flip"), ("onnxruntime", "none"), ("torch", "flip"), ("torch", "none")
    ]  # fmt: skip
    sessions = {r["latency"]["batch1"]["session"] for r in rows} | {r["latency"]["throughput"]["session"] for r in rows}
    assert len({r["latency"]["batch1"]["session"] for r in rows}) == 1 and len(sessions) == 2  # batch 1, bulk
    assert all(len(r["latency"]["batch1"]["round_p50_ms"]) == 2 for r in rows)


def test_eval_refuses_an_artifact_named_twice_before_any_work(onnx_plain, tmp_path):
    args = ["eval", str(onnx_plain), str(onnx_plain.parent / "." / onnx_plain.name), "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "named twice" in result.output and not any(tmp_path.iterdir()), result.output


def test_eval_classes_differ(onnx_plain, tmp_path):
    other = write_image_folder(
        tmp_path / "other", {"train": make_images(2, 1, 3), "test": make_images(2, 2, 3)}, classes=["x", "y", "z"]
    )
    with pytest.raises(DawnpipeError, match="differ from the model"):
        evaluate(EvalConfig(artifact=str(onnx_plain), data=str(other), latency=False))


def test_eval_bad_options(onnx_plain, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DawnpipeError, match="is a file"):
        evaluate(EvalConfig(artifact=str(onnx_plain), tta=("none",), latency=False, out=str(blocker)))
    with pytest.raises(DawnpipeError, match="outside"):
        evaluate(EvalConfig(artifact=str(onnx_plain), selective_threshold=1.5, latency=False))
    with pytest.raises(DawnpipeError, match="no TTA mode"):
        evaluate(EvalConfig(artifact=str(onnx_plain), tta=(), latency=False))


def test_bad_artifacts(onnx_plain, tmp_path):
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(onnx_plain.read_bytes()[:1000])
    with pytest.raises(DawnpipeError, match="not a readable ONNX"):
        load(truncated)
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(onnx_plain))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(DawnpipeError, match="not exported by dawnpipe"):
        load(foreign)
    with pytest.raises(DawnpipeError, match="does not exist"):
        load(tmp_path / "missing.onnx")
    with pytest.raises(DawnpipeError, match="unknown artifact type"):
        load(truncated.with_suffix(".txt").touch() or truncated.with_suffix(".txt"))
    with pytest.raises(DawnpipeError, match="unknown backend"):
        load(onnx_plain, "tvm")
    with pytest.raises(DawnpipeError, match="cannot run"):
        load(onnx_plain, "torch")


def test_engine_without_sidecar(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(DawnpipeError, match="no sidecar"):
        load(engine)


def test_provider_lists_keep_cuda_between_tensorrt_and_cpu():
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", every) == every
    assert choose_providers("tensorrt", every) == every
    assert choose_providers("cuda", every) == every[1:]
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("cpu", every) == ["CPUExecutionProvider"]
    with pytest.raises(DawnpipeError, match="unknown provider"):
        choose_providers("rocm", every)
    trt, cuda, cpu = provider_options(every, "fp16", Path("/run/x"), 1024)
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_path"] == "/run/x"
    assert trt["trt_profile_max_shapes"] == "images:1024x32x32x3" and cuda == cpu == {}
    assert provider_options(every, "fp32", Path("/r"), 64)[0]["trt_fp16_enable"] is False


def test_provider_not_installed_names_installed_ones(onnx_plain):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider is installed here")
    with pytest.raises(DawnpipeError, match="CPUExecutionProvider") as info:
        load(onnx_plain, provider="cuda")
    assert "not installed" in str(info.value)


def test_large_inputs_are_split_into_bounded_calls(onnx_plain, images):
    with load(onnx_plain) as model:
        whole = model.infer(images)
        model.max_batch = 3
        assert_logits_close(model.infer(images), whole, 1e-5)


def test_fp32_reference_turns_tf32_off(trained_run):
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    with load(trained_run, precision="fp32"):
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"


def test_a_round_that_slows_every_row_is_drift_not_a_spread_row():
    from dawnpipe.infer.latency import judge_session, summarize

    def row(per_round_ms):  # 10 calls per round at the given ms
        return summarize([[ms / 1000] * 10 for ms in per_round_ms], batch=1, max_spread=0.25)

    drift = {name: row([base, base, 1.5 * base, base]) for name, base in (("a", 1.0), ("b", 2.0), ("c", 4.0))}
    raw = {name: t.flagged for name, t in drift.items()}
    judged = judge_session(drift, 0.25, "s")
    assert all(raw.values()) and not any(t.flagged for t in judged.values())  # the machine slowed, not the rows
    assert judged["a"].drift == pytest.approx(0.5) and judged["a"].session == "s"
    assert judged["a"].spread_raw == pytest.approx(0.5) and judged["a"].spread == pytest.approx(0.0)
    alone = {**{n: row([b, b, b, b]) for n, b in (("a", 1.0), ("b", 2.0), ("c", 4.0))}, "d": row([1, 1, 1.6, 1])}
    judged = judge_session(alone, 0.25, "s")
    assert judged["d"].flagged and not judged["a"].flagged  # one row slowed alone: that row is untrustworthy
