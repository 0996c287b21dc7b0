"""Data parallelism: SeriesSFN on 2 gloo processes, each holding half of the batch, takes the
same steps as one process on the whole batch (MLP; conv net with SyncBatchNorm)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sfn_teach.distributed import SyncBatchNorm, convert_sync_batchnorm, world_size
from sfn_teach.optim import SeriesSFN

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


def run_distributed(kind):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(kind, free_port(), results), nprocs=WORLD)
    return dict(results)


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
