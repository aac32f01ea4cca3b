"""Page's ResNet-9 ("How to Train Your ResNet", Myrtle.ai) with the bag-of-tricks switches.

prep (64) -> layer1 (128, pool, residual of two convs) -> layer2 (256, pool) -> layer3 (512, pool, residual)
-> global max pool -> linear -> fixed output scale. Channel counts scale with ``width``.
"""

from __future__ import annotations

import torch
from torch import nn

from dawnpipe.train.config import ModelConfig


class _GhostNormFn(torch.autograd.Function):
    """Per-group batch norm on a (groups, rows, channels) view, with a hand-fused backward.

    Autograd through var_mean + addcmul takes about a dozen passes over the activation; this takes five
    (stats, output; two reductions and one fused expression in backward). Statistics accumulate in fp32.
    """

    @staticmethod
    def forward(ctx, g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):  # type: ignore[override]
        rows, acc = g.shape[1], torch.promote_types(g.dtype, torch.float32)
        mean = torch.sum(g, dim=1, keepdim=True, dtype=acc) / rows
        sumsq = torch.linalg.vector_norm(g, 2, dim=1, keepdim=True, dtype=acc).square()
        var = (sumsq / rows - mean.square()).clamp_min_(0)
        rstd = torch.rsqrt(var + eps)
        scale = weight.to(acc) * rstd
        shift = bias.to(acc) - mean * scale
        ctx.save_for_backward(g, mean, rstd, weight)
        ctx.mark_non_differentiable(mean, var)
        ctx.needs_weight_grad = weight.requires_grad
        return torch.addcmul(shift.to(g.dtype), g, scale.to(g.dtype)), mean, var

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _dmean: torch.Tensor, _dvar: torch.Tensor):  # type: ignore[override]
        g, mean, rstd, weight = ctx.saved_tensors
        rows, acc = g.shape[1], mean.dtype
        sum_dy = torch.sum(dy, dim=1, keepdim=True, dtype=acc)
        sum_dy_g = torch.sum(dy * g, dim=1, keepdim=True, dtype=acc)
        sum_dy_xhat = (sum_dy_g - mean * sum_dy) * rstd
        # dx = w*rstd*(dy - mean(dy) - xhat*mean(dy*xhat)) = a*dy + b*g + c, with a, b, c per (group, channel)
        a = weight.to(acc) * rstd
        b = -a * rstd * sum_dy_xhat / rows
        c = -a * sum_dy / rows - b * mean
        dx = torch.addcmul(torch.addcmul(c.to(g.dtype), g, b.to(g.dtype)), dy, a.to(g.dtype))
        dweight = sum_dy_xhat.sum(dim=(0, 1)).to(weight.dtype) if ctx.needs_weight_grad else None
        return dx, dweight, sum_dy.sum(dim=(0, 1)).to(weight.dtype), None


