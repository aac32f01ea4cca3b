"""The server's limits one by one: images per request, headers, bodies that stall or stop, pixels decoded, the
decode budget, artifacts whose metadata lies, and a missing `serve` extra."""

from __future__ import annotations

import io
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from dawnpipe.cli import main
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.export.api import ExportConfig, export
from dawnpipe.export.onnx_export import read_metadata, stamp
from dawnpipe.infer.limits import MAX_DECODED_PIXELS
from dawnpipe.infer.server import ServeConfig, create_app
from tests.infer.test_server import _png, _Running


@pytest.fixture(scope="module")
def onnx_path(trained_run, tmp_path_factory) -> Path:
    return export(
        ExportConfig(source=str(trained_run), out=str(tmp_path_factory.mktemp("hard")), check_images=128)
    ).onnx


def _raw(url: str, payload: bytes, read: bool = True, pause: float = 0.0) -> bytes:
    """Send raw bytes over one connection (a client no HTTP library would be), optionally read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(payload)
        if pause:
            time.sleep(pause)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _metrics(client: httpx.Client) -> str:
    return client.get("/metrics").text


def test_65_images_get_413_and_headers_over_the_limit_get_431(onnx_path):
    image = _png(np.zeros((32, 32, 3), np.uint8))
    with _Running(ServeConfig(str(onnx_path))) as running, httpx.Client(base_url=running.url) as client:
        files = [("f", (f"{i}.png", image, "image/png")) for i in range(65)]
        many = client.post("/v1/predict", files=files)
        assert many.status_code == 413 and many.json()["reason"] == "too_many"
        big = client.post("/v1/predict", content=image, headers={"content-type": "image/png", "x-pad": "a" * 40_000})
        assert big.status_code == 431 and big.json()["reason"] == "headers_too_large"
        lots = {f"x-h{i}": "1" for i in range(120)}
        assert (
            client.post("/v1/predict", content=image, headers={"content-type": "image/png", **lots}).status_code == 431
        )
        assert client.post("/v1/predict", content=image, headers={"content-type": "image/png"}).status_code == 200
        assert 'reason="headers_too_large"} 2.0' in _metrics(client)


def test_a_client_that_hangs_up_mid_body_is_counted_as_a_disconnect_not_a_model_error(onnx_path):
    with _Running(ServeConfig(str(onnx_path))) as running, httpx.Client(base_url=running.url) as client:
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 50000\r\n\r\n"
        _raw(running.url, head + b"\x89PNG" + b"\0" * 100, read=False)
        deadline = time.time() + 10
        while 'reason="client_disconnect"' not in _metrics(client) and time.time() < deadline:
            time.sleep(0.05)
        text = _metrics(client)
        assert 'reason="client_disconnect"} 1.0' in text and 'reason="model"' not in text
        assert 'status="500"' not in text


def test_a_body_that_stalls_gets_408(onnx_path):
    with _Running(ServeConfig(str(onnx_path), body_timeout_s=0.5)) as running:
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
        answer = _raw(running.url, head + b"\x89PNG", pause=1.5)
        assert answer.startswith(b"HTTP/1.1 408") and b'"reason":"body_timeout"' in answer


def _png_of(width: int, height: int, mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (20, 200, 30, 255) if mode == "RGBA" else (20, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_pixels_past_the_decoded_limit_get_413_and_a_lying_jpeg_header_decodes_small(onnx_path):
    with _Running(ServeConfig(str(onnx_path))) as running, httpx.Client(base_url=running.url) as client:
        over = client.post("/v1/predict", content=_png_of(4097, 4096), headers={"content-type": "image/png"})
        assert over.status_code == 413 and "4096x4096" in over.json()["error"]
        at = client.post("/v1/predict", content=_png_of(4096, 4096), headers={"content-type": "image/png"})
        assert at.status_code == 200  # the worst image the limits allow is served
        buffer = io.BytesIO()
        Image.new("RGB", (7000, 7000), (90, 30, 200)).save(buffer, "JPEG", quality=5)
        whole = client.post("/v1/predict", content=buffer.getvalue(), headers={"content-type": "image/jpeg"})
        assert whole.status_code == 200  # 49 MP, decoded at 1/8 scale
        lying = client.post("/v1/predict", content=buffer.getvalue()[:900], headers={"content-type": "image/jpeg"})
        assert lying.status_code == 400 and lying.json()["reason"] == "damaged_image"
        assert running.app.state.budgets["pixels"].peak <= MAX_DECODED_PIXELS


def test_a_spent_decode_budget_answers_503_with_retry_after_never_500(onnx_path):
    cfg = ServeConfig(str(onnx_path), decode_budget_pixels=MAX_DECODED_PIXELS, busy_timeout_s=0.05)
    worst = _png_of(4096, 4096)
    with _Running(cfg) as running, httpx.Client(base_url=running.url, timeout=60) as client:

        def post(_):
            return client.post("/v1/predict", content=worst, headers={"content-type": "image/png"})

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, range(6)))
        codes = sorted(a.status_code for a in answers)
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and busy.json()["reason"] == "busy"


def _lying_copy(onnx_path: Path, tmp_path: Path, key: str, value) -> Path:
    """A copy of the export whose metadata field ``key`` (dotted) holds ``value``."""
    model = onnx.load(str(onnx_path))
    meta = read_metadata(onnx_path)
    meta["selective"] = meta.get("selective") or {"threshold": 0.5}
    *parents, leaf = key.split(".")
    target = meta
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    stamp(model, meta)
    out = tmp_path / "lying" / onnx_path.name
    out.parent.mkdir(exist_ok=True)
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("selective.threshold", "abc", "'selective.threshold' is 'abc'"),
        ("classes", "cats", "'classes' is 'cats'"),
        ("tta_mode", "spin", "'tta_mode' is 'spin'"),
        ("tta_views", 3, "'tta_views' is 3"),
        ("precision", "fp4", "'precision' is 'fp4'"),
        ("input_contract.normalization.std", [0, 0, 0], "'input_contract.normalization.std'"),
    ],
)
def test_metadata_that_lies_is_named_by_eval_predict_and_serve(onnx_path, tmp_path, key, value, named):
    lying = _lying_copy(onnx_path, tmp_path, key, value)
    image = tmp_path / "x.png"
    image.write_bytes(_png(np.zeros((32, 32, 3), np.uint8)))
    for args in (["eval", str(lying), "--allow-foreign"], ["predict", str(lying), str(image), "--allow-foreign"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and named in result.stderr, (args, result.output)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    with pytest.raises(DawnpipeError, match="its metadata field"):
        create_app(ServeConfig(str(lying)))


def test_serve_without_the_serve_extra_names_the_extra(onnx_path, monkeypatch):
    from dawnpipe.infer import server

    monkeypatch.setattr(server, "SERVE_MODULES", (*server.SERVE_MODULES, "dawnpipe_no_such_module"))
    result = CliRunner().invoke(main, ["serve", str(onnx_path), "--port", "8765"])
    assert result.exit_code == 1 and "needs the serve extra (dawnpipe_no_such_module not installed)" in result.stderr
    assert "pip install 'dawnpipe[serve]'" in result.stderr and result.stderr.count("\n") == 1


def test_messages_name_what_is_wrong_with_the_thing_itself(onnx_path, trained_run, tmp_path):
    missing = CliRunner().invoke(main, ["costs", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is a file, not a run folder" in CliRunner().invoke(main, ["costs", str(afile)]).stderr
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for args in (["eval", str(empty)], ["predict", str(empty), str(afile)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "is empty (0 bytes)" in result.stderr, result.output
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:5000])
    assert "not a readable ONNX model" in CliRunner().invoke(main, ["eval", str(truncated)]).stderr
    triton = CliRunner().invoke(
        main, ["export", str(trained_run), "--out", str(tmp_path / "o"), "--triton", str(afile)]
    )
    assert triton.exit_code == 1 and f"--triton {afile} is a file, where a folder belongs" in triton.stderr
    assert not (tmp_path / "o").exists()  # refused before any work


def test_a_serve_package_that_fails_to_import_is_one_line_naming_it(onnx_path, tmp_path, monkeypatch):
    # a half-upgraded environment: fastapi is installed (found) but breaks while importing
    broken = tmp_path / "site" / "fastapi"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'starlette._compat'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "fastapi" or m.startswith("fastapi.")]:
        monkeypatch.delitem(sys.modules, name)
    result = CliRunner().invoke(main, ["serve", str(onnx_path), "--port", "8766"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "fastapi is installed but fails to import (ModuleNotFoundError: No module named 'starlette._compat')" in (
        result.stderr
    )
    assert "pip install --force-reinstall 'dawnpipe[serve]'" in result.stderr


def test_the_private_uvicorn_part_the_server_relies_on_is_still_there():
    """GracefulServer clears uvicorn's Server._captured_signals (the signals re-raised after a graceful shutdown):
    if uvicorn renames or drops that list, this fails before a deployed server dies of its own SIGTERM."""
    import signal

    import uvicorn

    from dawnpipe.infer.server import _graceful_server_class

    plain = uvicorn.Server(uvicorn.Config(app=None))
    plain.handle_exit(signal.SIGTERM, None)
    assert plain._captured_signals == [signal.SIGTERM] and plain.should_exit
    graceful = _graceful_server_class()(uvicorn.Config(app=None))
    graceful.handle_exit(signal.SIGTERM, None)
    assert graceful._captured_signals == [] and graceful.should_exit


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_glibc_takes_the_servers_malloc_settings():
    import platform

    from dawnpipe.infer.server import release_freed_memory_eagerly

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: the server leaves malloc as it is")
    assert release_freed_memory_eagerly() is True
