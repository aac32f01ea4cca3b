"""The training step's optional ``torch.compile``, with a one-line fallback to eager mode."""

from __future__ import annotations

import sys
from typing import Any

import torch


class CompiledOrEager:
    """``torch.compile`` of a module for the training step, falling back to eager on the first failure.

    Compilation happens lazily at the first call, so that is where a missing compiler or an unsupported op shows
    up; the fallback prints one line and the run goes on in eager mode (same weights, same numbers).
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.compiled: Any = None
        self.notice: str | None = None
        try:
            self.compiled = torch.compile(module)
        except Exception as err:  # torch.compile itself may refuse (unsupported platform, no dynamo)
            self._fall_back(err)

    def _fall_back(self, err: BaseException) -> None:
        self.compiled = None
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        self.notice = f"torch.compile failed ({type(err).__name__}: {first}); training continues in eager mode"
        print(f"notice: {self.notice}", file=sys.stderr, flush=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as err:  # compile errors surface on the first call, before any weight changes
                self._fall_back(err)
        return self.module(x)
