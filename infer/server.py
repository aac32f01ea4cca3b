"""`dawnpipe serve`: the deployed model over HTTP (FastAPI on uvicorn), with dynamic micro-batching.

    POST /v1/predict?top_k=3   body: one image (Content-Type image/jpeg, image/png, ...) or multipart/form-data
                               with one file part per image  ->  {"predictions": [{"image", "top", "views"}], ...}
    GET  /healthz              ->  {"status": "ok", the model's description}   (503 while shutting down)
    GET  /metrics              ->  Prometheus text: requests by status, errors by reason, latency, batch sizes

Images are converted exactly as `dawnpipe predict` converts them (infer.predict.to_model_input), and the
artifact's TTA mode (selective modes with their calibrated per-image threshold) is applied per image, so an
answer never depends on which other requests shared its batch. Bad requests get a 4xx JSON error naming the
problem; a model failure is a 500 for the requests of that batch only. SIGINT/SIGTERM: uvicorn stops accepting,
finishes in-flight requests, then the batcher answers whatever is queued before the process exits.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import softmax
from dawnpipe.infer.limits import MAX_DECODED_PIXELS
from dawnpipe.infer.request_input import BadRequest, HeaderLimit, read_images


@dataclass(frozen=True)
class ServeConfig:
    """What to serve and how."""

    artifact: str  # run folder, checkpoint, .onnx or .engine
    host: str = "127.0.0.1"  # loopback by default: expose it deliberately with --host 0.0.0.0
    port: int = 8000
    tta: str = "none"  # any mode of common.tta.ALL_MODES (a graph with TTA baked in keeps its own)
    max_batch: int = 64  # images per model call
    max_wait_ms: float = 0.0  # how long a batch's first request waits for others; 0 = take what queued while the
    # model was busy, which measured best at concurrency 1, 8 and 32 on the 2-core CPU (bench/serve.py, README)
    max_request_bytes: int = 16 << 20  # body size refused with 413 beyond this
    max_images: int = 64  # images per request (413 beyond)
    decode_budget_pixels: int = 24 * MAX_DECODED_PIXELS // 16  # decoded pixels in flight across requests (24 MP)
    body_budget_bytes: int = 64 << 20  # request-body bytes held in flight across requests
    busy_timeout_s: float = 30.0  # longest wait for either budget before 503 with Retry-After (a queue of worst
    # images decodes one at a time: 32 of them take about 15 s on 2 cores)
    body_timeout_s: float = 30.0  # a body not fully received in this long gets 408 (slow or stalled clients)
    max_header_bytes: int = 16 << 10  # request line and headers together; larger is answered 431
    max_connections: int = 256  # open connections; beyond, uvicorn answers 503 at once
    top_k: int = 5  # default classes per image (?top_k= overrides, up to the class count)
    threads: int = 0  # backend CPU threads; 0 = all cores this process may use
    backend: str = "auto"
    provider: str = "auto"
    graceful_timeout_s: float = 30.0  # longest wait for in-flight requests at shutdown


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, before the model is loaded, naming the port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as err:
            raise DawnpipeError(
                f"cannot listen on {host}:{port} ({err.strerror}); another process probably uses port {port}",
                "pick a free port with --port, or stop the other server",
            ) from None


def create_app(cfg: ServeConfig, predictor: Any = None):
    """The FastAPI application; loads the model unless a ready Predictor is passed (tests, embedding)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from starlette.requests import ClientDisconnect

    from dawnpipe.infer.batching import MicroBatcher
    from dawnpipe.infer.limits import Budget
    from dawnpipe.infer.predict import Predictor

    predictor = predictor or Predictor(
        cfg.artifact, tta=cfg.tta, backend=cfg.backend, provider=cfg.provider, threads=cfg.threads
    )
    registry = CollectorRegistry()
    requests = Counter("dawnpipe_requests", "Prediction requests by HTTP status", ["status"], registry=registry)
    errors = Counter("dawnpipe_request_errors", "Refused or failed requests by reason", ["reason"], registry=registry)
    latency = Histogram(
        "dawnpipe_request_seconds",
        "Prediction request latency, body read to response",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        registry=registry,
    )
    batch_images = Histogram(
        "dawnpipe_batch_images",
        "Images per model call (dynamic batching)",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        registry=registry,
    )
    images_total = Counter("dawnpipe_images", "Images classified", registry=registry)
    batcher = MicroBatcher(
        predictor.run,
        max_batch=cfg.max_batch,
        max_wait_s=cfg.max_wait_ms / 1000,
        on_batch=lambda n, seconds: batch_images.observe(n),
    )
    budgets = {
        "pixels": Budget(cfg.decode_budget_pixels, cfg.busy_timeout_s),
        "bytes": Budget(cfg.body_budget_bytes, cfg.busy_timeout_s),
    }
    state = {"ready": False}
    describe = {
        **predictor.backend.describe(),
        "tta": predictor.tta,
        "classes": predictor.classes,
        "threshold": predictor.threshold_in_use(),
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()  # answers every queued request first
            predictor.close()

    app = FastAPI(title="dawnpipe", version=describe.get("run_id") or "dawnpipe", lifespan=lifespan)

    def refused(reason: str, status: int) -> None:
        errors.labels(reason).inc()
        requests.labels(str(status)).inc()

    app.add_middleware(HeaderLimit, max_bytes=cfg.max_header_bytes, max_count=100, on_refuse=refused)
    app.state.batcher, app.state.predictor, app.state.budgets = batcher, predictor, budgets

    @app.get("/healthz")
    async def healthz():
        if not state["ready"]:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok", "model": describe}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/predict")
    async def predict(request: Request, top_k: int | None = None):
        started = time.perf_counter()
        try:
            k = _top_k(top_k, cfg.top_k, len(predictor.classes))
            names, images = await read_images(request, cfg, budgets)
            logits, views = await batcher.submit(images)
        except BadRequest as bad:
            errors.labels(bad.reason).inc()
            requests.labels(str(bad.status)).inc()
            headers = {"Retry-After": "1"} if bad.status == 503 else None
            return JSONResponse({"error": str(bad), "reason": bad.reason}, status_code=bad.status, headers=headers)
        except ClientDisconnect:  # the client hung up mid-body: its fault, not the server's, and nobody to answer
            errors.labels("client_disconnect").inc()
            requests.labels("499").inc()  # nginx's "client closed request"
            return Response(status_code=499)
        except Exception as err:  # the model failed on this batch: a 500 for these requests, the server lives
            errors.labels("model").inc()
            requests.labels("500").inc()
            return JSONResponse({"error": f"model failure: {type(err).__name__}", "reason": "model"}, 500)
        images_total.inc(len(images))
        requests.labels("200").inc()
        latency.observe(time.perf_counter() - started)
        predictions = _top(names, logits, views, predictor.classes, k)
        return {"model": {"run_id": describe.get("run_id"), "tta": predictor.tta}, "predictions": predictions}

    return app


SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")  # the `serve` extra's imports


_REINSTALL = "pip install --force-reinstall 'dawnpipe[serve]' (or pip install -e '.[cpu,serve]' in a checkout)"


def check_serve_installed() -> None:
    """The `serve` extra's packages, importable, or one line naming the problem (never a traceback): a package
    that is missing names the extra; one that is installed but fails to import (a broken or half-upgraded
    environment) names the package and its import error, with the reinstall command."""
    import importlib
    import importlib.util

    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise DawnpipeError(
            f"dawnpipe serve needs the serve extra ({', '.join(missing)} not installed)",
            "pip install 'dawnpipe[serve]' (or pip install -e '.[cpu,serve]' in a checkout)",
        )
    for module in SERVE_MODULES:
        try:
            importlib.import_module(module)
        except Exception as err:  # any import-time failure of a third-party package: ImportError, AttributeError...
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise DawnpipeError(
                f"{module} is installed but fails to import ({type(err).__name__}: {first})", _REINSTALL
            ) from None


def serve(cfg: ServeConfig, say=print) -> None:
    """Check the options and the port, load the model, then serve until SIGINT/SIGTERM."""
    check_serve_installed()
    check_serve_config(cfg)
    release_freed_memory_eagerly()

    check_port_free(cfg.host, cfg.port)
    app = create_app(cfg)
    predictor = app.state.predictor
    say(
        f"serving {cfg.artifact} ({predictor.backend.name}, {predictor.backend.precision}, TTA {predictor.tta}) on "
        f"http://{cfg.host}:{cfg.port}: POST /v1/predict, GET /healthz, GET /metrics; Ctrl-C or SIGTERM stops"
    )
    _graceful_server_class()(uvicorn_config(app, cfg)).run()


