"""bench/ghost_bn.py compares like with like: its copy-free candidate is ghost BN (fp64 against the per-group
reference, every gradient), and the layer shapes it times are the network's."""

from __future__ import annotations

import torch

from bench.ghost_bn import ReductionGhostNorm, layer_shapes, measure


def test_the_copy_free_candidate_is_ghost_bn_forward_and_backward():
    torch.manual_seed(0)
    x = (torch.randn(64, 8, 6, 5, dtype=torch.float64) * 2 + 3).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64)
    grad = torch.randn(64, 8, 6, 5, dtype=torch.float64)
    got = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    want = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    out = ReductionGhostNorm.apply(*got, 16, 1e-5)
    groups = want[0].view(4, 16, 8, 6, 5)
    var, mean = torch.var_mean(groups, dim=(1, 3, 4), keepdim=True, correction=0)
    reference = (groups - mean) / torch.sqrt(var + 1e-5) * want[1].view(1, 1, 8, 1, 1) + want[2].view(1, 1, 8, 1, 1)
    reference = reference.reshape(64, 8, 6, 5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, reference, atol=1e-12)
    (out * grad).sum().backward()
    (reference * grad).sum().backward()
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_the_shapes_are_resnet9s_and_a_tiny_measurement_checks_every_kernel():
    shapes = layer_shapes(0.125, torch.device("cpu"))
    assert shapes == [(8, 32, 32), (16, 16, 16), (16, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4), (64, 4, 4),
                      (64, 4, 4)]  # fmt: skip
    result = measure("cpu", "fp32", width=0.125, batch=64, rounds=1, calls=1)
    assert set(result["network_ms"]) == {"gathered", "sliced", "reductions", "batch_norm"}
    assert len(result["layers"]) == 8 and max(result["max_relative_error_fp32"].values()) < 1e-5
