"""Data parallelism for the curvature optimisers: rank-averaged operators and SyncBatchNorm.

With the batch split into ``P`` equal shards, one per rank, the loss of the whole batch is the
average of the shards' losses, ``f = (1/P) Σ_r f_r``, so

    g = (1/P) Σ_r g_r      and      Hv = (1/P) Σ_r H_r v.

The gradient and *every* Hessian-vector product of the series must therefore be averaged over
the ranks: ``2(K − 1)`` all-reduces per step besides the gradient's (docs/method.md §8). The
products are not ``.backward()`` calls that DistributedDataParallel's hooks could see, so the
optimiser's curvature operator does it: :class:`RankAveragedOperator` wraps this rank's
operator, and a curvature optimiser built with ``process_group`` steps on that wrapper
(this module installs it as ``CurvatureOptimizer.data_parallel``; :mod:`sfn_teach.optim`
does not import this module). Each all-reduce sends one flat tensor (the loss and the
gradient travel together).

A ``torch.optim`` optimiser steps on ``p.grad`` after ``backward``: :class:`GradientMean`
averages all gradients (and the loss) over the ranks with one all-reduce of one flat tensor per
step. :class:`RankMean` meters every all-reduce (bytes, seconds).

BatchNorm couples the shards through the batch statistics. :class:`SyncBatchNorm` computes
them over all ranks with a *differentiable* all-reduce, so that gradients and Hessian-vector
products of the whole-batch loss come out right (torch's own ``nn.SyncBatchNorm`` runs only on
GPUs and its backward is not differentiable twice). With it, or without BatchNorm, an update
on ``P`` ranks equals the single-process update on the whole batch up to rounding.

One run over several processes is started by ``torchrun``: :func:`torchrun_launch` reads where
this process sits from the environment torchrun sets, and :func:`init_process_group` joins the
job (NCCL on GPUs, one per process; gloo on CPUs). The benchmark runner builds on these
(:mod:`sfn_teach.bench.runner`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as differentiable
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .hvp import CurvatureOperator
from .update import CurvatureOptimizer

__all__ = [
    "GradientMean", "Launch", "RankAveragedOperator", "RankMean", "SyncBatchNorm",
    "convert_sync_batchnorm", "init_process_group", "rank", "torchrun_launch", "world_size"
]


def world_size(group=None) -> int:
    """The number of ranks in ``group`` (1 when torch.distributed is not initialised)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank(group=None) -> int:
    """This process's rank in ``group`` (0 when torch.distributed is not initialised)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a ``torchrun`` job: its rank among ``size`` processes, and
    its rank among the ``local_size`` processes on this machine (the GPU it should use)."""

    rank: int
    size: int
    local_rank: int
    local_size: int


def torchrun_launch(environ=None) -> Launch | None:
    """The :class:`Launch` that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), or ``None`` outside torchrun."""
    environ = os.environ if environ is None else environ
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    if not all(name in environ for name in names):
        return None
    return Launch(*(int(environ[name]) for name in names))


def init_process_group(device: torch.device):
    """Join the ``torchrun`` job: NCCL with ``device`` (this rank's GPU) on CUDA, gloo on a CPU.

    Reads the rendezvous (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``) from
    the environment that torchrun sets; returns the group of all ranks.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return dist.group.WORLD


class RankMean:
    """Averages tensors over the ranks of ``group`` and meters it.

    :meth:`mean` is one ``all_reduce``; ``bytes_reduced`` and ``seconds_reducing`` add up the
    bytes of every tensor reduced and the time spent in the all-reduces (including waiting for
    the slowest rank).
    """

    def __init__(self, group=None):
        self.group = group
        self.bytes_reduced, self.seconds_reducing = 0, 0.0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(1/P) Σ_r tensor_r`` on every rank (a new tensor; one all-reduce)."""
        total = tensor.detach().clone()
        start = time.perf_counter()
        dist.all_reduce(total, group=self.group)
        self.seconds_reducing += time.perf_counter() - start
        self.bytes_reduced += total.numel() * total.element_size()
        return total / world_size(self.group)


