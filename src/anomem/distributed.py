"""Multi-process training helpers (torchrun / DistributedDataParallel).

NT-Xent needs every other vector of the batch as a negative. With the batch split over
ranks, each rank gathers all ranks' vectors *with gradients* and computes the loss over
the global batch (SimCLR's "gather layer"). Because every rank then holds the same
global loss L, the backward of the gather sums the incoming gradients over ranks and
keeps this rank's slice: rank r receives Σ_ranks ∂L/∂(its vectors) = W·∂L/∂(its
vectors), and DDP's gradient averaging (÷W) leaves exactly ∂L/∂θ, the single-process
gradient of the same global batch.

Only the engine and the CLI import this module; model and loss code never touch
``torch.distributed``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes files and prints progress."""
    return rank() == 0


def init_from_env() -> torch.device | None:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1).

    Returns this rank's device (``cuda:LOCAL_RANK`` with NCCL when CUDA is present,
    else CPU with gloo), or ``None`` outside torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def shutdown(ok: bool = True) -> None:
    """Leave the process group, if one is up.

    Release DDP wrappers first (``Stage1Trainer.close``): a group still referenced
    keeps its worker threads alive into interpreter shutdown, where gloo can abort.
    ``ok=False`` (this rank failed): no barrier, since the other ranks may be waiting
    in a training collective; gloo's teardown is local and still runs, NCCL's may
    block on those peers and is left to the launcher, which ends the job.
    """
    if not is_distributed():
        return
    if ok:
        dist.barrier()
    elif dist.get_backend() != "gloo":
        return
    dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:  # type: ignore[override]
        ctx.dim = dim
        ctx.size = x.shape[dim]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank holds the same L
        start = dist.get_rank() * ctx.size
        return grad.narrow(ctx.dim, start, ctx.size), None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks; the backward sums the gradients over ranks too."""
    if not is_distributed() or dist.get_world_size() == 1:
        return x
    return _AllReduceSum.apply(x)


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along ``dim``, differentiably; identity when alone.

    All ranks must pass the same shape. Shape: (…, B_local, …) -> (…, W·B_local, …).
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x, dim)


def gather_no_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """All-gather without gradient (labels, masks)."""
    if not is_distributed() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the whole global batch, on any device.

    torch's SyncBatchNorm runs on GPUs only; this one all-reduces the per-channel sums
    with a differentiable all-reduce (:func:`all_reduce_with_grad`),
    so gloo/CPU runs normalise exactly like one process seeing the whole batch. Outside
    a process group it is an ordinary BatchNorm2d.

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        n_local = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n_local])  # (2C + 1,)
        stats = all_reduce_with_grad(stats)  # sums over ranks, gradient summed back likewise
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean  # biased, as BatchNorm normalises
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            self.num_batches_tracked.add_(1)
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Swap every BatchNorm2d for one with global-batch statistics (in place).

    CUDA uses torch's SyncBatchNorm (fused kernels); other devices GlobalBatchNorm2d.
    """
    if any(p.is_cuda for p in module.parameters()):
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _swap_cpu_batchnorm(module)


def _swap_cpu_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            _swap_cpu_batchnorm(child)
    return module


__all__ = [
    "GlobalBatchNorm2d",
    "all_reduce_with_grad",
    "convert_batchnorm",
    "gather_no_grad",
    "gather_with_grad",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "rank",
    "shutdown",
    "world_size",
]
