"""``torch.compile`` of a module, falling back to eager with a one-line notice, forward and backward alike."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch


class CompiledOrEager:
    """``torch.compile`` of a module (training step, or inference on a CPU), falling back to eager on the first
    failure; ``compiled_ran`` says whether any call really ran compiled, ``notice`` why not.

    The forward compiles lazily at the first call and a failure there falls back at once. The backward compiles
    later, at the first ``.backward()`` (AOTAutograd), outside the forward's call: ``first_step`` runs the first
    training step under the same fallback, restoring the buffers (BatchNorm statistics) the failed compiled
    forward had already updated, so the eager retry is the step an eager run would have taken.
    """

    def __init__(self, module: torch.nn.Module, what: str = "training", **options: Any) -> None:
        self.module = module
        self.what = what
        self.compiled: Any = None
        self.notice: str | None = None
        self.compiled_ran = False
        self.proven = False  # the first training step (forward and backward) ran compiled or fell back
        try:
            self.compiled = torch.compile(module, **options)
        except Exception as err:  # torch.compile itself may refuse (unsupported platform, no dynamo)
            self._fall_back(err)

    def _fall_back(self, err: BaseException) -> None:
        self.compiled = None
        self.compiled_ran = False
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        self.notice = f"torch.compile failed ({type(err).__name__}: {first}); {self.what} continues in eager mode"
        print(f"notice: {self.notice}", file=sys.stderr, flush=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                out = self.compiled(x)
                self.compiled_ran = True
                return out
            except Exception as err:  # compile errors surface on the first call, before any weight changes
                self._fall_back(err)
        return self.module(x)

    def first_step(self, step: Callable[[Any], Any], model: torch.nn.Module) -> Any:
        """Run ``step(self)`` (forward, loss, backward) once; if compiling the backward fails, restore ``model``'s
        buffers and gradients and run ``step(self)`` again, now eager."""
        saved = {name: b.detach().clone() for name, b in model.named_buffers()}
        try:
            result = step(self)
        except Exception as err:
            if self.compiled is None:
                raise  # already eager: a real error of the step, not of the compiler
            self._fall_back(err)
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(saved[name])
            model.zero_grad(set_to_none=True)
            result = step(self)
        self.proven = True
        return result