def uvicorn_config(app: Any, cfg: ServeConfig, log_level: str = "warning") -> Any:
    """The uvicorn settings the limits rely on (also used by the tests' in-process server)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=log_level,
        timeout_graceful_shutdown=int(cfg.graceful_timeout_s),
        http="h11",  # the pure-Python parser: a header block still arriving past 4x the limit is refused (400)
        h11_max_incomplete_event_size=4 * cfg.max_header_bytes,  # above ours, so HeaderLimit's 431 decides
        limit_concurrency=cfg.max_connections,  # more open connections get 503 from uvicorn itself
        timeout_keep_alive=5,
    )


def _graceful_server_class():
    """Built on first use, so importing this module needs no uvicorn.

    The one place dawnpipe touches a private part of uvicorn: ``Server._captured_signals``, the signals its
    ``capture_signals`` re-raises after a graceful shutdown (uvicorn 0.29 and later; no public switch turns the
    re-raise off). tests/infer/test_server_hardening.py fails if uvicorn renames or drops it."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises the stopping signal after its graceful shutdown, so the process would die of it (a
        KeyboardInterrupt traceback for Ctrl-C); here ``serve`` returns instead and the CLI exits 0."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # uvicorn's list of signals to re-raise after shutdown

    return GracefulServer


def check_serve_config(cfg: ServeConfig) -> None:
    """Every option checked before the model loads."""
    from dawnpipe.common.tta import ALL_MODES

    if cfg.tta not in ALL_MODES:
        raise DawnpipeError(f"unknown TTA mode {cfg.tta!r}", f"use one of {', '.join(ALL_MODES)}")
    if not 0 <= cfg.port <= 65535:
        raise DawnpipeError(f"--port {cfg.port} is not a TCP port", "pass 1-65535")
    if cfg.max_batch < 1 or cfg.max_images < 1 or cfg.max_wait_ms < 0 or cfg.max_request_bytes < 1:
        raise DawnpipeError("--max-batch, --max-images and --max-request-bytes must be positive", "fix the option")
    limits = (cfg.decode_budget_pixels, cfg.body_budget_bytes, cfg.busy_timeout_s, cfg.body_timeout_s,
              cfg.max_header_bytes, cfg.max_connections)  # fmt: skip
    if min(limits) <= 0:
        raise DawnpipeError("the server's budgets, timeouts and limits must be positive", "fix the ServeConfig")
    if not Path(cfg.artifact).expanduser().exists():
        raise DawnpipeError(f"artifact {cfg.artifact} does not exist", "pass a run folder, checkpoint.pt or .onnx")


def _top_k(asked: int | None, default: int, classes: int) -> int:
    if asked is None:
        return min(default, classes)
    if asked < 1:
        raise BadRequest(400, "top_k", f"top_k={asked} must be at least 1")
    return min(asked, classes)


def release_freed_memory_eagerly() -> bool:
    """glibc only: image buffers (tens of MB) always mmapped, so each is returned to the system when freed, and at
    most 2 malloc arenas. Without this glibc raises its mmap threshold after the first large free, and large
    buffers then stay in per-thread heaps after use. True when glibc took both settings.

    Through glibc's documented ``mallopt(3)`` (M_MMAP_THRESHOLD, M_ARENA_MAX), the only way to set them inside a
    running process (the equivalent GLIBC_TUNABLES are read at process start); the one use of ctypes in
    dawnpipe. tests/infer/test_server_hardening.py checks that glibc accepts both on Linux."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    if mallopt is None:
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 20)) and bool(mallopt(m_arena_max, 2))


def _top(names: list[str], logits: np.ndarray, views: np.ndarray, classes: list[str], k: int) -> list[dict]:
    probs = softmax(logits)
    order = np.argsort(-probs, axis=1)[:, :k]
    return [
        {
            "image": names[i],
            "top": [{"class": classes[j], "probability": float(probs[i, j])} for j in order[i]],
            "views": float(views[i]),
        }
        for i in range(len(names))
    ]
