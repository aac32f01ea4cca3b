"""Page's ResNet-9 ("How to Train Your ResNet", Myrtle.ai) with the bag-of-tricks switches.

prep (64) -> layer1 (128, pool, residual of two convs) -> layer2 (256, pool) -> layer3 (512, pool, residual)
-> global max pool -> linear -> fixed output scale. Channel counts scale with ``width``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from dawnpipe.train.config import ModelConfig


class _GatheredNormFn(torch.autograd.Function):
    """Per-group batch norm as one native kernel each way: a ghost group is an instance of ``group_norm``.

    ``native_group_norm`` with one channel per group, over the activations gathered contiguous as (groups, c,
    ghost*h*w) (one ``as_strided_copy`` in and one out each way: CUDA's kernel takes only contiguous input),
    normalises each (group, channel) over (ghost, h, w): ghost BN's statistics in one reduction, the output in the
    same kernel, the backward in one more (weight and bias gradients included). Mean and 1/std come back for the
    running statistics, which the owner updates for every layer at once (``update_running_stats``); they are not
    differentiated, so autograd materialises no gradients for them (issue 45: 20 forward and 21 backward
    dispatcher ops per layer before, 8 now). The kernel on CUDA; whether its copies cost a GPU step more than a
    copy-free layout would is what bench/ghost_bn.py measures on the next loan.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, ghost, eps):  # type: ignore[override]
        n, c, h, w = x.shape
        groups = n // ghost
        v = _gathered(x, groups)
        # CPU's kernel takes reduced-precision input with fp32 weights; elsewhere the weights are cast to match
        w_, b_ = (weight, bias) if x.device.type == "cpu" else (weight.to(x.dtype), bias.to(x.dtype))
        out, mean, rstd = torch.native_group_norm(v, w_, b_, groups, c, ghost * h * w, c, eps)
        ctx.save_for_backward(v, mean, rstd, w_)
        ctx.param_dtype, ctx.ghost = weight.dtype, ghost
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)
        return _scattered(out, ghost), mean, rstd

    @staticmethod
    def backward(ctx, dy, _mean, _rstd):  # type: ignore[override]
        if dy is None:  # the output took no part in the loss
            return None, None, None, None, None
        v, mean, rstd, w_ = ctx.saved_tensors
        groups, c = v.shape[:2]
        dy = dy.contiguous(memory_format=torch.channels_last)  # free when it already is (the usual case)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dx, dweight, dbias = torch.ops.aten.native_group_norm_backward(
            _gathered(dy, groups), v, mean, rstd, w_, groups, c, v.numel() // (groups * c), c, mask
        )
        dx = None if dx is None else _scattered(dx, ctx.ghost)
        dweight = None if dweight is None else dweight.to(ctx.param_dtype)
        dbias = None if dbias is None else dbias.to(ctx.param_dtype)
        return dx, dweight, dbias, None, None


