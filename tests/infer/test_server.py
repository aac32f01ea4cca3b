"""`dawnpipe serve` through a real HTTP client on 127.0.0.1: round trip, batching across concurrent requests,
4xx on bad requests (never a 500 or a dead worker), metrics, graceful shutdown, and refusals at start-up."""

from __future__ import annotations

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.infer.predict import Predictor, to_model_input
from dawnpipe.infer.server import ServeConfig, check_port_free, create_app, serve, uvicorn_config
from tests.conftest import make_images


@pytest.fixture(scope="module")
def onnx_path(trained_run, tmp_path_factory) -> Path:
    return export(ExportConfig(source=str(trained_run), out=str(tmp_path_factory.mktemp("srv")), check_images=128)).onnx


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class _Running:
    """A uvicorn server on a free loopback port in a background thread."""

    def __init__(self, cfg: ServeConfig) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        full = ServeConfig(**{**cfg.__dict__, "port": port})
        self.app = create_app(full)
        self.server = uvicorn.Server(uvicorn_config(self.app, full, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> _Running:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def test_round_trip_matches_the_in_process_predictor(onnx_path):
    images = make_images(1, seed=5)[0][:3]
    photos = [np.kron(image, np.ones((2, 3, 1), np.uint8)) for image in images]  # 64x96: converted like predict
    with Predictor(onnx_path, tta="flip", top_k=2) as predictor:
        want = predictor.predict_arrays(np.stack([to_model_input(Image.fromarray(p)) for p in photos]))
    with _Running(ServeConfig(str(onnx_path), tta="flip")) as running, httpx.Client(base_url=running.url) as client:
        one = client.post("/v1/predict?top_k=2", content=_png(photos[0]), headers={"content-type": "image/png"})
        assert one.status_code == 200
        body = one.json()["predictions"][0]
        assert [t["class"] for t in body["top"]] == [c for c, _ in want[0].top] and body["views"] == 2.0
        assert body["top"][0]["probability"] == pytest.approx(want[0].top[0][1], abs=1e-5)
        files = [("files", (f"p{i}.png", _png(p), "image/png")) for i, p in enumerate(photos)]
        many = client.post("/v1/predict?top_k=2", files=files).json()["predictions"]
        assert [p["image"] for p in many] == ["p0.png", "p1.png", "p2.png"]
        assert [p["top"][0]["class"] for p in many] == [w.top[0][0] for w in want]
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["model"]["classes"] == ["c0", "c1", "c2", "c3"]


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_concurrent_requests_are_batched_and_each_answer_returns_to_its_sender(onnx_path):
    images = make_images(4, seed=6)[0]  # 16 distinct images (4 per class)
    with Predictor(onnx_path) as predictor:
        want = [p.top[0] for p in predictor.predict_arrays(images)]
    cfg = ServeConfig(str(onnx_path), max_batch=64, max_wait_ms=200, top_k=1)
    with _Running(cfg) as running:

        def ask(i: int):
            with httpx.Client(base_url=running.url, timeout=30) as client:
                r = client.post("/v1/predict", content=_png(images[i]), headers={"content-type": "image/png"})
                return i, r.status_code, r.json()["predictions"][0]["top"][0]

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(ask, range(16)))
        metrics = httpx.get(running.url + "/metrics").text
    for i, status, top in answers:
        assert status == 200 and top["class"] == want[i][0] and top["probability"] == pytest.approx(want[i][1], 1e-5)
    assert _metric(metrics, "dawnpipe_batch_images_sum") == 16
    assert _metric(metrics, "dawnpipe_batch_images_count") < 16  # some requests shared a model call
    assert _metric(metrics, 'dawnpipe_requests_total{status="200"}') == 16


@pytest.mark.parametrize(
    "body, content_type, status, reason",
    [
        (b"", "image/png", 400, "empty"),
        (b"not an image at all", "image/jpeg", 400, "not_an_image"),
        ("truncated", "image/png", 400, "damaged_image"),
        (b"x" * 1000, "text/plain", 415, "content_type"),
        (b"x" * 70_000, "image/png", 413, "too_large"),
        (b"--b\r\nbroken", "multipart/form-data; boundary=b", 400, "empty"),
    ],
)
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(onnx_path, body, content_type, status, reason):
    good = _png(make_images(1, seed=7)[0][0])
    if body == "truncated":
        body = good[: len(good) // 2]
    with _Running(ServeConfig(str(onnx_path), max_request_bytes=64_000)) as running:
        with httpx.Client(base_url=running.url) as client:
            bad = client.post("/v1/predict", content=body, headers={"content-type": content_type})
            assert bad.status_code == status, bad.text
            assert bad.json()["reason"] == reason and bad.json()["error"]
            after = client.post("/v1/predict", content=good, headers={"content-type": "image/png"})
            assert after.status_code == 200
            assert f'reason="{reason}"' in client.get("/metrics").text


def test_graceful_shutdown_answers_the_request_in_flight(onnx_path):
    image = _png(make_images(1, seed=8)[0][0])
    running = _Running(ServeConfig(str(onnx_path), max_wait_ms=800)).__enter__()  # the request waits 0.8 s
    result = {}

    def ask():
        with httpx.Client(base_url=running.url, timeout=30) as client:
            result["response"] = client.post("/v1/predict", content=image, headers={"content-type": "image/png"})

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.3)  # the request is queued in the batcher now
    running.stop()  # what SIGTERM does: stop accepting, finish in-flight requests, then exit
    asker.join(timeout=30)
    assert result["response"].status_code == 200 and result["response"].json()["predictions"]
    assert not running.thread.is_alive()


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DawnpipeError, match=f"port {port}"):
            check_port_free("127.0.0.1", port)


@pytest.mark.parametrize("artifact, message", [("missing.onnx", "does not exist"), ("bad.onnx", "not a readable")])
def test_an_artifact_it_cannot_load_is_refused_before_serving(tmp_path, artifact, message):
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(DawnpipeError, match=message):
        serve(ServeConfig(str(tmp_path / artifact), port=0))


def test_an_imported_model_is_served_with_airbench94s_views(image_folder, tmp_path):
    """A model dawnpipe did not train, imported, served from its run folder under airbench94's own views."""
    from tests.export.test_entrant import _export, _import, _Net

    imported = _import(_export(tmp_path / "entrant.onnx", _Net()), image_folder, tmp_path / "runs", holdout=20)
    photo = make_images(1, seed=6)[0][0]
    with Predictor(imported.run_dir, tta="airbench94") as predictor:
        want = predictor.predict_arrays(photo[None])[0]
    with (
        _Running(ServeConfig(str(imported.run_dir), tta="airbench94")) as running,
        httpx.Client(base_url=running.url) as client,
    ):
        answer = client.post("/v1/predict", content=_png(photo), headers={"content-type": "image/png"})
        assert answer.status_code == 200
        body = answer.json()["predictions"][0]
        assert body["views"] == 6.0 and body["top"][0]["class"] == want.top[0][0]
        assert body["top"][0]["probability"] == pytest.approx(want.top[0][1], abs=1e-5)