class RankAveragedOperator(CurvatureOperator):
    """The curvature operator of the loss averaged over ranks, from each rank's own operator.

    ``operator`` is this rank's :class:`~sfn_teach.hvp.CurvatureOperator` (e.g.
    :class:`~sfn_teach.hvp.ParamsHVP` on its shard). At construction one all-reduce averages
    ``(f_r, g_r)``; every product ``Hv = (1/P) Σ_r H_r v`` takes one more, and so does a dense
    ``hessian`` if the operator stored one. :meth:`mean` is the average over the ranks, and
    ``bytes_reduced`` and ``seconds_reducing`` meter all of these all-reduces (:class:`RankMean`).
    """

    def __init__(self, operator, group=None):
        self._ranks = RankMean(group)
        grad = operator.grad
        packed = self.mean(torch.cat([operator.loss.reshape(1).to(grad), grad]))
        super().__init__(operator.params, packed[0], packed[1:])
        self._operator = operator
        if operator.hessian is not None:
            self.hessian = self.mean(operator.hessian)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(1/P) Σ_r tensor_r`` on every rank (one all-reduce)."""
        return self._ranks.mean(tensor)

    @property
    def bytes_reduced(self) -> int:
        """The bytes of every tensor this operator has all-reduced."""
        return self._ranks.bytes_reduced

    @property
    def seconds_reducing(self) -> float:
        """The seconds spent in its all-reduces (waiting for the slowest rank included)."""
        return self._ranks.seconds_reducing

    def _product(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.mean(self._operator.matvec(v, out))


CurvatureOptimizer.data_parallel = RankAveragedOperator
"""A curvature optimiser with ``process_group`` set steps on this rank's operator averaged over
the group's ranks (:mod:`sfn_teach.optim` does not import this module; this line plugs it in)."""


class GradientMean(RankMean):
    """Data parallelism for ``torch.optim`` optimisers: the gradients averaged over ranks.

    Called with this rank's loss ``f_r`` after ``backward`` on its shard, it sets every
    parameter's gradient to ``g = (1/P) Σ_r g_r`` and returns ``f = (1/P) Σ_r f_r``, with ONE
    all-reduce of the flat vector ``[f_r, g_r]`` (all gradients flattened and concatenated;
    a parameter without a gradient contributes zeros). Metered as :class:`RankMean`.
    """

    def __init__(self, params, group=None):
        super().__init__(group)
        self.params = [p for p in params if p.requires_grad]

    def __call__(self, loss: torch.Tensor) -> torch.Tensor:
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        flat = torch.cat([loss.detach().reshape(1).to(grads[0]), *(g.reshape(-1) for g in grads)])
        averaged = self.mean(flat)
        offset = 1
        for p in self.params:
            p.grad = averaged[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        return averaged[0]


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation with statistics over the whole batch of all ranks, twice
    differentiable, on any device and backend (gloo on CPUs, NCCL on GPUs).

    In training mode, per channel ``c`` over all ``N`` values of all ranks,

        m_c = (1/N) Σ x,    s_c = (1/N) Σ x² − m_c²,    y = (x − m_c)/√(s_c + ε) · w_c + b_c,

    where the sums are all-reduced with ``torch.distributed.nn.functional.all_reduce``, whose
    backward is again an all-reduce: the graph stays differentiable for Hessian-vector
    products. Running statistics are updated with the global ``m_c`` and the unbiased
    ``s_c N/(N − 1)``, as ``nn.BatchNorm`` does. Outside training mode (or without running
    statistics in eval) it is ordinary BatchNorm; without an initialised process group, too.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")

    def forward(self, x):
        use_batch_statistics = self.training or self.running_mean is None
        if not use_batch_statistics or world_size() == 1:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        sums = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        sums = differentiable.all_reduce(sums)
        channels = x.shape[1]
        total = sums[-1]
        mean = sums[:channels] / total
        variance = sums[channels : 2 * channels] / total - mean * mean
        if self.training and self.track_running_stats and self.running_mean is not None:
            self._update_running_statistics(mean.detach(), variance.detach(), total.detach())
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running_statistics(self, mean, variance, count):
        self.num_batches_tracked += 1
        momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                    else self.momentum)
        unbiased = variance * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (recursively) by :class:`SyncBatchNorm`,
    keeping its parameters, buffers and settings. Returns the converted module."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        like = next((t for t in (*module.parameters(), *module.buffers())
                     if t.is_floating_point()), torch.empty(0))
        converted = SyncBatchNorm(module.num_features, module.eps, module.momentum,
                                  module.affine, module.track_running_stats,
                                  device=like.device, dtype=like.dtype)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
