"""ResNet-9 structure, ghost batch norm against a reference, and the whitening layer."""

from __future__ import annotations

import pytest
import torch

from dawnpipe.train.model import GhostBatchNorm, ModelConfig, ResNet9, normalize
from tests.conftest import assert_is_ghost_bn


def test_output_shape_and_width():
    model = ResNet9(ModelConfig(width=0.125))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert ModelConfig().channels() == (64, 128, 256, 512)
    full = sum(p.numel() for p in ResNet9(ModelConfig()).parameters())
    assert 6_000_000 < full < 7_000_000  # Page's ResNet-9 has about 6.5M parameters


def test_tricks_switch_off():
    model = ResNet9(ModelConfig(width=0.125, whitening=False, ghost_batch=0, freeze_bn_scale=False, celu_alpha=0))
    assert model.whiten is None and isinstance(model.prep[-1], torch.nn.ReLU)
    assert all(m.weight.requires_grad for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_ghost_batch_norm_matches_per_group_reference_and_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(64, 8, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    bn = GhostBatchNorm(8, 16, freeze_scale=False).double()
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    groups = x.view(4, 16, 8, 5, 5)
    var, mean = torch.var_mean(groups, dim=(1, 3, 4), keepdim=True, correction=0)
    want = (groups - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, 1, 8, 1, 1) + bn.bias.view(1, 1, 8, 1, 1)
    assert torch.allclose(bn(x), want.view(64, 8, 5, 5), atol=1e-12)
    assert torch.allclose(bn.running_mean, 0.1 * mean.mean(0).view(8), atol=1e-12)
    small = torch.randn(16, 3, 2, 2, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    tiny = GhostBatchNorm(3, 4, freeze_scale=False).double()
    tiny.weight.data.uniform_(0.5, 1.5)
    small.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: tiny(x), (small, tiny.weight, tiny.bias))


def test_whitening_decorrelates_patches():
    torch.manual_seed(0)
    images = torch.randn(200, 3, 32, 32).cumsum(-1) / 10  # strongly correlated neighbouring pixels
    model = ResNet9(ModelConfig(width=0.125))
    model.set_whitening(images)
    out = model.whiten(images)[:, :, 1:-1, 1:-1].permute(1, 0, 2, 3).reshape(27, -1)
    cov = out @ out.T / out.shape[1]
    leading = cov[:20, :20]  # tiny-eigenvalue directions are damped by eps, the rest are ~unit variance
    assert torch.allclose(leading, torch.diag(torch.diag(leading)), atol=0.05)


def test_normalize_is_channels_last_and_correct():
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    mean, std = torch.tensor([100.0, 110.0, 120.0]), torch.tensor([50.0, 60.0, 70.0])
    x = normalize(images, mean, std, torch.float32)
    assert x.shape == (2, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[1, 2, 5, 7], (images[1, 5, 7, 2].float() - 120) / 70)


def _reference_ghost_forward(self, x):
    """Ghost BN by plain autograd (var_mean over each group, running statistics by lerp): the textbook step the
    fused one replaces."""
    n, c, h, w = x.shape
    if not self.training or n % self.ghost or n == self.ghost:
        return torch.nn.BatchNorm2d.forward(self, x)
    groups = x.view(n // self.ghost, self.ghost, c, h, w)
    var, mean = torch.var_mean(groups, dim=(1, 3, 4), keepdim=True, correction=0)
    out = (groups - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, 1, c, 1, 1)
    out = out + self.bias.view(1, 1, c, 1, 1)
    with torch.no_grad():
        count = self.ghost * h * w
        self.running_mean.lerp_(mean.mean(0).view(c), self.momentum)
        self.running_var.lerp_(var.mean(0).view(c) * count / (count - 1), self.momentum)
        self.num_batches_tracked.add_(1)
    return out.view(n, c, h, w)


@pytest.mark.parametrize("kernel", ["gathered", "sliced"])
@pytest.mark.parametrize("dtype, steps, rtol", [(torch.float64, 20, 1e-6), (torch.float32, 1, 1e-4)])
def test_the_fused_step_trains_as_the_textbook_step(dtype, steps, rtol, kernel):
    """CPU: Nesterov SGD steps (the recipe's x64 bias rate) through the fused ghost BN and through plain autograd end
    at the same weights and running statistics. Two correct kernels that round differently drift apart
    chaotically, about 3x per step here (fp32: 2e-5 after one step, 0.46 of a tensor's scale after 20), so 20 steps
    are compared in float64, where the same growth leaves them within 1e-6; one fp32 step within fp32 rounding."""
    import copy

    import torch.nn.functional as F

    from dawnpipe.train.model import force_ghost_kernel

    torch.manual_seed(0)
    fused = ResNet9(ModelConfig(width=0.125, num_classes=4)).to(dtype, memory_format=torch.channels_last).train()
    textbook = copy.deepcopy(fused)
    for module in textbook.modules():
        if isinstance(module, GhostBatchNorm):
            module.forward = _reference_ghost_forward.__get__(module)
    data = [torch.randn(64, 3, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last) for _ in range(steps)]
    labels = torch.randint(0, 4, (steps, 64))
    for model in (fused, textbook):
        weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
        biases = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
        sgd = torch.optim.SGD([{"params": weights, "lr": 0.02}, {"params": biases, "lr": 1.28}], momentum=0.9,
                              nesterov=True, weight_decay=5e-4)  # fmt: skip
        for x, y in zip(data, labels, strict=True):
            with force_ghost_kernel(kernel):  # each ghost-BN kernel, CUDA's and the CPU's
                loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
            sgd.zero_grad()
            loss.backward()
            sgd.step()
    for (name, a), b in zip(fused.state_dict().items(), textbook.state_dict().values(), strict=True):
        if a.is_floating_point():
            worst = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            assert worst <= rtol, (name, worst)


@pytest.mark.parametrize("kernel", ["gathered", "sliced"])
def test_every_ghost_kernel_matches_the_reference_forward_and_backward(kernel):
    """fp64 on the CPU: the gathered group norm (CUDA's kernel) and the per-group batch norm (the CPU's) give the
    per-group reference's output, input gradient, weight and bias gradients, and the group statistics."""
    from dawnpipe.train.model import GHOST_KERNELS

    want_mean, want_rstd, _, mean, rstd = assert_is_ghost_bn(GHOST_KERNELS[kernel].apply)
    assert torch.allclose(mean, want_mean, atol=1e-12) and torch.allclose(rstd, want_rstd, atol=1e-10)


@pytest.mark.parametrize("kernel", ["gathered", "sliced"])
def test_bf16_ghost_norm_agrees_with_fp32(kernel):
    """bf16 (emulated where not native) through either kernel stays within bf16 rounding of fp32, output and input
    gradient; the statistics stay fp32 (the CPU's kernels take bf16 input with fp32 weights)."""
    from dawnpipe.train.model import force_ghost_kernel

    torch.manual_seed(0)
    x = torch.randn(64, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(64, 16, 4, 4)
    bn = GhostBatchNorm(16, 32, freeze_scale=False)
    bn.defer_running_stats = True  # the statistics stay in batch_stats, as inside ResNet9
    results = []
    with force_ghost_kernel(kernel):
        for dtype in (torch.float32, torch.bfloat16):
            leaf = x.to(dtype).detach().requires_grad_(True)
            out = bn(leaf)
            assert out.dtype == dtype and bn.batch_stats[0].dtype == torch.float32
            (out.float() * grad).sum().backward()
            results.append((out.float(), leaf.grad.float()))
    (want, want_grad), (got, got_grad) = results
    assert (got - want).abs().max() < 0.05 and (got_grad - want_grad).abs().max() < 0.05 * want_grad.abs().max()


def test_the_kernel_follows_the_device_and_can_be_forced():
    from dawnpipe.train.model import force_ghost_kernel, ghost_kernel

    x = torch.zeros(1)
    assert ghost_kernel(x) == "sliced"  # a CPU (bench/ghost_bn.py); CUDA takes "gathered"
    with force_ghost_kernel("gathered"):
        assert ghost_kernel(x) == "gathered"
    assert ghost_kernel(x) == "sliced"
    with pytest.raises(ValueError, match="unknown ghost-BN kernel"):
        with force_ghost_kernel("nope"):
            pass
