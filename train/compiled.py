"""``torch.compile`` of a module, falling back to eager with a one-line notice, forward and backward alike.

Two things this adds to a bare ``torch.compile``:
- it knows whether a compiled graph really ran: the module is compiled through a backend that counts the graphs
  inductor compiled for it, so a step that dynamo silently ran eagerly (every frame skipped or fallen back) reads
  ``compiled_ran`` False, not True;
- inductor keeps eager's rounding under autocast (``emulate_precision_casts``). By default inductor fuses a chain
  of bf16/fp16 ops and rounds once at the end; the backward of ResNet-9's global max pool (``amax``) then compares
  a recomputed fp32 sum with the max eager had rounded to bf16, finds no equal element and divides by a zero count:
  every gradient below the pool is NaN from the first step (the compiled bf16 divergence of issue 43; reproduced
  with ``torch.compile(lambda a, b: torch.amax(a + b, dim=(2, 3)))`` under bf16 autocast, torch 2.13; upstream
  pytorch/pytorch#186799). With the casts emulated the compiled step takes the eager step's path.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# inductor options for every dawnpipe compile: round reduced-precision intermediates as eager does (docstring)
INDUCTOR_OPTIONS = {"emulate_precision_casts": True}


class CompiledOrEager:
    """``torch.compile`` of a module (training step, or inference on a CPU), falling back to eager on the first
    failure; ``compiled_ran`` says whether any call really ran a compiled graph, ``notice`` why not.

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
        self.graphs = 0  # graphs inductor compiled for this module (forward graphs; each includes its backward)
        self.proven = False  # the first training step (forward and backward) ran compiled or fell back
        self._first_step = False  # inside first_step: whether a graph compiled is judged after the backward
        self.cache: dict[str, Any] = {"loaded": False, "saved": False, "path": None}
        try:
            self.compiled = torch.compile(module, backend=self._inductor, **options)
        except Exception as err:  # torch.compile itself may refuse (unsupported platform, no dynamo)
            self._fall_back(err)

    @property
    def compiled_ran(self) -> bool:
        """True once a call returned through at least one graph inductor compiled (not merely through dynamo)."""
        return self.compiled is not None and self.graphs > 0

    def _inductor(self, graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        """The inductor backend with INDUCTOR_OPTIONS, counting the graphs it compiles."""
        from torch._inductor.compile_fx import compile_fx

        compiled = compile_fx(graph, example_inputs, config_patches=INDUCTOR_OPTIONS)
        self.graphs += 1
        return compiled

    def _fall_back(self, err: BaseException) -> None:
        self.compiled = None
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        self._say(f"torch.compile failed ({type(err).__name__}: {first}); {self.what} continues in eager mode")

    def _say(self, notice: str) -> None:
        self.notice = notice
        print(f"notice: {notice}", file=sys.stderr, flush=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                out = self.compiled(x)
            except Exception as err:  # compile errors surface on the first call, before any weight changes
                self._fall_back(err)
            else:
                if not self._first_step:
                    self._check_graphs()
                return out
        return self.module(x)

    def first_step(self, step: Callable[[Any], Any], model: torch.nn.Module) -> Any:
        """Run ``step(self)`` (forward, loss, backward) once; if compiling the backward fails, restore ``model``'s
        buffers and gradients and run ``step(self)`` again, now eager."""
        saved = {name: b.detach().clone() for name, b in model.named_buffers()}
        self._first_step = True
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
        finally:
            self._first_step = False
        self._check_graphs()
        self.proven = True
        return result

    def _check_graphs(self) -> None:
        """Say once when calls succeed through torch.compile without any compiled graph (dynamo fell back)."""
        if self.compiled is not None and not self.graphs and self.notice is None:
            self._say(f"torch.compile ran without compiling any graph (dynamo fell back); {self.what} runs eagerly")

    def load_cache(self, path: Path) -> None:
        """Hand torch.compile the artifacts an earlier process saved at ``path`` (``save_cache``), so this process
        does not compile again. Only a file whose sha256 matches the record dawnpipe wrote beside it is loaded:
        the artifacts are torch's own serialisation, trusted as torch trusts its on-disk inductor cache."""
        self.cache["path"] = str(path)
        record = path.with_suffix(".json")
        if self.compiled is None or not path.is_file() or not record.is_file():
            return
        try:
            blob = path.read_bytes()
            expected = json.loads(record.read_text()).get("sha256")
            if hashlib.sha256(blob).hexdigest() != expected:
                self._say(f"compile cache {path} does not match its record; compiling afresh")
                return
            torch.compiler.load_cache_artifacts(blob)
        except Exception as err:  # a cache from another torch, or damaged: compile afresh, say so
            self._say(f"compile cache {path} not used ({type(err).__name__}); compiling afresh")
            return
        self.cache["loaded"] = True

    def save_cache(self, path: Path) -> None:
        """Save what torch.compile compiled in this process to ``path`` (and its sha256 beside it), each written
        under a temporary name and renamed (``common.files.atomic_write``), for the next process's ``load_cache``."""
        from dawnpipe.common.errors import DiskFull
        from dawnpipe.common.files import atomic_write, atomic_write_json

        if not self.compiled_ran:
            return
        try:
            saved = torch.compiler.save_cache_artifacts()
            if saved is None:
                return
            blob = saved[0]
            atomic_write(path, lambda tmp: tmp.write_bytes(blob), expected_bytes=len(blob))
            atomic_write_json(path.with_suffix(".json"),
                              {"sha256": hashlib.sha256(blob).hexdigest(), "torch": torch.__version__})  # fmt: skip
        except (OSError, DiskFull) as err:  # a cache that cannot be written costs the next process a compile only
            self._say(f"compile cache not saved to {path} ({getattr(err, 'strerror', None) or err})")
            return
        self.cache["saved"] = True

    def describe(self) -> dict[str, Any]:
        """What the manifest records: whether a compiled graph ran, how many were compiled, any notice, and whether
        the compile cache was loaded from or saved to disk."""
        return {"ran_compiled": self.compiled_ran, "graphs": self.graphs, "notice": self.notice, "cache": self.cache}


def compile_cache_path(cfg: Any, device: torch.device, precision: str, batch: int) -> Path:
    """Where this training configuration's compile artifacts live: the dawnpipe cache, keyed by torch version,
    device, precision and what shapes the compiled graphs (model config, ``batch`` images per process)."""
    from dawnpipe.train.data import cache_dir

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    key = json.dumps([torch.__version__, name, precision, cfg.model.to_dict(), batch], sort_keys=True)
    return cache_dir() / "compile" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.bin"
