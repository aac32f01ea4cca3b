"""eval --latency-only: a family's rows are scored once (--no-latency) and timed later in one session; the timing
run takes each row's accuracy from eval.json only when the row measured what it is about to time."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dawnpipe.cli import main
from dawnpipe.export.api import ExportConfig, export

TIMING = ["--latency-rounds", "2", "--latency-calls", "2", "--throughput-batch", "8"]


@pytest.fixture(scope="module")
def onnx_file(trained_run):
    return export(ExportConfig(source=str(trained_run), check_images=128)).onnx


def _eval(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["eval", *map(str, args)])
    return result.exit_code, result.output


def test_latency_only_times_the_rows_eval_json_holds_without_scoring_them_again(trained_run, onnx_file, tmp_path):
    code, output = _eval(trained_run, onnx_file, "--tta", "none,flip", "--test-limit", "40", "--no-latency",
                         "--out", tmp_path)  # fmt: skip
    assert code == 0, output
    path = tmp_path / "eval.json"
    scored = json.loads(path.read_text())
    # mark the stored accuracy: a latency-only run that scored again would write the true figure over it
    for row in scored["rows"]:
        row["accuracy"], row["correct"] = 0.125, 5
    path.write_text(json.dumps(scored))
    code, output = _eval(trained_run, onnx_file, "--tta", "none,flip", "--test-limit", "40", "--latency-only",
                         *TIMING, "--out", tmp_path)  # fmt: skip
    assert code == 0, output
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == 4 and {(r["accuracy"], r["correct"]) for r in rows} == {(0.125, 5)}
    assert {r["correct_bits"] for r in rows} == {r["correct_bits"] for r in scored["rows"]}
    assert all("earlier" in r["accuracy_scored"] for r in rows)
    assert len({r["latency"]["batch1"]["session"] for r in rows}) == 1  # both artifacts timed in one session
    assert all(len(r["latency"]["batch1"]["round_p50_ms"]) == 2 for r in rows)


@pytest.mark.parametrize(
    ("first", "then", "problem"),
    [
        ([], ["--test-limit", "20"], "other test images"),
        (["--tta", "selective-flip", "--selective-threshold", "0.5"],
         ["--tta", "selective-flip", "--selective-threshold", "0.6"], "selective threshold 0.5, not 0.6"),
        (["--tta", "none"], ["--tta", "none,flip"], "holds no flip row"),
        ([], ["--no-latency"], "pass one of them"),
    ],
)  # fmt: skip
def test_latency_only_refuses_rows_that_measured_something_else(onnx_file, tmp_path, first, then, problem):
    base = ["--test-limit", "40", "--out", tmp_path]
    code, output = _eval(onnx_file, "--tta", "none", *base, "--no-latency", *first)
    assert code == 0, output
    before = (tmp_path / "eval.json").read_bytes()
    code, output = _eval(onnx_file, "--tta", "none", *base, "--latency-only", *TIMING, *then)
    assert code == 1 and len(output.strip().splitlines()) == 1 and problem in output, output
    assert (tmp_path / "eval.json").read_bytes() == before  # nothing written


def test_latency_only_refuses_rows_scored_on_another_cpu_or_without_eval_json(onnx_file, tmp_path):
    code, output = _eval(onnx_file, "--tta", "none", "--test-limit", "40", "--latency-only", "--out", tmp_path)
    assert code == 1 and "does not exist" in output and "without --latency-only first" in output, output
    code, output = _eval(onnx_file, "--tta", "none", "--test-limit", "40", "--no-latency", "--out", tmp_path)
    assert code == 0, output
    path = tmp_path / "eval.json"
    data = json.loads(path.read_text())
    data["rows"][0]["cpu"]["model"] = "Some Other CPU"  # int8 kernels round differently on other instruction sets
    path.write_text(json.dumps(data))
    code, output = _eval(onnx_file, "--tta", "none", "--test-limit", "40", "--latency-only", *TIMING, "--out", tmp_path)
    assert code == 1 and "another CPU (Some Other CPU)" in output, output
