"""Data-parallel training over processes: all of the distributed setup lives here.

``torchrun --nproc_per_node=N -m bagcert_lib train ...`` (or submitit, see ``sweep.py``) sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. :func:`setup` then joins a process
group (NCCL on GPUs, gloo on CPUs). Without those variables the world size is 1, no process group
exists and every helper here is the identity: the one-process code path is unchanged.

What a run with W processes shares with the one-process run: the global batch (``batch_size``,
App. A.1's 96) and its order and augmentation (every rank draws the whole global batch from the
same seeded generator and keeps its slice, :func:`shard`), the shake-shake noise (the same seed on
every rank), and BatchNorm statistics over the whole global batch (``sync_bn``, default on: the
paper trained with batch 96 on one GPU; per-rank BN over 96/W images would be another regulariser).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

#: minutes a collective (barrier, all-reduce) waits for a peer before failing; 0 < value
TIMEOUT_ENV = "BAGCERT_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 30.0


class WorldSizeError(ValueError):
    """A configuration the world size cannot run (e.g. a batch it does not divide)."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank, world size, backend and its device."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False        # setup() created the process group, teardown() ends it

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def env_world_size() -> int:
    """WORLD_SIZE as torchrun / submitit set it; 1 without it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """RANK as torchrun / submitit set it; 0 without it."""
    return int(os.environ.get("RANK", "0"))


def check_batch(batch_size: int, world_size: int) -> int:
    """The per-rank batch; raises :class:`WorldSizeError` when world_size does not divide it."""
    if batch_size % world_size:
        raise WorldSizeError(f"batch_size {batch_size} is not divisible by the world size "
                             f"{world_size}: every process must get batch_size / world_size images")
    return batch_size // world_size


def timeout() -> datetime.timedelta:
    """How long a collective waits for a dead or stuck peer: ``$BAGCERT_DIST_TIMEOUT_MIN`` (30)."""
    minutes = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_MIN)
    if not minutes > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of minutes, got {minutes}")
    return datetime.timedelta(minutes=minutes)


def setup(device=None, batch_size: int | None = None) -> Context:
    """Join torchrun's process group (env:// initialisation) or, without it, return world size 1.

    ``device`` None: CUDA when available. With several processes on CUDA each rank takes
    cuda:LOCAL_RANK (NCCL); on the CPU they use gloo. ``batch_size`` is checked against the world
    size before anything starts."""
    from .runtime import default_device

    want = torch.device(device) if device else default_device()
    world = env_world_size()
    if world <= 1:
        return Context(device=want)
    if batch_size is not None:
        check_batch(batch_size, world)
    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if want.type == "cuda":
        dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout())
        owns = True
    return Context(device=dev, rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=local, backend=dist.get_backend(), owns_group=owns)


def teardown(ctx: Context) -> None:
    """End the process group, if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    """Wait until every rank reaches this point (nothing for one process)."""
    if ctx.distributed:
        dist.barrier(device_ids=[ctx.device.index] if ctx.backend == "nccl" else None)


def shard(t: torch.Tensor, ctx: Context | None) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (the batch itself for one process)."""
    if ctx is None or not ctx.distributed:
        return t
    n = check_batch(len(t), ctx.world_size)
    return t[ctx.rank * n:(ctx.rank + 1) * n]


def all_reduce_mean(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The mean of ``t`` over ranks (``t`` itself for one process)."""
    if not ctx.distributed:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / ctx.world_size


def gather_objects(obj, ctx: Context) -> list:
    """``obj`` of every rank, in rank order."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: Context):
    """Rank 0's ``obj`` on every rank (the others pass anything, e.g. None, and wait for it)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def describe(ctx: Context, device_names: list) -> dict:
    """What provenance.json records about the processes that trained."""
    return {"world_size": ctx.world_size, "backend": ctx.backend, "devices": device_names}


class _AllReduceSum(torch.autograd.Function):
    """The sum over the ranks, differentiable: the gradient is summed over the ranks too (each rank's
    loss depends on every rank's input). What ``torch.distributed.nn.functional.all_reduce`` does
    for SUM, which torch 2.14 deprecates for a private module; this uses public ``dist`` only."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with statistics over the global batch, for gloo on CPUs (torch's
    SyncBatchNorm runs on GPUs only). Differentiable all-reduces; eval mode is plain BN."""

    def forward(self, x):
        """y = γ · (x − μ) / √(v + ε) + β per channel, with the mean μ and the variance v taken
        over every rank's images (plain BatchNorm in eval mode or for one process)."""
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        C, dims = x.shape[1], [0, *range(2, x.dim())]
        shape = [1, C] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x    # stats in >= fp32
        count = torch.full((1,), float(xf.numel() // C), device=x.device, dtype=xf.dtype)
        s = all_reduce(torch.cat([xf.sum(dims), count]))
        n = s[C]
        mean = s[:C] / n
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        return out.to(x.dtype)


def _cpu_sync(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _cpu_sync(child))
    return out


def sync_batchnorm(model: nn.Module, ctx: Context, enabled: bool = True) -> nn.Module:
    """BatchNorm over the global batch when several processes train (same state_dict keys)."""
    if not (enabled and ctx.distributed):
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _cpu_sync(model)


def parallel(model: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel around ``model`` (gradients averaged over ranks), or the model."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
