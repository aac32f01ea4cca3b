"""The training step as a function of device tensors, and its CUDA graph.

``TrainStep.run(x, y, targets)`` is one step: this step's learning rates from a device table, forward, the
label-smoothed loss, backward, the loss scale's unscale-and-check (fp16), the fused Nesterov SGD step, and the
epoch's loss and accuracy sums. Every per-step value lives in a device tensor (the step counter indexes the
learning-rate table on the device), so the step reads nothing from the host and makes no host sync, and the same
function can be captured once as a CUDA graph and replayed: one launch per step instead of about 200 dispatcher
ops, each a kernel launch plus Python (issue 45). The EMA update, every ``ema_every`` steps, is a second graph whose
weight is a device scalar filled before each replay.

A graph is used on CUDA, for an eager model in one process (``cfg.cuda_graph``, default on): torch.compile has its
own graphs, and DDP's gradient hooks are left to run eagerly. A capture that fails leaves a one-line notice and
the eager step; the manifest says which ran. On a CPU the same function runs eagerly, so every CPU test exercises
the step a graph captures.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dawnpipe.train.config import TrainConfig
from dawnpipe.train.evaluation import autocast
from dawnpipe.train.parts import ModelParts


def smoothed_targets(labels: torch.Tensor, classes: int, smoothing: float, dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:  # fmt: skip
    """Label-smoothed target distributions, made once per epoch: cross-entropy against them equals
    ``F.cross_entropy(logits, labels, label_smoothing=smoothing)`` in half its ops per step (14 against 28)."""
    targets = F.one_hot(labels.long(), classes).to(dtype).mul_(1.0 - smoothing)
    return targets.add_(smoothing / classes)


class TrainStep:
    """One training step over device tensors, eager or replayed from a captured CUDA graph."""

    def __init__(self, cfg: TrainConfig, parts: ModelParts, dev: Any, live: Any, compiled: Any) -> None:
        self.cfg, self.parts, self.dev, self.live, self.compiled = cfg, parts, dev, live, compiled
        device = dev.device
        groups = parts.optimizer.param_groups
        steps = np.arange(cfg.epochs * parts.steps_per_epoch)
        columns = [parts.lrs * g["lr_scale"] * (steps < g.get("until_step", np.inf)) for g in groups]
        dtype = groups[0]["params"][0].dtype  # the parameters' dtype: fp32 in training, fp64 in exactness tests
        self.lr_table = torch.tensor(np.stack(columns, axis=1), dtype=dtype, device=device)
        self.lr_row = torch.zeros((1, len(groups)), dtype=dtype, device=device)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)  # steps done: this step's row of the table
        for index, group in enumerate(groups):  # the fused kernel reads each group's rate from the device
            group["lr"] = self.lr_row[0, index]
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.graph: Any = None
        self.ema_graph: Any = None
        self.ema_weight = torch.zeros((), device=device)
        self.notice: str | None = None
        self._static: tuple[torch.Tensor, ...] = ()

    @property
    def wants_graph(self) -> bool:
        """Whether this run captures the step: CUDA, eager, one process, and asked (the default)."""
        return (
            self.cfg.cuda_graph and self.dev.device.type == "cuda" and self.compiled is None
            and self.live is self.parts.model
        )  # fmt: skip

    def start_epoch(self, step_index: int) -> None:
        """Point the learning-rate counter at ``step_index`` (steps done before it) and zero the epoch's sums."""
        self.counter.fill_(step_index)
        self.loss_sum.zero_()
        self.correct.zero_()

    def run(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor) -> None:
        """One step on images ``x`` (normalised), labels ``y`` and their smoothed ``targets``."""
        if self.graph is None:
            self.parts.optimizer.zero_grad(set_to_none=True)
            self._body(x, y, targets)
            return
        for static, new in zip(self._static, (x, y, targets), strict=True):
            static.copy_(new)
        self.graph.replay()

    def update_ema(self, decay: float, pull_back: bool) -> None:
        """The EMA ``decay`` of the way to the live weights (host-computed decay, device update)."""
        if self.ema_graph is None:
            self.parts.ema.apply(1.0 - decay, pull_back)
            return
        self.ema_weight.fill_(1.0 - decay)
        self.ema_graph.replay()

    def _body(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor) -> None:
        parts = self.parts
        torch.index_select(self.lr_table, 0, self.counter, out=self.lr_row)
        self.counter.add_(1)
        if self.compiled is not None and not self.compiled.proven:  # the backward compiles here: same fallback
            logits, loss = self.compiled.first_step(lambda net: self._forward_backward(net, x, targets), parts.model)
        else:
            logits, loss = self._forward_backward(self.compiled or self.live, x, targets)
        if parts.loss_scale is not None:
            parts.loss_scale.unscale_(parts.optimizer)
        self._sgd()
        with torch.no_grad():
            self.loss_sum.add_(loss)
            self.correct.add_((logits.argmax(1) == y).sum())

    def _sgd(self) -> None:
        """The optimizer's step as its fused kernel, one call per parameter group: what ``SGD(fused=True).step()``
        runs, without the step's profiler markers (2 dispatcher ops per step) and its per-step Python. The
        optimizer object still owns the momentum buffers and the rates, so checkpoints hold the same state."""
        optimizer = self.parts.optimizer
        found_inf = getattr(optimizer, "found_inf", None)  # fp16: the loss scale's flag skips the whole update
        for group in optimizer.param_groups:
            params = group["params"]
            torch._fused_sgd_(params, [p.grad for p in params], [optimizer.state[p]["momentum_buffer"] for p in params],
                              weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
                              dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
                              is_first_step=False, grad_scale=None, found_inf=found_inf)  # fmt: skip

    def _forward_backward(self, net: Any, x: torch.Tensor, targets: torch.Tensor) -> tuple:
        # no autocast weight-cast cache: a cached cast would be freed into the graph's pool when the region exits
        # while the captured kernels still read it (PyTorch's CUDA graphs notes: autocast with cache_enabled=False)
        with autocast(self.dev, cache=False):
            logits = net(x)
            wide = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # autocast's logits
            loss = F.cross_entropy(wide, targets)  # label smoothing is in the targets
        scale = self.parts.loss_scale
        (loss if scale is None else scale.scale(loss)).backward()  # fp16: scaled, unscaled before the step
        return logits, loss

    def capture(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, pull_back: bool) -> None:
        """Capture the step (and the EMA update) as CUDA graphs on these shapes, after eager warm-up steps have run
        on them; the caller undoes what those steps did. Capture records, it runs nothing. On failure: eager."""
        try:
            self._static = (x.clone(), y.clone(), targets.clone())
            self.parts.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated by the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body(*self._static)
            ema_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(ema_graph):
                self.parts.ema.apply(self.ema_weight, pull_back)
        except Exception as err:  # an op the capture refuses: the eager step, with a notice
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            self.notice = f"CUDA graph capture failed ({type(err).__name__}: {first}); training runs eagerly"
            print(f"notice: {self.notice}", file=sys.stderr, flush=True)
            self.graph = self.ema_graph = None
            self._static = ()
            return
        self.graph, self.ema_graph = graph, ema_graph

    def describe(self) -> dict[str, Any]:
        """What the manifest records about how the step ran."""
        return {"cuda_graph": self.graph is not None, "asked": self.cfg.cuda_graph, "notice": self.notice}
