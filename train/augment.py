"""Batched training augmentation on the device: random translate (reflect pad + crop), flip, cutout.

Everything is one gather plus one mask over the whole batch: no per-image Python loop. Works on uint8 NHWC
images (the on-device storage format) and returns uint8 NHWC, so it is exact and cheap to move.
"""

from __future__ import annotations

import torch


def reflect_index(size: int, pad: int, device: torch.device | None = None) -> torch.Tensor:
    """Source index of each position of a reflect-padded axis: [pad..1, 0..size-1, size-2..size-1-pad]."""
    i = torch.arange(-pad, size + pad, device=device)
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def alternating_flips(count: int, seed: int, epoch: int) -> torch.Tensor:
    """Which images to flip in ``epoch`` under alternating flip (airbench; Jordan 2024, arXiv 2404.00498): a
    seeded random half in the first epoch, then every image flipped in alternate epochs, so each image is seen
    once flipped and once not in every pair of epochs (random flips repeat a view about half the time)."""
    first = torch.randint(0, 2, (count,), generator=torch.Generator().manual_seed(seed * 7919 + 17)).bool()
    return first ^ bool(epoch % 2)


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    pad: int,
    flip: bool,
    cutout: int,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random crop of the reflect-padded image, optional horizontal flip and cutout, for a whole uint8 NHWC batch.

    The randomness comes from ``generator`` only, so a seeded generator repeats the batch exactly. ``flips``
    (bool per image) replaces the random flip when given (alternating flip).
    """
    n, h, w, _ = images.shape
    dev = images.device
    rand = lambda *shape, high: torch.randint(0, high, shape, generator=generator, device=generator.device).to(dev)  # noqa: E731
    dy, dx = rand(n, high=2 * pad + 1), rand(n, high=2 * pad + 1)
    rows = reflect_index(h, pad, dev)[dy[:, None] + torch.arange(h, device=dev)]  # (n, h) source rows
    cols = torch.arange(w, device=dev).expand(n, w)
    if flips is not None:
        cols = torch.where(flips.to(dev)[:, None], cols.flip(1), cols)
    elif flip:
        flipped = rand(n, high=2).bool()
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    cols = reflect_index(w, pad, dev)[dx[:, None] + cols]
    out = images[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if cutout > 0:
        cy, cx = rand(n, high=h - cutout + 1), rand(n, high=w - cutout + 1)
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        inside_y = (ys[None] >= cy[:, None]) & (ys[None] < cy[:, None] + cutout)
        inside_x = (xs[None] >= cx[:, None]) & (xs[None] < cx[:, None] + cutout)
        out = out.masked_fill((inside_y[:, :, None] & inside_x[:, None, :])[..., None], 0)
    return out