class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from groups of ``ghost`` images (Hoffer et al. 2017).

    In channels_last memory (n, h, w, c) a group of consecutive images is one contiguous block, so the
    (groups, ghost*h*w, c) view costs no copy. Running statistics average the groups. Evaluation, and batches
    that do not split into whole groups, use ordinary BatchNorm.
    """

    def __init__(self, num_features: int, ghost: int, freeze_scale: bool) -> None:
        super().__init__(num_features)
        self.ghost = ghost
        self.weight.requires_grad_(not freeze_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if not self.training or self.ghost <= 0 or n % self.ghost != 0 or n == self.ghost:
            return super().forward(x)
        groups = x.permute(0, 2, 3, 1).reshape(n // self.ghost, self.ghost * h * w, c)
        out, mean, var = _GhostNormFn.apply(groups, self.weight, self.bias, self.eps)
        with torch.no_grad():
            count = self.ghost * h * w
            self.running_mean.lerp_(mean.mean(dim=0).view(c), self.momentum)
            self.running_var.lerp_(var.mean(dim=0).view(c) * (count / (count - 1)), self.momentum)
            self.num_batches_tracked.add_(1)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)


def _conv_bn(c_in: int, c_out: int, cfg: ModelConfig, *, pool: bool = False, kernel: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)]
    if pool:  # pool before BN: 4x less normalisation work, same accuracy (post 3)
        layers.append(nn.MaxPool2d(2))
    layers.append(GhostBatchNorm(c_out, cfg.ghost_batch, cfg.freeze_bn_scale))
    layers.append(nn.CELU(cfg.celu_alpha) if cfg.celu_alpha > 0 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The network; input is normalised float NCHW, output is scaled logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c0, c1, c2, c3 = cfg.channels()
        if cfg.whitening:
            # Filled by set_whitening() from training patches; frozen (requires_grad False).
            self.whiten: nn.Conv2d | None = nn.Conv2d(3, 27, 3, padding=1, bias=False)
            self.whiten.weight.requires_grad_(False)
            self.prep = _conv_bn(27, c0, cfg, kernel=1)
        else:
            self.whiten = None
            self.prep = _conv_bn(3, c0, cfg)
        self.layer1 = nn.Sequential(
            _conv_bn(c0, c1, cfg, pool=True), Residual(_conv_bn(c1, c1, cfg), _conv_bn(c1, c1, cfg))
        )
        self.layer2 = _conv_bn(c1, c2, cfg, pool=True)
        self.layer3 = nn.Sequential(
            _conv_bn(c2, c3, cfg, pool=True), Residual(_conv_bn(c3, c3, cfg), _conv_bn(c3, c3, cfg))
        )
        self.linear = nn.Linear(c3, cfg.num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whiten is not None:
            x = self.whiten(x)
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        x = torch.amax(x, dim=(2, 3))  # global max pool, as in the post's MaxPool2d(4) on a 4x4 map
        return self.linear(x) * self.cfg.output_scale

    @torch.no_grad()
    def set_whitening(self, images: torch.Tensor, eps: float = 1e-2) -> None:
        """Set the fixed first layer to PCA-whiten 3x3 patches of ``images`` (normalised float NCHW).

        Filters are eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue + eps) (post 8, eps 1e-2).
        The covariance is accumulated in chunks so 10,000 images need no gigabyte of patches.
        """
        if self.whiten is None:
            return
        cov = torch.zeros(27, 27, dtype=torch.float64)
        count = 0
        for chunk in images.split(1000):
            chunk = chunk.float().cpu()
            h, w = chunk.shape[2] - 2, chunk.shape[3] - 2
            # the 9 shifted copies stacked give every 3x3 patch in (c, kh, kw) order, like conv weights
            # (F.unfold does the same but is 20x slower on CPU)
            shifted = torch.stack([chunk[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], dim=2)
            p = shifted.reshape(len(chunk), 27, h * w)
            cov += torch.bmm(p, p.transpose(1, 2)).sum(0).double()  # float32 per image, float64 across chunks
            count += p.shape[0] * p.shape[2]
        cov /= max(count - 1, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = eigenvectors.T.flip(0) / torch.sqrt(eigenvalues.flip(0) + eps)[:, None]
        self.whiten.weight.copy_(filters.reshape(27, 3, 3, 3).to(self.whiten.weight))


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 NHWC pixels -> normalised float NCHW in channels_last memory (the permute is free).

    ``mean`` and ``std`` are per-channel in pixel units (0-255). The same function runs inside the exported
    graph, so training, evaluation and deployment share one preprocessing definition.
    """
    # Cast before anything else touches the uint8 tensor: TensorRT accepts UINT8 only as a network input that
    # feeds a Cast directly (NVIDIA/TensorRT#3985). The permute after it is still a free channels_last view.
    x = images.to(dtype).permute(0, 3, 1, 2)
    return (x - mean.to(dtype).view(1, -1, 1, 1)) * (1.0 / std).to(dtype).view(1, -1, 1, 1)
