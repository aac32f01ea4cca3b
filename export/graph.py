"""The deployable module: uint8 NHWC pixels in, float32 logits out, normalisation and TTA views inside.

The TTA views come from ``dawnpipe.common.tta`` (the same index maps the host-side TTA uses), stacked along the batch
so one model pass serves every view; the deployed graph's cost is exactly views x model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dawnpipe.common.errors import DawnpipeError
from dawnpipe.common.tta import View, views
from dawnpipe.train.checkpoint import model_from_checkpoint
from dawnpipe.train.model import normalize

PRECISIONS = ("fp32", "fp16")


class _DecomposedCELU(nn.Module):
    """CELU from basic ops: ONNX's Celu is float32-only, so fp16 graphs need this form (same values)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, self.alpha * (torch.exp(torch.clamp(x, max=0) / self.alpha) - 1))


class DeployModel(nn.Module):
    """Normalise, build the views, run the classifier once on all of them, average logits by weight."""

    def __init__(
        self,
        classifier: nn.Module,
        mean: list[float],
        std: list[float],
        tta_views: tuple[View, ...],
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.compute_dtype = dtype
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("weights", torch.tensor([v.weight for v in tta_views], dtype=torch.float32))
        self.views = tta_views
        self.folding: dict[str, Any] | None = None  # what export/fold.py folded (None: not folded)
        for i, view in enumerate(tta_views):
            self.register_buffer(f"rows{i}", torch.as_tensor(view.rows(32), dtype=torch.long))
            self.register_buffer(f"cols{i}", torch.as_tensor(view.cols(32), dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast and normalise first, then gather the views: TensorRT takes uint8 only at inputs and Casts, and
        # re-indexing commutes with the per-pixel normalisation, so the values equal the host-side uint8 views.
        x = normalize(images, self.mean, self.std, self.compute_dtype)
        batch = []
        for i, view in enumerate(self.views):
            if view.is_identity():
                batch.append(x)
            else:
                batch.append(x.index_select(2, getattr(self, f"rows{i}")).index_select(3, getattr(self, f"cols{i}")))
        logits = self.classifier(batch[0] if len(batch) == 1 else torch.cat(batch)).float()
        if len(batch) == 1:
            return logits
        per_view = logits.view(len(batch), -1, logits.shape[-1])
        return (per_view * self.weights.view(-1, 1, 1)).sum(0)


def build_deploy_model(
    payload: dict[str, Any],
    *,
    weights: str = "ema",
    tta: str = "none",
    shift: int = 1,
    precision: str = "fp32",
    fold_bn: bool = True,
) -> DeployModel:
    """The eval-mode deployable module for a loaded checkpoint.

    ``fold_bn``: BatchNorms merged into their convolutions where exact (export/fold.py); ``.folding`` on the
    result says what was folded and what was kept. False gives the network exactly as trained (the reference).
    """
    from dawnpipe.export.fold import describe, fold_batchnorm

    if precision not in PRECISIONS:
        raise DawnpipeError(f"unknown precision {precision!r}", "use --precision fp32 or fp16")
    classifier = model_from_checkpoint(payload, weights)
    folding = None
    if fold_bn:
        classifier, notes = fold_batchnorm(classifier)
        folding = describe(notes)
    dtype = torch.float32
    if precision == "fp16":
        for module in list(classifier.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.CELU):
                    setattr(module, name, _DecomposedCELU(child.alpha))
        classifier = classifier.half()
        dtype = torch.float16
    norm = payload["normalization"]
    model = DeployModel(classifier, norm["mean"], norm["std"], views(tta, shift), dtype).eval()
    model.folding = folding
    return model
