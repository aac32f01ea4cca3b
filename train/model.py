"""Page's ResNet-9 ("How to Train Your ResNet", Myrtle.ai) with the bag-of-tricks switches.

prep (64) -> layer1 (128, pool, residual of two convs) -> layer2 (256, pool) -> layer3 (512, pool, residual)
-> global max pool -> linear -> fixed output scale. Channel counts scale with ``width``.
"""

from __future__ import annotations

import torch
from torch import nn

from dawnpipe.train.config import ModelConfig


class _GhostNormFn(torch.autograd.Function):
    """Per-group batch norm on a (groups, rows, channels) view, with a hand-fused backward, in few kernels.

    Autograd through var_mean + addcmul takes about a dozen passes over the activation; this takes five (two
    reductions and the output in forward; two reductions and one fused expression in backward). Statistics
    accumulate in fp32. The running statistics are updated inside the forward, in one fused lerp over both buffers,
    and only the output is returned, so autograd materialises no zero gradients for statistics nobody
    differentiates (issue 45: 20 forward and 21 backward ops per layer before).
    """

    @staticmethod
    def forward(ctx, g, weight, bias, eps, running):  # type: ignore[override]
        rows = g.shape[1]
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32  # a plain branch: promote_types is an op
        mean = torch.sum(g, dim=1, keepdim=True, dtype=acc).div_(rows)
        var = torch.linalg.vector_norm(g, 2, dim=1, keepdim=True, dtype=acc).square_().div_(rows)
        var.addcmul_(mean, mean, value=-1).clamp_min_(0)
        if running is not None:  # (running_mean, running_var, momentum, n/(n-1)): averaged over the groups
            running_mean, running_var, momentum, bessel = running
            update = torch.cat([mean, var * bessel], dim=1).mean(dim=0)  # (2, channels)
            torch._foreach_lerp_([running_mean, running_var], list(update.unbind(0)), momentum)
        rstd = torch.rsqrt(var + eps)
        scale = rstd * weight
        shift = torch.addcmul(bias, mean, scale, value=-1)
        ctx.save_for_backward(g, mean, rstd, weight)
        ctx.needs_weight_grad = weight.requires_grad
        return torch.addcmul(shift.to(g.dtype), g, scale.to(g.dtype))

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        g, mean, rstd, weight = ctx.saved_tensors
        rows, acc = g.shape[1], mean.dtype
        sum_dy = torch.sum(dy, dim=1, keepdim=True, dtype=acc)
        sum_dy_xhat = torch.sum(dy * g, dim=1, keepdim=True, dtype=acc).addcmul_(mean, sum_dy, value=-1).mul_(rstd)
        # dx = w*rstd*(dy - mean(dy) - xhat*mean(dy*xhat)) = a*dy + b*g + c, with a, b, c per (group, channel)
        a = weight * rstd
        b = (a * rstd).mul_(sum_dy_xhat).mul_(-1.0 / rows)
        c = (a * sum_dy).mul_(-1.0 / rows).addcmul_(b, mean, value=-1)
        dx = torch.addcmul(torch.addcmul(c.to(g.dtype), g, b.to(g.dtype)), dy, a.to(g.dtype))
        dweight = sum_dy_xhat.sum(dim=(0, 1)).to(weight.dtype) if ctx.needs_weight_grad else None
        return dx, dweight, sum_dy.sum(dim=(0, 1)).to(weight.dtype), None, None


