"""bench/ghost_bn.py compares like with like: its copy-free candidate is ghost BN (fp64 against the per-group
reference, every gradient), and the layer shapes it times are the network's."""

from __future__ import annotations

import torch

from bench.ghost_bn import ReductionGhostNorm, layer_shapes, measure
from tests.conftest import assert_is_ghost_bn


def test_the_copy_free_candidate_is_ghost_bn_forward_and_backward():
    assert_is_ghost_bn(ReductionGhostNorm.apply)


def test_the_shapes_are_resnet9s_and_a_tiny_measurement_checks_every_kernel():
    shapes = layer_shapes(0.125, torch.device("cpu"))
    assert shapes == [(8, 32, 32), (16, 16, 16), (16, 16, 16), (16, 16, 16), (32, 8, 8), (64, 4, 4), (64, 4, 4),
                      (64, 4, 4)]  # fmt: skip
    result = measure("cpu", "fp32", width=0.125, batch=64, rounds=1, calls=1)
    assert set(result["network_ms"]) == {"gathered", "sliced", "reductions", "batch_norm"}
    assert len(result["layers"]) == 8 and max(result["max_relative_error_fp32"].values()) < 1e-5