class _SlicedNormFn(torch.autograd.Function):
    """Per-group batch norm as the device's own batch-norm kernel on each group: consecutive images are a contiguous
    slice of channels_last memory (a view), so each group is one ``native_batch_norm`` (it returns the group's mean
    and 1/std for the running statistics) and the outputs are joined by one ``cat``; the backward likewise.

    Two ops per group each way, so the op count grows with the batch; on a CPU it is the fastest layout measured
    (bench/ghost_bn.py, width 1, batch 256, 2-core Xeon with AMX: ghost BN's share of a step 96 ms against the
    gathered group norm's 319 in bf16, 187 against 669 in fp32, where the group norm on the free channels_last view,
    the fp32 path before, took 275 in a run of the bench before that path went; plain BN over the whole batch 78
    and 159; docs/results/bench/ghost-bn-*-xeon-amx.json).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, ghost, eps):  # type: ignore[override]
        outs, means, rstds = zip(*[torch.native_batch_norm(part, weight, bias, None, None, True, 0.0, eps)
                                   for part in x.split(ghost)], strict=True)  # fmt: skip
        ctx.save_for_backward(x, weight)
        ctx.stats = list(zip(means, rstds, strict=True))  # per group, as the kernel gave them (no unbind later)
        ctx.ghost, ctx.eps = ghost, eps
        mean, rstd = torch.stack(means), torch.stack(rstds)
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)
        return torch.cat(outs), mean, rstd

    @staticmethod
    def backward(ctx, dy, _mean, _rstd):  # type: ignore[override]
        if dy is None:  # the output took no part in the loss
            return None, None, None, None, None
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        backward = torch.ops.aten.native_batch_norm_backward
        parts = [
            backward(d, part, weight, None, None, mean, rstd, True, ctx.eps, mask)
            for d, part, (mean, rstd) in zip(dy.split(ctx.ghost), x.split(ctx.ghost), ctx.stats, strict=True)
        ]
        dx = torch.cat([p[0] for p in parts]) if mask[0] else None
        dweight = torch.stack([p[1] for p in parts]).sum(0) if mask[1] else None
        dbias = torch.stack([p[2] for p in parts]).sum(0) if mask[2] else None
        return dx, dweight, dbias, None, None


GHOST_KERNELS = {"gathered": _GatheredNormFn, "sliced": _SlicedNormFn}
_forced_kernel: list[str] = []  # force_ghost_kernel's stack


def ghost_kernel(x: torch.Tensor) -> str:
    """The ghost-BN kernel for this input: ``sliced`` on a CPU (measured fastest there in fp32 and bf16), ``gathered``
    on CUDA (one kernel each way, a fixed op count), unless ``force_ghost_kernel`` says otherwise."""
    if _forced_kernel:
        return _forced_kernel[-1]
    return "sliced" if x.device.type == "cpu" else "gathered"


@contextlib.contextmanager
def force_ghost_kernel(name: str) -> Iterator[None]:
    """Run ghost BN with kernel ``name`` inside the block, on any device: for measurement (bench/step_ops.py counts
    CUDA's kernel on a CPU) and the tests that hold every kernel to the reference."""
    if name not in GHOST_KERNELS:
        raise ValueError(f"unknown ghost-BN kernel {name!r}; known: {', '.join(GHOST_KERNELS)}")
    _forced_kernel.append(name)
    try:
        yield
    finally:
        _forced_kernel.pop()


def _gathered(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(n, c, h, w) in channels_last memory -> contiguous (groups, c, n/groups, h, w): one copy, one op."""
    n, c, h, w = x.shape
    ghost = n // groups
    return torch.ops.aten.as_strided_copy(x, (groups, c, ghost, h, w), (ghost * h * w * c, 1, h * w * c, w * c, c))


def _scattered(v: torch.Tensor, ghost: int) -> torch.Tensor:
    """``_gathered`` undone: contiguous (groups, c, ghost, h, w) -> (n, c, h, w) in channels_last memory."""
    groups, c, _, h, w = v.shape
    plane = ghost * h * w
    nhwc = torch.ops.aten.as_strided_copy(v, (groups, ghost, h, w, c), (c * plane, h * w, w, 1, plane))
    return nhwc.as_strided((groups * ghost, c, h, w), (h * w * c, 1, w * c, c))


@torch.no_grad()
def update_running_stats(layers: list[GhostBatchNorm]) -> None:
    """Fold the batch statistics every layer kept from its last training forward into its running statistics, in
    a fixed handful of ops for all layers together (8, not six per layer): each running mean and unbiased variance
    moves towards the average over the ghost groups, as ``nn.BatchNorm2d`` does with one group."""
    live = [m for m in layers if m.batch_stats is not None]
    if not live:
        return
    sizes = [m.num_features for m in live]
    stats = torch.cat([m.batch_stats[0] for m in live] + [m.batch_stats[1] for m in live], dim=1)
    stats = stats.to(live[0].running_mean.dtype)  # free unless a device kept reduced-precision statistics
    stats[:, sum(sizes) :].pow_(-2)  # 1/std -> var + eps
    scale, shift = _stat_affine(live, stats.device, stats.dtype)
    targets = torch.addcmul(shift, stats.mean(0), scale)  # means as they are; variances (v - eps) * n/(n-1)
    running = [m.running_mean for m in live] + [m.running_var for m in live]
    torch._foreach_lerp_(running, list(targets.split(sizes * 2)), [float(m.momentum) for m in live] * 2)
    torch._foreach_add_([m.num_batches_tracked for m in live], 1)
    for m in live:
        m.batch_stats = None


_AFFINES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _stat_affine(live: list[GhostBatchNorm], device: torch.device, dtype: torch.dtype) -> tuple:
    """(scale, shift) taking the group-averaged (means, var + eps) of ``live`` to (means, unbiased variances):
    made once per layer set and kept, so a step pays one op for it."""
    key = (device, dtype, tuple((m.num_features, m.eps, m.batch_stats[2]) for m in live))
    if key not in _AFFINES:
        ones = [1.0] * sum(m.num_features for m in live)
        bessel = [m.batch_stats[2] for m in live for _ in range(m.num_features)]
        shift = [0.0] * len(ones) + [-m.eps * m.batch_stats[2] for m in live for _ in range(m.num_features)]
        _AFFINES[key] = (torch.tensor(ones + bessel, device=device, dtype=dtype),
                         torch.tensor(shift, device=device, dtype=dtype))  # fmt: skip
    return _AFFINES[key]


class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from groups of ``ghost`` images (Hoffer et al. 2017).

    Groups are consecutive images; running statistics average the groups. Evaluation, and batches that do not
    split into whole groups, use ordinary BatchNorm (the trainer refuses a batch that would not split). A layer
    alone updates its running statistics in its forward; inside ``ResNet9`` (``defer_running_stats``) the network
    updates all of them at once after its forward.
    """

    def __init__(self, num_features: int, ghost: int, freeze_scale: bool, momentum: float = 0.1) -> None:
        super().__init__(num_features, momentum=momentum)
        self.ghost = ghost
        self.weight.requires_grad_(not freeze_scale)
        self.defer_running_stats = False
        self.batch_stats: tuple[torch.Tensor, torch.Tensor, float] | None = None  # (mean, 1/std, n/(n-1)) per group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if not self.training or self.ghost <= 0 or n % self.ghost != 0 or n == self.ghost:
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)  # free in the trainer's channels_last network
        kernel = GHOST_KERNELS[ghost_kernel(x)]
        out, mean, rstd = kernel.apply(x, self.weight, self.bias, self.ghost, self.eps)
        count = self.ghost * h * w
        self.batch_stats = (mean, rstd, count / (count - 1))
        if not self.defer_running_stats:
            update_running_stats([self])
        return out


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
        self._ghost_layers = [m for m in self.modules() if isinstance(m, GhostBatchNorm)]  # a plain list: no submodule
        for m in self._ghost_layers:
            m.defer_running_stats = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.whiten is not None:
            x = self.whiten(x)
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        x = torch.amax(x, dim=(2, 3))  # global max pool, as in the post's MaxPool2d(4) on a 4x4 map
        if self.training:
            update_running_stats(self._ghost_layers)  # every layer's running statistics in one pass
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