class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from groups of ``ghost`` images (Hoffer et al. 2017).

    In channels_last memory (n, h, w, c) a group of consecutive images is one contiguous block, so the
    (groups, ghost*h*w, c) view costs no copy. Running statistics average the groups. Evaluation, and batches
    that do not split into whole groups, use ordinary BatchNorm (the trainer refuses a batch that would not split).
    """

    def __init__(self, num_features: int, ghost: int, freeze_scale: bool, momentum: float = 0.1) -> None:
        super().__init__(num_features, momentum=momentum)
        self.ghost = ghost
        self.weight.requires_grad_(not freeze_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if not self.training or self.ghost <= 0 or n % self.ghost != 0 or n == self.ghost:
            return super().forward(x)
        groups = x.permute(0, 2, 3, 1).reshape(n // self.ghost, self.ghost * h * w, c)
        count = self.ghost * h * w
        running = (self.running_mean, self.running_var, self.momentum, count / (count - 1))
        self.num_batches_tracked.add_(1)
        out = _GhostNormFn.apply(groups, self.weight, self.bias, self.eps, running)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)


def _bn(channels: int, cfg: ModelConfig) -> GhostBatchNorm:
    return GhostBatchNorm(channels, cfg.ghost_batch, cfg.freeze_bn_scale, cfg.bn_momentum)


def _act(cfg: ModelConfig) -> nn.Module:
    return nn.CELU(cfg.celu_alpha) if cfg.celu_alpha > 0 else nn.ReLU(inplace=True)


def _conv_bn(c_in: int, c_out: int, cfg: ModelConfig, *, pool: bool = False, kernel: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)]
    if pool:  # pool before BN: 4x less normalisation work, same accuracy (post 3)
        layers.append(nn.MaxPool2d(2))
    layers += [_bn(c_out, cfg), _act(cfg)]
    return nn.Sequential(*layers)


def _residual(channels: int, cfg: ModelConfig) -> Residual:
    """Post 8's branch conv-BN-act twice, or with ``cfg.preact`` BN-act-conv twice (He et al. 2016)."""
    if cfg.preact:
        conv = lambda: nn.Conv2d(channels, channels, 3, padding=1, bias=False)  # noqa: E731
        return Residual(_bn(channels, cfg), _act(cfg), conv(), _bn(channels, cfg), _act(cfg), conv(),
                        drop=cfg.stochastic_depth)  # fmt: skip
    return Residual(_conv_bn(channels, channels, cfg), _conv_bn(channels, channels, cfg), drop=cfg.stochastic_depth)


class Residual(nn.Module):
    """x + f(x); in training, f(x) is dropped per image with probability ``drop`` (stochastic depth).

    Survivors are scaled by 1/(1-drop) so the expected branch equals the evaluation-time branch: evaluation,
    export and deployment see the plain x + f(x). The mask comes from torch's global generator, whose state the
    checkpoint keeps, so a resumed run draws the masks an uninterrupted one would.
    """

    def __init__(self, *layers: nn.Module, drop: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.body(x)
        if self.training and self.drop > 0:
            keep = torch.empty((x.shape[0], 1, 1, 1), device=x.device, dtype=branch.dtype).bernoulli_(1 - self.drop)
            branch = branch * (keep / (1 - self.drop))
        return x + branch


class ResNet9(nn.Module):
    """The network; input is normalised float NCHW, output is scaled logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c0, c1, c2, c3 = cfg.channels()
        if cfg.whitening:
            # Filled by set_whitening() from training patches; frozen (requires_grad False).
            # With cfg.whiten_bias a learnable bias follows it (airbench94); the trainer stops it learning early.
            self.whiten: nn.Conv2d | None = nn.Conv2d(3, 27, 3, padding=1, bias=cfg.whiten_bias)
            self.whiten.weight.requires_grad_(False)
            if self.whiten.bias is not None:
                nn.init.zeros_(self.whiten.bias)
            self.prep = _conv_bn(27, c0, cfg, kernel=1)
        else:
            self.whiten = None
            self.prep = _conv_bn(3, c0, cfg)
        self.layer1 = nn.Sequential(_conv_bn(c0, c1, cfg, pool=True), _residual(c1, cfg))
        self.layer2 = _conv_bn(c1, c2, cfg, pool=True)
        self.layer3 = nn.Sequential(_conv_bn(c2, c3, cfg, pool=True), _residual(c3, cfg))
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
