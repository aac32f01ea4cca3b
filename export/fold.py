"""BatchNorm folded into the convolution before it, across a max-pool where that is exact.

In this ResNet-9 three of the BatchNorms follow a max-pool (conv -> pool -> BN -> CELU, post 3's "pool before BN"),
so no exporter or runtime fuses them: every fp32 pass runs them as separate ops, and every int8 block dequantizes,
normalises and requantizes around them. A BatchNorm in eval mode is a per-channel affine map ``y = s * x + t``
with ``s = gamma / sqrt(var + eps)``; a max-pool commutes with it exactly when ``s > 0`` in every channel
(max(s*a, s*b) = s*max(a, b) only for s > 0), so the map moves in front of the pool and into the convolution:
``W' = s * W`` per output channel and ``b' = s * b + t``. A BatchNorm directly after a convolution folds for any
``s``. With the recipe's frozen BN scales (gamma = 1) every ``s`` is positive; a model trained with learnable
scales may have a channel with ``s <= 0``, and that BatchNorm is left in place and named in the report, never
folded wrongly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FoldNote:
    """What happened to one BatchNorm: folded (into which conv, across a pool or not), or kept and why."""

    batchnorm: str
    conv: str | None
    across_pool: bool
    folded: bool
    reason: str = ""

    def to_dict(self) -> dict:
        """Plain dict for manifests and ONNX metadata."""
        return {
            "batchnorm": self.batchnorm,
            "conv": self.conv,
            "across_pool": self.across_pool,
            "folded": self.folded,
            **({"reason": self.reason} if self.reason else {}),
        }


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[FoldNote]]:
    """An eval-mode copy of ``model`` with each foldable BatchNorm merged into its convolution (replaced by
    Identity), and one note per BatchNorm found after a convolution. ``model`` itself is not changed."""
    folded = copy.deepcopy(model).eval()
    notes: list[FoldNote] = []
    for seq_name, seq in folded.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i, (bn_name, bn) in enumerate(children):
            if not isinstance(bn, nn.BatchNorm2d) or i == 0:
                continue
            pool = isinstance(children[i - 1][1], nn.MaxPool2d)
            j = i - 2 if pool else i - 1
            if j < 0 or not isinstance(children[j][1], nn.Conv2d):
                continue
            conv_name, conv = children[j]
            where = f"{seq_name}.{bn_name}" if seq_name else bn_name
            conv_where = f"{seq_name}.{conv_name}" if seq_name else conv_name
            scale, shift = _affine(bn)
            if pool and not bool((scale > 0).all()):
                bad = int((scale <= 0).nonzero()[0])
                notes.append(
                    FoldNote(
                        where,
                        conv_where,
                        pool,
                        False,
                        f"channel {bad} has scale {float(scale[bad]):.3g} <= 0, so the max-pool before it does not "
                        "commute with it",
                    )
                )
                continue
            _merge(conv, scale, shift)
            setattr(seq, bn_name, nn.Identity())
            notes.append(FoldNote(where, conv_where, pool, True))
    return folded, notes


@torch.no_grad()
def _affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as y = scale * x + shift, per channel, in float64 (rounded once, at the end)."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


@torch.no_grad()
def _merge(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = (conv.bias.double() * scale if conv.bias is not None else torch.zeros_like(scale)) + shift
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))


def describe(notes: list[FoldNote]) -> dict:
    """The summary an artifact records: how many folded, and each BatchNorm kept with its reason."""
    return {
        "folded": sum(n.folded for n in notes),
        "across_pool": sum(n.folded and n.across_pool for n in notes),
        "kept": [n.to_dict() for n in notes if not n.folded],
    }
