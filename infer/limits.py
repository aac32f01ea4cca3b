"""How much decoding an image may cost, per image and across concurrent requests.

The model sees 32x32 pixels, so a large image is only ever averaged down; what it can cost is memory. Per image:
- a header may promise at most ``MAX_IMAGE_PIXELS`` (50 MP); anything larger is refused before decoding;
- a JPEG is decoded at reduced scale (libjpeg's DCT scaling, 1/2 to 1/8) so that ``REDUCE_TO`` pixels remain on
  its short side: a 50 MP photo decodes to under 1 MP;
- after that, at most ``MAX_DECODED_PIXELS`` (4096 x 4096) may be decoded at full size (PNG, WebP, BMP, ... have
  no reduced decoding): a 32x32 classifier gains nothing from more, and one such image costs at most 64 MB (RGBA);
- a decoded image larger than twice ``REDUCE_TO`` is reduced by an integer factor (box average) before any
  conversion copies it.
Across requests (the server): a ``Budget`` of decoded pixels in flight, and one of request-body bytes in flight;
a request waits for room up to a timeout, then gets 503 with Retry-After. Sizes are measured by
tests/infer/test_server_load.py (peak RSS under 32 concurrent clients sending the worst images these limits
allow) and stated in docs/serving.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MAX_IMAGE_PIXELS = 50_000_000  # header promise; larger is refused before a byte of pixels is decoded
MAX_DECODED_PIXELS = 4096 * 4096  # pixels decoded at full size (after JPEG's reduced-scale decoding)
REDUCE_TO = 256  # short side kept by JPEG draft decoding and by the integer reduction after decoding


class Busy(Exception):
    """The budget had no room within the timeout (the server answers 503 with Retry-After)."""


class Budget:
    """A thread-safe amount (pixels, bytes) shared by concurrent work: reserve, work, release.

    A reservation larger than the whole budget is clipped to it (it then runs alone), so one legal request is
    never refused for its size alone; ``peak`` records the most ever reserved at once.
    """

    def __init__(self, total: int, timeout_s: float) -> None:
        self.total, self.timeout_s = int(total), float(timeout_s)
        self.in_use, self.peak = 0, 0
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> int:
        """Reserve ``amount`` (clipped to the total); raises Busy after ``timeout_s`` without room."""
        amount = min(max(int(amount), 0), self.total)
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while self.in_use + amount > self.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Busy(f"{self.in_use:,} of {self.total:,} in use")
                self._cond.wait(left)
            self.in_use += amount
            self.peak = max(self.peak, self.in_use)
        return amount

    def release(self, amount: int) -> None:
        """Give back what ``acquire`` returned."""
        with self._cond:
            self.in_use -= amount
            self._cond.notify_all()

    @contextmanager
    def reserve(self, amount: int) -> Iterator[None]:
        """``acquire`` for the duration of the block."""
        held = self.acquire(amount)
        try:
            yield
        finally:
            self.release(held)


UNBOUNDED = Budget(1 << 62, 0.0)  # single-process callers (predict): the per-image limits alone apply
