"""Data-parallel benchmark runs: `torchrun --nproc-per-node 2 -m sfn_teach.bench run` on gloo
writes the records of the single-process run (float64, 1e-8), from rank 0 only, resumes after a
kill, and refuses bad input with one error before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sfn_teach.bench import ConfigError, validate_config
from sfn_teach.bench.runner import data_parallel_config
from sfn_teach.distributed import Launch, torchrun_launch

ROOT = Path(__file__).resolve().parent.parent
LOSSES = ("train_loss", "val_loss", "test_loss", "batch_loss")

# Adam (one flat all-reduce of the gradients per step) and the paper's adaptive SeriesSFN
# (the gradient, 2(K−1) products and the re-evaluated loss), 12 steps, a record every 3
CONFIG = """
name = "dp"
task = "digits"
dtype = "float64"
[model]
hidden = [16]
[train]
steps = 12
batch_size = 200
evals = 4
seeds = [0]
[[optimizers]]
name = "Adam"
type = "adam"
lr = 0.01
[[optimizers]]
name = "SeriesSFN adaptive"
type = "series_sfn"
num_terms = 5
acceleration_order = 2
damping = 1e-3
adaptive = true
damping_factor = 0.9
"""
RUNS = ("adam-seed0", "seriessfn-adaptive-seed0")
CONV_CONFIG = """
task = "cifar10_synthetic"
dtype = "float64"
[data]
num_train = 250
num_test = 50
validation_fraction = 0.2
[model]
type = "resnet18"
width = 4
[train]
steps = 2
batch_size = 32
evals = 1
seeds = [0]
[[optimizers]]
name = "SGD"
type = "sgd"
lr = 0.05
[[optimizers]]
name = "SeriesSFN adaptive"
type = "series_sfn"
num_terms = 3
acceleration_order = 1
damping = 1.0
adaptive = true
damping_factor = 0.9
"""
NUM_PARAMETERS = 64 * 16 + 16 + 16 * 10 + 10


def bench(*args, nproc=None, env=None, **popen):
    """``python -m sfn_teach.bench ARGS``, under ``torchrun --standalone`` with ``nproc``."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={nproc}"] if nproc else [sys.executable])
    return subprocess.run([*launcher, "-m", "sfn_teach.bench", *map(str, args)], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=240, **popen)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def assert_same_losses(ours, theirs):
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for mine, reference in zip(ours, theirs):
        for key in LOSSES:
            if reference[key] is not None:
                assert abs(mine[key] - reference[key]) <= 1e-8 * abs(reference[key]), (key, mine)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The config run once in one process and once on 2 gloo ranks."""
    folder = tmp_path_factory.mktemp("torchrun")
    (folder / "dp.toml").write_text(CONFIG)
    single = bench("run", folder / "dp.toml", "--out", folder / "single", "--quiet")
    assert single.returncode == 0, single.stderr
    parallel = bench("run", folder / "dp.toml", "--out", folder / "parallel", nproc=2)
    assert parallel.returncode == 0, parallel.stderr
    return folder, parallel


@pytest.mark.slow
def test_two_gloo_ranks_write_the_single_process_records(runs):
    folder, parallel = runs
    assert "on 2 data-parallel ranks" in parallel.stdout
    assert parallel.stdout.count("benchmark dp ->") == 1  # rank 0 alone prints
    for run in RUNS:
        ours, reference = records(folder / "parallel" / run), records(folder / "single" / run)
        assert_same_losses(ours, reference)
        # one writer: the run folder holds one records file and rank 0's checkpoints, nothing else
        assert sorted(p.name for p in (folder / "parallel" / run).iterdir()) == [
            "checkpoint.pt", "checkpoint.pt.prev", "records.jsonl"]
        assert all(r["allreduce_bytes"] is None for r in reference)
        # the work per example counts the global batch of 200, not a rank's shard of 100
        assert [r["example_grad_equivalents"] for r in ours] == [
            r["example_grad_equivalents"] for r in reference]
        assert ours[-1]["example_grad_equivalents"] == 200 * ours[-1]["grad_equivalents"] > 0
        last = ours[-1]
        assert 0 < last["allreduce_seconds"] <= last["wall_clock"]
        share = last["allreduce_seconds"] / last["wall_clock"]
        assert last["allreduce_share"] == pytest.approx(share)
    # float64 bytes per step: Adam [loss, gradient]; SeriesSFN [loss, gradient], 2(K−1) products,
    # the re-evaluated loss
    assert records(folder / "parallel" / RUNS[0])[-1]["allreduce_bytes"] == 8 * (1 + NUM_PARAMETERS)
    assert records(folder / "parallel" / RUNS[1])[-1]["allreduce_bytes"] == 8 * (
        (1 + NUM_PARAMETERS) + 2 * 4 * NUM_PARAMETERS + 1)
    stored = json.loads((folder / "parallel" / "config.json").read_text())
    assert "data-parallel over 2 ranks (gloo)" in stored["machine"]


@pytest.mark.slow
def test_a_conv_net_with_batchnorm_runs_data_parallel_with_sync_batchnorm(tmp_path):
    """ResNet-18 (width 4, BatchNorm in training mode) on CIFAR-shaped data: the BatchNorm
    statistics of the whole batch, so the records are the single-process ones."""
    config = tmp_path / "conv.toml"
    config.write_text(CONV_CONFIG)
    single = bench("run", config, "--out", tmp_path / "single", "--quiet")
    parallel = bench("run", config, "--out", tmp_path / "parallel", "--quiet", nproc=2)
    assert single.returncode == 0 and parallel.returncode == 0, parallel.stderr
    for run in ("sgd-seed0", "seriessfn-adaptive-seed0"):
        assert_same_losses(records(tmp_path / "parallel" / run),
                           records(tmp_path / "single" / run))


@pytest.mark.slow
def test_a_killed_data_parallel_run_resumes_to_the_same_records(runs, tmp_path):
    folder, _ = runs
    out = tmp_path / "killed"
    # rank 0 kills itself between its 3rd durable record and that record's checkpoint
    killed = bench("run", folder / "dp.toml", "--out", out, "--quiet", nproc=2,
                   env={"SFN_TEACH_KILL_AT": "record:3"})
    assert killed.returncode != 0
    assert len(records(out / RUNS[0])) == 3 and not (out / RUNS[1]).exists()
    resumed = bench("run", folder / "dp.toml", "--out", out, "--quiet", "--resume", nproc=2)
    assert resumed.returncode == 0, resumed.stderr
    for run in RUNS:
        assert_same_losses(records(out / run), records(folder / "single" / run))


@pytest.mark.slow
def test_data_parallel_ranks_stop_together_at_the_time_budget(runs, tmp_path):
    """Each rank has its own clock; rank 0's decides, so both stop after the same step (else
    one rank would wait for ever in the next step's all-reduce)."""
    folder, _ = runs
    out = tmp_path / "budget"
    budgeted = bench("run", folder / "dp.toml", "--out", out, "--quiet", "--set",
                     "train.steps=1000000", "--set", "train.time_budget=0.5", nproc=2)
    assert budgeted.returncode == 0, budgeted.stderr
    for run in RUNS:
        first, last = records(out / run)  # step 0 and the step that reached the budget
        assert first["step"] == 0 and 0 < last["step"] < 1000000
        assert last["wall_clock"] >= 0.5 and last["allreduce_seconds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("args, field", [
    (("--set", "train.batch_size=201"), "train.batch_size"),
    (("--set", "optimizers[1].batch_size=99"), "optimizers[1].batch_size"),
    (("--device", "cuda"), "device"),
    (("--device", "cuda:3"), "device"),
])
def test_bad_input_under_torchrun_is_one_error_before_any_work(runs, tmp_path, args, field):
    folder, _ = runs
    out = tmp_path / "refused"
    refused = bench("run", folder / "dp.toml", "--out", out, *args, nproc=2)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"config field '{field}'" in errors[0], refused.stderr
    assert not out.exists()


def test_torchrun_environment_is_detected():
    assert torchrun_launch({}) is None
    environment = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert torchrun_launch(environment) == Launch(rank=3, size=4, local_rank=1, local_size=2)


def test_more_processes_than_gpus_is_refused(monkeypatch):
    """NCCL needs a GPU per process: 2 processes on a 1-GPU machine, or one named GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    raw = {"task": "digits", "device": "cuda", "train": {"steps": 1, "batch_size": 100,
                                                         "seeds": [0]},
           "optimizers": [{"name": "SGD", "type": "sgd", "lr": 0.1}]}
    config = validate_config(raw)
    one_gpu = data_parallel_config(config, Launch(rank=0, size=1, local_rank=0, local_size=1))
    assert one_gpu.device == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="starts 2 processes on this machine, but it has 1 GPU"):
        data_parallel_config(config, Launch(rank=1, size=2, local_rank=1, local_size=2))
    named = validate_config({**raw, "device": "cuda:0"})
    with pytest.raises(ConfigError, match="names one GPU") as error:
        data_parallel_config(named, Launch(rank=0, size=1, local_rank=0, local_size=1))
    assert error.value.field == "device"
