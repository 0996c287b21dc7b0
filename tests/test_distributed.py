"""Data parallelism: SeriesSFN on 2 gloo processes, each holding half of the batch, takes the
same steps as one process on the whole batch (MLP; conv net with SyncBatchNorm); the
rank-averaged curvature operator is the operator of the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sfn_teach.distributed import (
    RankAveragedOperator,
    SyncBatchNorm,
    convert_sync_batchnorm,
    world_size,
)
from sfn_teach.hvp import CurvatureOperator, ParamsHVP
from sfn_teach.optim import CurvatureOptimizer, SeriesSFN

WORLD = 2
STEPS = 3
SETTINGS = dict(adaptive=True, num_terms=5, acceleration_order=2, damping=1e-3,
                damping_factor=0.9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_problem(kind):
    """A float64 model and a batch of 16 (deterministic)."""
    torch.manual_seed(0)
    if kind == "mlp":
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        inputs = torch.randn(16, 6)
    else:
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Tanh(),
            torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3),
        )
        inputs = torch.randn(16, 3, 8, 8)
    targets = torch.randint(0, 3, (16,))
    return model.double(), inputs.double(), targets


def train(model, inputs, targets, process_group=None):
    """STEPS SeriesSFN steps; returns the flat parameters, buffers and the last stats."""
    optimizer = SeriesSFN(model.parameters(), **SETTINGS, process_group=process_group)
    for _ in range(STEPS):
        optimizer.step(lambda: F.cross_entropy(model(inputs), targets))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = [b.clone() for name, b in model.named_buffers() if "running" in name]
    return flat, buffers, optimizer.stats


def worker(rank, kind, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, inputs, targets = make_problem(kind)
        model = convert_sync_batchnorm(model)
        shard = slice(rank * 16 // WORLD, (rank + 1) * 16 // WORLD)
        flat, buffers, stats = train(model, inputs[shard], targets[shard], dist.group.WORLD)
        results[rank] = (flat, buffers, stats)
    finally:
        dist.destroy_process_group()


def run_distributed(kind, target=worker):
    results = mp.Manager().dict()
    mp.spawn(target, args=(kind, free_port(), results), nprocs=WORLD)
    return dict(results)


def operator_worker(rank, kind, port, results):
    """This rank's operator on its half of the batch, averaged over the ranks: what it is and
    what it gives (loss, gradient, ``H @ v``, ``matvec``, ``dense()``, the meters)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, inputs, targets = make_problem(kind)
        shard = slice(rank * 16 // WORLD, (rank + 1) * 16 // WORLD)
        mine = ParamsHVP(lambda: F.cross_entropy(model(inputs[shard]), targets[shard]),
                         model.parameters())
        op = RankAveragedOperator(mine, dist.group.WORLD)
        v = torch.linspace(-1, 1, op.dim, dtype=torch.float64)
        results[rank] = dict(
            instance=isinstance(op, CurvatureOperator), loss=op.loss, grad=op.grad,
            matmul=op @ v, matvec=op.matvec(v), dense=op.dense(), num_products=op.num_products,
            mean=op.mean(torch.tensor([float(rank)], dtype=torch.float64)),
            bytes_reduced=op.bytes_reduced,
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind, tolerance", [("mlp", 1e-8), ("conv-syncbn", 1e-7)])
def test_two_ranks_take_the_single_process_steps(kind, tolerance):
    results = run_distributed(kind)
    model, inputs, targets = make_problem(kind)
    single, single_buffers, _ = train(model, inputs, targets)
    for rank in range(WORLD):
        flat, buffers, stats = results[rank]
        assert float((flat - single).norm() / single.norm()) < tolerance, rank
        for ours, theirs in zip(buffers, single_buffers):
            torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=1e-12)
        # the gradient with the loss, 2(K−1) products, the re-evaluated loss: float64 each
        n = flat.numel()
        assert stats["allreduce_bytes"] == 8 * ((1 + n) + 2 * (SETTINGS["num_terms"] - 1) * n + 1)
        assert stats["allreduce_seconds"] > 0
    assert bool(single_buffers) == (kind == "conv-syncbn")  # running statistics were compared


def test_sync_batchnorm_without_process_group_is_batchnorm():
    torch.manual_seed(1)
    plain = torch.nn.BatchNorm2d(3).double()
    synced = convert_sync_batchnorm(torch.nn.Sequential(plain))[0]
    assert isinstance(synced, SyncBatchNorm) and synced.weight.dtype == torch.float64
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    reference = torch.nn.BatchNorm2d(3).double()
    torch.testing.assert_close(synced(x), reference(x))
    torch.testing.assert_close(synced.running_mean, reference.running_mean)
    assert world_size() == 1


def test_rank_averaged_operator_is_the_curvature_operator_of_the_whole_batch():
    results = run_distributed("mlp", operator_worker)
    model, inputs, targets = make_problem("mlp")
    names = [name for name, _ in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):  # the whole batch as a function of the flat parameters
        pieces = torch.split(flat, [p.numel() for p in model.parameters()])
        params = {n: t.view_as(p) for n, t, p in zip(names, pieces, model.parameters())}
        return F.cross_entropy(torch.func.functional_call(model, params, (inputs,)), targets)

    hessian, grad = torch.func.hessian(loss)(theta), torch.func.grad(loss)(theta)
    n = theta.numel()
    v = torch.linspace(-1, 1, n, dtype=torch.float64)
    assert CurvatureOptimizer.data_parallel is RankAveragedOperator  # what process_group uses
    for rank in range(WORLD):
        got = results[rank]
        assert got["instance"]
        torch.testing.assert_close(got["loss"], loss(theta), rtol=1e-12, atol=0)
        torch.testing.assert_close(got["grad"], grad, rtol=1e-12, atol=1e-15)
        assert torch.equal(got["matmul"], got["matvec"])
        torch.testing.assert_close(got["matvec"], hessian @ v, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(got["dense"], hessian, rtol=1e-10, atol=1e-13)
        assert got["num_products"] == 2 + n  # H @ v, matvec, and n for dense()
        assert float(got["mean"]) == 0.5  # (0 + 1) / 2
        # (f, g), 2 + n products and the mean, float64 each
        assert got["bytes_reduced"] == 8 * ((1 + n) + (2 + n) * n + 1)
