"""bench/paired_runs.py pairs the rows it is asked for: one backend, one precision per side where a folder holds
several, seed folder with seed folder, each test image once (accuracy only, no precision of its own)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.paired_runs import compare
from dawnpipe.costs.stats import paired_difference
from tests.costs.test_rules_report import IMAGES, _bits, _eval_row


def _folder(path, rows):
    path.mkdir()
    (path / "eval.json").write_text(json.dumps({"rows": rows}))
    return path


def test_a_float16_folder_against_the_float32_rows_of_a_folder_that_also_holds_int8(tmp_path):
    rng = np.random.default_rng(5)
    fp32, int8, fp16 = _bits(rng, 0.9), _bits(rng, 0.7), _bits(rng, 0.9)
    old = _folder(tmp_path / "old", [
        _eval_row("none", 1.0, 0.236, fp32, 1.0), {**_eval_row("none", 1.0, 0.236, int8, 1.0), "precision": "int8"},
    ])  # fmt: skip
    new = _folder(tmp_path / "new", [{**_eval_row("none", 1.0, 0.236, fp16, 1.0), "precision": "fp16"}])
    with pytest.raises(SystemExit, match="several onnxruntime rows per mode; name the precision"):
        compare([new], [old], "onnxruntime")
    found = compare([new], [old], "onnxruntime", ("fp16", "fp32"))["none"]
    want = paired_difference([fp16.astype(float)], [fp32.astype(float)])
    assert found["difference_points"] == pytest.approx(100 * want.difference) and found["images"] == IMAGES
    assert found["old_accuracy_by_pair"] == [pytest.approx(fp32.mean())]  # the fp32 row, not the int8 one
    assert compare([new], [old]) == {}  # torch by default: no torch rows here, nothing paired
