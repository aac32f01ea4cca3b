"""predict on files written by the test: PNG, JPEG, grayscale, RGBA, palette, odd sizes, junk."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.infer.predict import Predictor, to_model_input
from tests.conftest import make_images


@pytest.fixture(scope="module")
def model_path(trained_run, tmp_path_factory):
    return export(ExportConfig(source=str(trained_run), out=str(tmp_path_factory.mktemp("m")), check_images=128)).onnx


@pytest.fixture
def image_dir(tmp_path):
    images, _ = make_images(1, seed=5)
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    Image.fromarray(images[1]).save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(images[2]).convert("L").resize((64, 48)).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([images[3], np.full((32, 32), 128, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(images[0]).convert("P").save(tmp_path / "palette.gif")
    (tmp_path / "readme.txt").write_text("not an image")
    return tmp_path


def test_conversion_rules():
    gray = Image.fromarray(np.full((50, 100), 77, np.uint8), "L")
    out = to_model_input(gray)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and (out == 77).all()
    clear = Image.fromarray(np.zeros((40, 40, 4), np.uint8), "RGBA")
    assert (to_model_input(clear) == 255).all()  # fully transparent composites to white
    exact = make_images(1, seed=0)[0][0]
    assert np.array_equal(to_model_input(Image.fromarray(exact)), exact)


def test_predictor_on_files_skips_junk(model_path, image_dir):
    with Predictor(model_path, top_k=2) as predictor, pytest.warns(UserWarning, match="readme.txt"):
        results = predictor.predict_files([image_dir])
    assert len(results) == 5 and all(len(r.top) == 2 for r in results)
    assert all(r.top[0][1] >= r.top[1][1] and r.top[0][0] in {"c0", "c1", "c2", "c3"} for r in results)


def test_predictor_tta_and_arrays(model_path):
    images, labels = make_images(4, seed=9)
    with Predictor(model_path, tta="flip") as predictor:
        predictions = predictor.predict_arrays(images)
    assert np.mean([p.top[0][0] == f"c{label}" for p, label in zip(predictions, labels, strict=True)]) > 0.5


def test_empty_folder_and_bad_args(model_path, tmp_path):
    (tmp_path / "empty").mkdir()
    with Predictor(model_path) as predictor:
        with pytest.raises(DawnpipeError, match="no readable images"):
            predictor.predict_files([tmp_path / "empty"])
    with pytest.raises(DawnpipeError, match="unknown TTA mode"):
        Predictor(model_path, tta="zoom")


def test_predict_cli_json(model_path, image_dir):
    result = CliRunner().invoke(
        main,
        ["predict", str(model_path), str(image_dir / "a.png"), str(image_dir / "gray.png"), "--json", "--top-k", "3"],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert len(document["results"]) == 2 and len(document["results"][0]["predictions"]) == 3
    assert "BOX" in document["conversion"]


def test_predict_cli_nothing_readable(model_path, image_dir):
    result = CliRunner().invoke(main, ["predict", str(model_path), str(image_dir / "readme.txt")])
    assert result.exit_code == 1 and "no readable images" in result.output and "warning: skipping" in result.output
