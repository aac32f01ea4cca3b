"""Dynamic micro-batching: images from concurrent requests share one model call.

    batcher = MicroBatcher(predictor.run, max_batch=64, max_wait_s=0.005)
    await batcher.start()
    logits, views = await batcher.submit(images)     # from any number of concurrent request handlers
    await batcher.stop()                             # finishes every queued request first

The worker takes the first queued request, then keeps collecting until ``max_batch`` images or ``max_wait_s``
after that first request, and runs the batch on one executor thread (one model call at a time, off the event
loop). A request is never split, so its images stay together; a batch exceeds ``max_batch`` only when a single
request alone does. Results go back to each request in its own order: per-image TTA decisions (selective
modes) do not depend on the batch, so batching changes speed, never answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Queue + one worker task + one model thread. ``run(images) -> ModeResult`` (logits, selected, ...)."""

    def __init__(
        self,
        run: Callable[[np.ndarray], Any],
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch or (lambda images, seconds: None)
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dawnpipe-model")
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Answer everything already queued, then stop the worker and the model thread."""
        if self._worker is not None:
            await self._queue.put(None)
            await self._worker
            self._worker = None
        self._executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits [N, classes] and views per image [N] for this request's uint8 [N, 32, 32, 3] images."""
        if self._worker is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(images, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            items, count = [first], len(first.images)
            deadline = loop.time() + self.max_wait_s
            while count < self.max_batch:
                remaining = deadline - loop.time()
                try:
                    if remaining > 0:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    else:
                        item = self._queue.get_nowait()
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if item is None:
                    stopping = True  # answer this batch, then stop
                    break
                items.append(item)
                count += len(item.images)
            await self._answer(items, loop)

    async def _answer(self, items: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        batch = np.concatenate([item.images for item in items])
        started = loop.time()
        try:
            result = await loop.run_in_executor(self._executor, self._run, batch)
        except Exception as err:  # every request of the batch learns of it; the worker lives on
            for item in items:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        self._on_batch(len(batch), loop.time() - started)
        views = _views_per_image(result, len(batch))
        start = 0
        for item in items:
            end = start + len(item.images)
            if not item.future.done():  # a client that went away leaves a cancelled future
                item.future.set_result((result.logits[start:end], views[start:end]))
            start = end


def _views_per_image(result: Any, count: int) -> np.ndarray:
    """Views each image actually took: the mode's full count, or 1 for selective images that kept the plain
    view (``result.selected`` marks those that took the extra views)."""
    selected = np.asarray(result.selected, dtype=bool)
    if result.views_per_image <= 1 or selected.all():
        return np.full(count, float(result.views_per_image))
    extra = (result.views_per_image - 1) / max(selected.mean(), 1e-12)
    return np.where(selected, 1.0 + extra, 1.0)
