"""Gathering tensors across data-parallel ranks (memory-bank updates, JigClu's global batch), and
BatchNorm statistics synced across CPU processes."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from detectron2.engine.defaults import create_ddp_model as d2_create_ddp_model
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm
from torch import nn

# torch >= 2.10 calls DDP's broadcast_buffers deprecated, on every rank of every run, and itself
# advises keeping broadcast_buffers=False where buffers must not be synced at construction: d2ssl's
# default (train.ddp), which the memory banks of NPID/PIRL rely on. The flag still works as before.
# (stacklevel 2: the warning is attributed to detectron2's create_ddp_model, which builds the DDP.)
warnings.filterwarnings("ignore", message=r"`broadcast_buffers` is deprecated", category=FutureWarning,
                        module=r"detectron2\.engine\.defaults")


class _AllGatherWithGradient(torch.autograd.Function):
    """All-gather whose backward hands each rank the sum over ranks of the gradients of its slice.

    (``torch.distributed.nn.functional.all_gather`` does the same but is deprecated, and on gloo
    it sends non-contiguous gradients through all-to-all unchanged, which corrupts them.)
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def all_gather_rows(tensor: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """Concatenates ``tensor`` (``(n_r, ...)``) of every rank along dim 0 in rank order; returns it
    unchanged on one process.

    Without gradient, ``n_r`` may differ between ranks. With ``differentiable=True`` (every rank must
    hold the same ``n_r``) gradients flow back as in JigClu's ``diffdist`` all-gather: each rank
    receives the sum over ranks of the gradients of its slice, so when every rank computes the same
    loss on the gathered tensor, DDP's gradient averaging yields the gradient of that one loss.
    """
    world_size = comm.get_world_size()
    if world_size == 1:
        return tensor
    if differentiable:
        return _AllGatherWithGradient.apply(tensor)
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)])


def create_ddp_model(model: nn.Module, device: str = "cuda", **kwargs) -> nn.Module:
    """detectron2's ``create_ddp_model`` (the model itself on one process) for any device: on CPU
    (gloo), DDP gets no ``device_ids`` (detectron2 passes the local rank, a CUDA device index) and
    every ``nn.SyncBatchNorm`` becomes a ``NaiveSyncBatchNorm`` (``sync_batchnorm_on_cpu``).
    ``kwargs``: DDP's (``train.ddp``: ``broadcast_buffers``, ``find_unused_parameters``,
    ``fp16_compression``)."""
    if comm.get_world_size() > 1 and torch.device(device).type == "cpu":
        sync_batchnorm_on_cpu(model)
        kwargs.setdefault("device_ids", None)
    return d2_create_ddp_model(model, **kwargs)


def sync_batchnorm_on_cpu(module: nn.Module) -> nn.Module:
    """Replaces, in place, every ``nn.SyncBatchNorm`` (detectron2's ``norm="SyncBN"``) of ``module``
    by detectron2's ``NaiveSyncBatchNorm`` holding the same parameter and buffer tensors (an
    optimizer built before keeps updating them), and returns ``module``.

    ``nn.SyncBatchNorm`` refuses CPU tensors; ``NaiveSyncBatchNorm`` all-reduces the per-rank means
    and mean squares through any backend (gloo), so multi-process CPU runs keep the config's BN
    choice. With equal per-rank batches its normalisation is that of the global batch; it differs
    from ``nn.SyncBatchNorm`` only in keeping the biased variance in ``running_var``. For
    ``(N, C, H, W)`` inputs (trunks).
    """
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            replacement = NaiveSyncBatchNorm(
                child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                track_running_stats=child.track_running_stats,
            )
            for key, tensor in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(replacement, key, tensor)
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            sync_batchnorm_on_cpu(child)
    return module
