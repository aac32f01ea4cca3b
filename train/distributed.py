"""Data-parallel training through torchrun and DistributedDataParallel.

``torchrun --nproc_per_node N cli.py train ...`` runs the ordinary trainer in N processes with a Context:
every rank builds the same epoch (shared seed, so the same permutation and augmentation), keeps its slice of
each global batch, and DDP all-reduces the gradients (NCCL on GPUs, gloo on CPUs). Rank 0 alone evaluates,
writes checkpoints and the manifest; the others print nothing but errors. A failing rank raises, torchrun
tears the others down, and the last checkpoint (written atomically by rank 0) survives.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as tdist

from dawnpipe.common.device import DeviceChoice, choose_device
from dawnpipe.common.errors import DawnpipeError
from dawnpipe.train.config import TrainConfig

TIMEOUT_ENV = "DAWNPIPE_DIST_TIMEOUT_S"  # seconds a peer may stay silent before it is treated as dead (default 300)


_FINISH_WAIT_S = 3600.0  # how long other ranks wait for rank 0's final evaluation and writes


def _timeout() -> datetime.timedelta:
    """The collective timeout (NCCL's and gloo's): 5 minutes, or DAWNPIPE_DIST_TIMEOUT_S seconds, so a caller
    with its own limit (bench/gpu.py's DDP step) can put the library's timeout below it and get its error."""
    value = os.environ.get(TIMEOUT_ENV, "300")
    try:
        seconds = float(value)
    except ValueError:
        raise DawnpipeError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds", f"set {TIMEOUT_ENV}=120") from None
    if not 1 <= seconds <= 86400:
        raise DawnpipeError(f"{TIMEOUT_ENV}={value} is outside 1..86400 seconds", f"set {TIMEOUT_ENV}=120")
    return datetime.timedelta(seconds=seconds)


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (it sets these variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def shard_indices(num_steps: int, global_batch: int, rank: int, world: int) -> torch.Tensor:
    """Positions in the epoch's order that ``rank`` trains on: its contiguous slice of every global batch."""
    local = global_batch // world
    steps = torch.arange(num_steps)[:, None] * global_batch
    return (steps + rank * local + torch.arange(local)[None, :]).reshape(-1)


@dataclass
class Context:
    """What the trainer needs to know and do differently under DDP."""

    rank: int
    world_size: int
    local_rank: int
    device_choice: DeviceChoice
    sync_bn: bool

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around the model (SyncBatchNorm first if asked; the trainer keeps the bare module for EMA)."""
        from torch.nn.parallel import DistributedDataParallel

        if self.sync_bn:
            if self.device_choice.device.type != "cuda":
                raise DawnpipeError(
                    "--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernel)",
                    "drop --sync-bn on CPU; per-rank BatchNorm is the default",
                )
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.local_rank] if self.device_choice.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, x: torch.Tensor, y: torch.Tensor, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of the epoch, in step order."""
        idx = shard_indices(len(y) // global_batch, global_batch, self.rank, self.world_size).to(x.device)
        return x[idx], y[idx]

    def reduce_stats(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int):
        """Epoch statistics over all ranks: loss averaged, counts summed."""
        packed = torch.stack(
            [
                loss_sum.double(),
                correct.double(),
                torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64),
            ]
        )
        tdist.all_reduce(packed)
        return packed[0] / self.world_size, packed[1].long(), int(packed[2].item())


def init_context(cfg: TrainConfig) -> Context:
    """Join the process group torchrun set up, after checking there are devices for every process."""
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        gpus = torch.cuda.device_count()
        if local_world > gpus:
            raise DawnpipeError(
                f"torchrun started {local_world} processes on this node but only {gpus} GPUs are visible",
                f"use --nproc_per_node {max(gpus, 1)} or fewer",
            )
        torch.cuda.set_device(local)
        dev = choose_device("cuda", cfg.precision)
        dev = replace(dev, device=torch.device("cuda", local))
    else:
        cores = os.cpu_count() or 1
        if local_world > cores:
            raise DawnpipeError(
                f"torchrun started {local_world} CPU processes but this machine has {cores} cores",
                f"use --nproc_per_node {cores} or fewer",
            )
        dev = choose_device("cpu", cfg.precision)
        torch.set_num_threads(max(1, cores // local_world))
    tdist.init_process_group("nccl" if use_cuda else "gloo", timeout=_timeout())
    return Context(rank, world, local, dev, cfg.sync_bn)


def run_distributed(
    cfg: TrainConfig, *, progress: bool = True, resume_changes: dict | None = None, resume_payload: dict | None = None
):
    """Train under torchrun; a lost peer becomes a one-line error naming the surviving checkpoint."""
    from dawnpipe.train.trainer import train

    ctx = init_context(cfg)
    try:
        result = train(cfg, progress=progress, dist=ctx, resume_changes=resume_changes, resume_payload=resume_payload)
        _leave_together(ctx)
        return result
    except (RuntimeError, tdist.DistBackendError) as err:
        raise distributed_error(err, ctx.rank, ctx.world_size) from None
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def _leave_together(ctx: Context) -> None:
    """Wait for every rank (rank 0 last: it evaluates and writes the run folder) before the process group is torn
    down. A rank that destroyed its gloo group and exited while rank 0 still held its connections was seen to die of
    SIGABRT in teardown (once in CI and once in 29 runs of the 2-process test here, 2026-12-07); leaving together is
    how a process group expects to be destroyed. Rank 0's final evaluation may outlast the collective timeout on a
    CPU, so gloo waits with its own, longer limit."""
    if ctx.device_choice.device.type == "cuda":
        tdist.barrier(device_ids=[ctx.local_rank])
    else:
        tdist.monitored_barrier(timeout=datetime.timedelta(seconds=max(_timeout().total_seconds(), _FINISH_WAIT_S)))


def distributed_error(err: BaseException, rank: int, world: int) -> DawnpipeError:
    """The one line for an error raised inside a distributed run, naming its real cause.

    "A peer failed" is only true with peers: at world size 1 the error is this process's own, and an
    out-of-memory error is the GPU's, whatever the world size; both are named as such.
    """
    text = str(err).strip()
    first = text.splitlines()[0][:200] if text else type(err).__name__
    kept = "the last checkpoint written by rank 0 is kept"
    if "out of memory" in text.lower():
        return DawnpipeError(
            f"rank {rank}: the GPU ran out of memory ({first}); {kept}",
            "lower --batch-size, or free the GPU (another process may hold its memory), then rerun with --resume",
        )
    if world == 1:
        return DawnpipeError(
            f"rank 0 failed on its own ({first}); at world size 1 there is no peer to blame; {kept}",
            "fix that error, then rerun with --resume",
        )
    return DawnpipeError(
        f"rank {rank}: a peer process failed or vanished ({first}); {kept}",
        "fix the failing rank (its own output names the cause) and rerun with --resume",
    )
