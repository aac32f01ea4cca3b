"""What an HTTP request brings the server: headers within a limit, a body read within a deadline and a byte budget,
and images decoded on a few threads within a pixel budget. Every refusal is a ``BadRequest`` with its HTTP status
and a reason the metrics count; the server turns it into a 4xx (or 503 when a budget stays spent) JSON answer.
"""

# No `from __future__ import annotations`: the server's FastAPI handlers call into here at runtime.

import io
from typing import Any

import numpy as np

from dawnpipe.common.errors import DawnpipeError


class BadRequest(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


class HeaderLimit:
    """ASGI middleware: 431 for a request whose line and headers exceed ``max_bytes`` or ``max_count`` headers.

    uvicorn's h11 limit bounds only a header block still arriving; one that arrives whole in a single read (any
    loopback client, and most others) is accepted at any size, so the limit is enforced here, once parsed.
    """

    def __init__(self, app: Any, max_bytes: int, max_count: int, on_refuse: Any) -> None:
        self.app, self.max_bytes, self.max_count, self.on_refuse = app, max_bytes, max_count, on_refuse

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers", [])
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(k) + len(v) + 4 for k, v in headers)
            if size > self.max_bytes or len(headers) > self.max_count:
                from starlette.responses import JSONResponse

                self.on_refuse("headers_too_large", 431)
                message = f"the request line and headers are {size:,} bytes in {len(headers)} headers; the limits are "
                message += f"{self.max_bytes:,} bytes and {self.max_count} headers"
                response = JSONResponse({"error": message, "reason": "headers_too_large"}, status_code=431)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_body(request: Any, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (declared or streamed), and with 408 when it
    has not fully arrived within ``timeout_s`` (a client trickling bytes holds memory and a connection)."""
    import asyncio

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, "too_large", f"the body is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, size = [], 0

    async def receive_all() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, "too_large", f"the body passed the {limit:,}-byte limit")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive_all(), timeout_s)
    except asyncio.TimeoutError:
        raise BadRequest(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


async def read_images(request: Any, cfg: Any, budgets: dict) -> tuple[list[str], np.ndarray]:
    """(names, uint8 [N, 32, 32, 3]) from a raw image body or a multipart form of image files.

    The body's bytes are held against the server's byte budget and each image's decoded pixels against its pixel
    budget (infer/limits.py); a request that finds no room within busy_timeout_s gets 503 with Retry-After.
    """
    from starlette.concurrency import run_in_threadpool

    from dawnpipe.infer.limits import Busy

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind == "multipart/form-data" or kind == "application/octet-stream"):
        raise BadRequest(415, "content_type", f"Content-Type {kind or '(none)'} is not an image or multipart/form-data")
    declared = request.headers.get("content-length")
    expected = int(declared) if declared is not None and declared.isdigit() else cfg.max_request_bytes
    try:
        held = await run_in_threadpool(budgets["bytes"].acquire, min(expected, cfg.max_request_bytes))
    except Busy:
        raise BadRequest(503, "busy", "the server holds its limit of request bodies; retry shortly") from None
    try:
        return await _parse_and_decode(request, kind, cfg, budgets["pixels"])
    finally:
        budgets["bytes"].release(held)


async def _parse_and_decode(request: Any, kind: str, cfg: Any, pixels: Any) -> tuple[list[str], np.ndarray]:
    """The images of a body (raw or multipart), decoded against the pixel budget."""
    from starlette.requests import Request

    from dawnpipe.infer.limits import Busy

    body = await _read_body(request, cfg.max_request_bytes, cfg.body_timeout_s)
    if not body:
        raise BadRequest(400, "empty", "the request has no body; send image bytes")
    if kind != "multipart/form-data":
        parts = [("image", body)]
    else:

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=cfg.max_images, max_fields=cfg.max_images)
        except Exception as err:  # malformed multipart, or more parts than the limit
            if "Too many" in str(err):
                raise BadRequest(413, "too_many", f"more than {cfg.max_images} parts in one request") from None
            raise BadRequest(400, "multipart", f"the multipart body could not be read ({err})") from None
        parts = [(f.filename or key, await f.read()) for key, f in form.multi_items() if hasattr(f, "read")]
        if not parts:
            raise BadRequest(400, "empty", "the multipart body holds no file parts")
    if len(parts) > cfg.max_images:
        raise BadRequest(413, "too_many", f"{len(parts)} images in one request; the limit is {cfg.max_images}")
    import asyncio

    try:
        images = await asyncio.get_running_loop().run_in_executor(
            _decoders(), lambda: [_decode(name, data, pixels) for name, data in parts]
        )
    except Busy:
        raise BadRequest(503, "busy", "the server is decoding its limit of pixels; retry shortly") from None
    return [name for name, _ in parts], np.stack(images)


_DECODERS: list = []


def _decoders() -> Any:
    """The few threads that decode images: decoding is CPU work, and every extra thread would get its own malloc
    arena that keeps freed image buffers (32 threads each keeping tens of MB measured 1.5 GB of RSS)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    if not _DECODERS:
        _DECODERS.append(ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="decode"))
    return _DECODERS[0]


def _decode(name: str, data: bytes, pixels: Any) -> np.ndarray:
    from PIL import UnidentifiedImageError

    from dawnpipe.infer.predict import decode_to_model_input

    if not data:
        raise BadRequest(400, "empty", f"{name} has 0 bytes")
    try:
        return decode_to_model_input(io.BytesIO(data), name, pixels)
    except DawnpipeError as err:  # more pixels than dawnpipe (or Pillow) decodes
        raise BadRequest(413, "too_many_pixels", str(err)) from None
    except UnidentifiedImageError:
        raise BadRequest(400, "not_an_image", f"{name} is not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated or damaged data
        raise BadRequest(400, "damaged_image", f"{name} could not be decoded ({err})") from None
