"""The benchmark runner: config validation, run directories, report, CLI, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bench_configs import (
    ADAM,
    REMOVE,
    SERIES_ADAPTIVE,
    changed,
    digits_config,
    without_timing,
    write_config,
)

import sfn_teach.train as train_module
from sfn_teach.bench import (
    ConfigError,
    load_benchmark,
    load_config,
    plot_curvature,
    plot_curves,
    run_benchmark,
    summarise,
    validate_config,
)
from sfn_teach.bench.__main__ import main
from sfn_teach.bench.report import AXES, format_table
from sfn_teach.bench.runner import data_parallel_config
from sfn_teach.checkpoint import CheckpointError, load_checkpoint
from sfn_teach.distributed import Launch
from sfn_teach.train import CURVATURE_FIELDS

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent

# Adam and the paper's adaptive SeriesSFN; 12 steps, a record every 2, a checkpoint every 2nd
TINY = {
    **digits_config("tiny", [{**ADAM, "lr": 0.01}, {**SERIES_ADAPTIVE, "num_terms": 5,
                                                    "acceleration_order": 2, "damping": 1e-3}],
                    hidden=[8], steps=12, batch_size=200, evals=6, checkpoint_every=2,
                    seeds=[0, 1]),
    "report": {"target_loss": 1.5},
}

BAD_CONFIGS = [
    # (what is wrong, path, value, the field the error must name)
    ("unknown optimiser", ("optimizers", 0, "type"), "adamw", "optimizers[0].type"),
    ("negative lr", ("optimizers", 0, "lr"), -0.1, "optimizers[0].lr"),
    ("missing field", ("task",), REMOVE, "task"),
    ("missing seeds", ("train", "seeds"), REMOVE, "train.seeds"),
    ("wrong type", ("train", "steps"), "12", "train.steps"),
    ("unknown dataset", ("task",), "mnist", "task"),
    ("batch larger than dataset", ("optimizers", 1, "batch_size"), 1001,
     "optimizers[1].batch_size"),
    ("unknown hyperparameter", ("optimizers", 1, "terms"), 5, "optimizers[1].terms"),
    ("K < 2r + 1", ("optimizers", 1, "num_terms"), 4, "optimizers[1].num_terms"),
    ("seeds empty", ("train", "seeds"), [], "train.seeds"),
    ("repeated seed", ("train", "seeds"), [1, 1], "train.seeds"),
    ("unknown top-level field", ("epochs",), 3, "epochs"),
    ("unknown train field", ("train", "lr"), 0.1, "train.lr"),
    ("epochs and steps", ("train", "epochs"), 3, "train.epochs"),
    ("zero evals", ("train", "evals"), 0, "train.evals"),
    ("bad dtype", ("dtype",), "float16", "dtype"),
    ("bad activation", ("model", "activation"), "swish", "model.activation"),
    ("bad width", ("model", "hidden"), [8, 0], "model.hidden[1]"),
    ("negative HVP cost", ("cost",), {"hvp": -1}, "cost.hvp"),
    ("bad target split", ("report", "target_split"), "dev", "report.target_split"),
    ("optimiser invalid value", ("optimizers", 0, "betas"), [0.9, 1.5], "optimizers[0].betas"),
    ("momentum out of range", ("optimizers", 1, "momentum"), 1.5, "optimizers[1].momentum"),
    ("boolean as number", ("optimizers", 1, "damping"), True, "optimizers[1].damping"),
    ("duplicate name", ("optimizers", 1, "name"), "adam", "optimizers[1].name"),
    ("no optimisers", ("optimizers",), [], "optimizers"),
    ("cuda without a GPU", ("device",), "cuda" if not torch.cuda.is_available() else "tpu",
     "device"),
    ("zero time budget", ("train", "time_budget"), 0, "train.time_budget"),
    ("time budget as text", ("train", "time_budget"), "60", "train.time_budget"),
    ("infinite time budget", ("train", "time_budget"), float("inf"), "train.time_budget"),
    ("curvature every 0", ("train", "curvature_every"), 0, "train.curvature_every"),
    ("curvature every 1.5", ("train", "curvature_every"), 1.5, "train.curvature_every"),
]


@pytest.mark.parametrize("what, path, value, field", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_names_the_field(what, path, value, field):
    with pytest.raises(ConfigError) as error:
        validate_config(changed(TINY, path, value))
    assert error.value.field == field
    assert f"config field '{field}'" in str(error.value)


def test_dense_optimiser_refused_on_a_large_model():
    config = changed(TINY, ("model", "hidden"), [100])
    config["optimizers"].append({"name": "exact", "type": "exact_sfn"})
    with pytest.raises(ConfigError, match="dense Hessian") as error:
        validate_config(config)
    assert error.value.field == "optimizers[2].type"


def test_curvature_diagnostics_refused_where_they_cannot_run():
    config = changed(TINY, ("model", "hidden"), [100])  # 7,510 parameters
    config["train"]["curvature_every"] = 2
    with pytest.raises(ConfigError, match="dense Hessian.*7510.*DENSE_MAX_DIM = 4096") as error:
        validate_config(config)
    assert error.value.field == "train.curvature_every"
    config = changed(TINY, ("train", "curvature_every"), 2)
    del config["train"]["batch_size"]
    for optimizer in config["optimizers"]:
        optimizer["batch_size"] = 100
    with pytest.raises(ConfigError, match="diagnostic batch") as error:
        validate_config(config)
    assert error.value.field == "train.batch_size"
    with pytest.raises(ConfigError, match="one process") as error:  # torchrun
        data_parallel_config(validate_config(changed(TINY, ("train", "curvature_every"), 2)),
                             Launch(rank=0, size=2, local_rank=0, local_size=2))
    assert error.value.field == "train.curvature_every"


def test_bad_config_stops_the_cli_before_training(tmp_path, capsys):
    path = write_config(tmp_path, changed(TINY, ("optimizers", 0, "lr"), -1.0))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "optimizers[0].lr" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "broken.toml").write_text("task = ")
    assert main([str(tmp_path / "broken.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_shipped_configs_are_valid():
    configs = sorted((ROOT / "benchmarks").glob("*.toml"))
    assert configs
    for path in configs:
        config = load_config(path)
        assert config.name == path.stem and len(config.seeds) >= 1


def test_run_report_and_resume_in_process(tmp_path):
    out = tmp_path / "run"
    result = run_benchmark(TINY, out, progress=False)
    config, records = load_benchmark(out)
    assert result.records == records and result.config == config
    rows = result.summary
    assert [r["step"] for r in records] == [0, 2, 4, 6, 8, 10, 12] * 4
    assert {r["run_id"] for r in records} == {
        "adam-seed0", "adam-seed1", "seriessfn-adaptive-seed0", "seriessfn-adaptive-seed1"}
    assert [row["optimizer"] for row in rows] == ["Adam", "SeriesSFN adaptive"]
    assert rows[1]["seeds"] == 2 and rows[1]["grad_equivalents"]["median"] > 12
    assert rows[0]["example_grad_equivalents"]["median"] == 12 * 200  # Adam: 1 gradient a step
    assert all(r["example_grad_equivalents"] == 200 * r["grad_equivalents"] for r in records)
    for name in ("summary.md", "summary.json", "train_loss.png", "test_loss.png",
                 "test_accuracy.png", "optimizer_stats.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "curvature.png").exists()  # no curvature diagnostics asked for
    assert not set(CURVATURE_FIELDS) & set(records[-1])
    assert "| per-example grad-equiv. |" in (out / "summary.md").read_text()
    assert "| SeriesSFN adaptive | 2 | 12 |" in (out / "summary.md").read_text()
    assert result.table in (out / "summary.md").read_text()
    json.loads((out / "summary.json").read_text())  # strict JSON (∞ written as null)

    # bit for bit: a second run in another folder gives the same records
    again = tmp_path / "again"
    run_benchmark(TINY, again, progress=False)
    assert without_timing(load_benchmark(again)[1]) == without_timing(records)

    with pytest.raises(FileExistsError, match="--resume"):
        run_benchmark(TINY, out, progress=False)
    with pytest.raises(ConfigError, match="different config"):
        run_benchmark(changed(TINY, ("optimizers", 0, "lr"), 0.02), out, resume=True,
                      progress=False)
    lines = []
    run_benchmark(TINY, out, resume=True, log=lines.append)  # everything finished: no training
    assert sum("already finished" in line for line in lines) == 4
    assert load_benchmark(out)[1] == records


def test_corrupt_checkpoint_is_reported_and_never_used(tmp_path):
    out = tmp_path / "run"
    run_benchmark(TINY, out, progress=False)
    records = load_benchmark(out)[1]
    run_dir = out / "seriessfn-adaptive-seed1"
    checkpoint = run_dir / "checkpoint.pt"
    assert load_checkpoint(checkpoint)["step"] == 12
    assert load_checkpoint(checkpoint.with_name("checkpoint.pt.prev"))["num_records"] == 6
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])  # truncated
    lines = []
    run_benchmark(TINY, out, resume=True, warn=lines.append)
    assert any("checkpoint.pt is corrupt" in line and "previous checkpoint" in line
               for line in lines)
    assert without_timing(load_benchmark(out)[1]) == without_timing(records)

    for path in (checkpoint, checkpoint.with_name("checkpoint.pt.prev")):
        path.write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointError, match="no good checkpoint"):
        run_benchmark(TINY, out, resume=True, progress=False)


def test_summary_gives_the_work_per_example_and_to_the_target():
    """SGD on batches of 100 and of 400, one gradient per step: equal work per step, four
    times the work per example; to the target (val loss ≤ 0.5) at steps 3 and 1."""
    def records(name, batch, losses):
        return [{"optimizer": name, "seed": 0, "step": step, "epoch": 0.0, "wall_clock": 0.5 * step,
                 "grad_equivalents": float(step), "example_grad_equivalents": float(batch * step),
                 "val_loss": loss, "test_loss": loss, "test_accuracy": 0.5}
                for step, loss in enumerate(losses)]

    runs = records("SGD 100", 100, [2.0, 1.0, 0.7, 0.5, 0.4]) + records("SGD 400", 400,
                                                                       [2.0, 0.4, 0.3, 0.2, 0.1])
    small, large = summarise(runs, target_loss=0.5)
    assert small["grad_equivalents"]["median"] == large["grad_equivalents"]["median"] == 4
    assert (small["example_grad_equivalents"]["median"],
            large["example_grad_equivalents"]["median"]) == (400, 1600)
    assert (small["grad_equivalents_to_target"]["median"],
            large["grad_equivalents_to_target"]["median"]) == (3, 1)
    assert (small["example_grad_equivalents_to_target"]["median"],
            large["example_grad_equivalents_to_target"]["median"]) == (300, 400)
    table = format_table([small, large], 0.5)
    assert ("| train time (s) | grad-equivalents | per-example grad-equiv. | time to val loss ≤ "
            "0.5 (s) | grad-equiv. to target | per-example grad-equiv. to target | reached |"
            in table)
    assert "| SGD 400 | 1 | 4 | 0.1 | 0.5 | 2 | 4 | 1.6e+03 | 0.5 | 1 | 400 | 1/1 |" in table
    figure = plot_curves(runs, "val_loss", xs=("example_grad_equivalents",))
    axis = figure.axes[0]
    assert axis.get_xlabel() == AXES["example_grad_equivalents"] and axis.get_xscale() == "log"
    assert list(axis.lines[1].get_xdata()) == [0, 400, 800, 1200, 1600]


def test_a_time_budget_stops_each_run_and_a_resume_continues_to_it(tmp_path, monkeypatch):
    """1 s per step (a stand-in clock): a budget of 4.5 s stops every run after step 5 and
    records it; a resume from the checkpoint at step 2 continues to the same stop."""
    monkeypatch.setattr(train_module, "timed", lambda fn, device: (fn(), 1.0))
    config = changed(TINY, ("train", "time_budget"), 4.5)
    out = tmp_path / "run"
    records = run_benchmark(config, out, progress=False).records
    assert [r["step"] for r in records] == [0, 2, 4, 5] * 4
    assert [r["wall_clock"] for r in records[:4]] == [0.0, 2.0, 4.0, 5.0]
    run_dir = out / "seriessfn-adaptive-seed1"
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 5  # the stop is checkpointed
    lines = []
    run_benchmark(config, out, resume=True, log=lines.append)  # stopped on its budget: finished
    assert sum("already finished (step 5 of 12" in line for line in lines) == 4
    (run_dir / "checkpoint.pt.prev").replace(run_dir / "checkpoint.pt")  # back to step 2
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 2
    run_benchmark(config, out, resume=True, progress=False)
    assert load_benchmark(out)[1] == records


def test_curvature_diagnostics_in_a_benchmark_run_and_their_figure(tmp_path):
    config = changed(TINY, ("train", "curvature_every"), 2)
    config["train"]["steps"] = 4
    config["train"]["evals"] = 4
    result = run_benchmark(config, tmp_path, progress=False)
    series = [r for r in result.records if r["optimizer"] == "SeriesSFN adaptive"]
    assert [r["lambda_max_squared"] is not None for r in series] == [True, False, True, False,
                                                                     True] * 2
    assert [r["cos_series_exact"] is not None for r in series] == [False, False, True, False,
                                                                   True] * 2
    adam = [r for r in result.records if r["optimizer"] == "Adam"]
    assert all(r["cos_gradient_exact"] is None and r["cos_series_exact"] is None for r in adam)
    assert adam[0]["lambda_max_squared"] == series[0]["lambda_max_squared"]  # same θ₀ and batch
    assert (tmp_path / "curvature.png").stat().st_size > 0
    left, right = plot_curvature(result.records).axes
    assert [len(line.get_xdata()) for line in left.lines] == [2, 3]  # SeriesSFN: series, gradient
    assert right.get_yscale() == "log"
    assert [len(line.get_xdata()) for line in right.lines] == [3, 4, 3]  # Adam λ²; SFN: V, λ²


def test_report_command_and_help(tmp_path, capsys):
    out = tmp_path / "run"
    config = changed(TINY, ("optimizers",), TINY["optimizers"][:1])
    run_benchmark(config, out, progress=False)
    (out / "summary.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "| Adam | 2 |" in capsys.readouterr().out and (out / "summary.md").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "report" in capsys.readouterr().out


def test_fast_mode_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SFN_TEACH_FAST", "1")
    run_benchmark(changed(TINY, ("optimizers",), TINY["optimizers"][:1]), tmp_path, progress=False)
    config, records = load_benchmark(tmp_path)
    assert config.steps == 4 and [r["step"] for r in records] == [0, 2, 4] * 2


# --------------------------------------------------------------------------------------------
# SIGKILL at several points, then --resume, gives the uninterrupted records
# --------------------------------------------------------------------------------------------


def cli(config_path, out, *extra, kill_at=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SFN_TEACH_FAST": "0"}
    env.pop("SFN_TEACH_KILL_AT", None)
    if kill_at:
        env["SFN_TEACH_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "sfn_teach.bench", "run", str(config_path), "--out",
               str(out), "--quiet", *extra]
    return subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def records_on_disk(out):
    return [json.loads(line) for path in sorted(out.glob("*/records.jsonl"))
            for line in path.read_text().splitlines()]


def test_kill_at_any_moment_then_resume_gives_identical_records(tmp_path):
    config = changed(TINY, ("train", "steps"), 16)
    config["train"]["evals"] = 8
    config["train"]["seeds"] = [0]
    config_path = write_config(tmp_path, config)
    reference = tmp_path / "reference"
    run_benchmark(config, reference, progress=False)
    expected = without_timing(load_benchmark(reference)[1])

    out = tmp_path / "killed"
    kills = [  # (fault point, where it strikes in this sequence)
        ("checkpoint-write:2", "mid-way through writing Adam's 2nd checkpoint"),
        ("record:4", "after an Adam record is durable, before its checkpoint"),
        ("checkpoint-write:3", "mid-way through writing Adam's final checkpoint"),
        ("checkpoint-write:2", "mid-way through writing SeriesSFN's 1st checkpoint"),
        ("record:3", "between two SeriesSFN records"),
    ]
    for number, (kill_at, where) in enumerate(kills):
        process = cli(config_path, out, *(["--resume"] if number else []), kill_at=kill_at)
        assert process.wait(timeout=60) == -signal.SIGKILL, (where, process.stderr.read())
        if kill_at.startswith("checkpoint-write"):
            assert list(out.glob("*/.checkpoint.pt.tmp")), where  # a half-written file is left
        # what is on disk is always a prefix of the uninterrupted records, checkpoints all good
        on_disk = without_timing(records_on_disk(out))
        assert on_disk == expected[: len(on_disk)], where
        for checkpoint in out.glob("*/checkpoint.pt*"):
            load_checkpoint(checkpoint)

    # an outside SIGKILL at an arbitrary moment, once the SeriesSFN run has made progress
    process = cli(config_path, out, "--resume")
    sfn_records = out / "seriessfn-adaptive-seed0" / "records.jsonl"
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if sfn_records.exists() and len(sfn_records.read_text().splitlines()) >= 6:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)

    process = cli(config_path, out, "--resume")
    assert process.wait(timeout=60) == 0, process.stderr.read()
    assert without_timing(load_benchmark(out)[1]) == expected
