"""`bench tune`: the [tune] table and the paper's search spaces, clear errors before any work,
and a real local tuning on the digits task that ASHA cuts short, whose trials and re-runs keep
to the time budget, that is interrupted, resumes without repeating finished trials and re-runs
the best settings over seeds."""

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench_configs import ADAM, SERIES_ADAPTIVE, digits_config, without_timing, write_config
from ray import tune as ray_tune
from ray.tune.schedulers import ASHAScheduler

from sfn_teach.bench import ConfigError, read_config, validate_config
from sfn_teach.bench.__main__ import main
from sfn_teach.bench.tune import (
    ARCHIVE_FILE,
    ClusterError,
    RayNotInstalledError,
    check_reachable,
    check_resources,
    import_ray_tune,
    load_tuning,
    load_tuning_archive,
    tune_settings,
    tuned_raw,
)

ROOT = Path(__file__).resolve().parent.parent

DIGITS = digits_config("digits_tuning", [
    {"name": "SGD", "type": "sgd"}, ADAM, SERIES_ADAPTIVE,
    {"name": "SeriesSFN unadaptive", "type": "series_sfn"},
    {"name": "exact SFN", "type": "exact_sfn"},
], hidden=[16], steps=100, batch_size=100, evals=10, seeds=[0])
SGD_ONLY = {**DIGITS, "optimizers": DIGITS["optimizers"][:1]}


def with_tune(table, config=DIGITS):
    return {**config, "tune": table}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


# --------------------------------------------------------------------------------------------
# Settings and search spaces
# --------------------------------------------------------------------------------------------


def test_default_settings_and_search_spaces_are_those_of_the_paper():
    settings = tune_settings(validate_config(DIGITS))
    assert (settings.metric, settings.num_samples, settings.time_budget,
            settings.grace_period) == ("val_loss", 100, 1800.0, 30.0)
    described = {name: {p: d.describe() for p, d in space.items()}
                 for name, space in settings.spaces.items()}
    series = {"num_terms": "U{1..20}", "acceleration_order": "U{0..⌊(K−1)/2⌋}",
              "damping": "logU[1e-08, 1]"}
    assert described == {
        "SGD": {"lr": "logU[1e-06, 0.1]"},
        "Adam": {"lr": "logU[1e-06, 1]", "eps": "logU[1e-10, 10]",
                 "one_minus_beta1": "logU[0.001, 1]", "one_minus_beta2": "logU[0.0001, 1]"},
        "SeriesSFN adaptive": series,
        "SeriesSFN unadaptive": {**series, "lr": "logU[0.001, 5]", "momentum": "logU[0.001, 0.95]"},
        "exact SFN": {"damping": "logU[1e-08, 1]"},
    }
    assert settings.budget().startswith("100 samples × at most 1800 s of training time each")


def test_image_tasks_also_tune_the_batch_size():
    raw = {"task": "cifar10_synthetic", "data": {"num_train": 2000, "num_test": 100},
           "model": {"type": "resnet18", "width": 4},
           "train": {"steps": 1, "batch_size": 50, "seeds": [0]},
           "optimizers": [{"name": "SGD", "type": "sgd"}]}
    space = tune_settings(validate_config(raw)).spaces["SGD"]
    assert space["batch_size"].values == (50, 100, 200, 400, 800, 1600)  # ≤ 1,800 training images


def test_fast_settings_and_rungs_follow_ray_tunes_asha():
    table = {"reduction_factor": 2, "fast": {"num_samples": 3, "time_budget": 3.0}}
    settings = tune_settings(validate_config(with_tune(table)), fast=True)
    assert (settings.num_samples, settings.time_budget, settings.grace_period,
            settings.reeval_seeds) == (3, 3.0, 0.25, 1)
    scheduler = ASHAScheduler(time_attr="t", metric="m", mode="min", max_t=3.0,
                              grace_period=0.25, reduction_factor=2)
    ray_rungs = sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs)
    assert settings.rungs == ray_rungs == [0.25, 0.5, 1.0, 2.0]
    assert settings.reeval_seed_list == [1]


def test_acceleration_order_is_uniform_over_the_orders_the_trials_k_allows():
    import random

    settings = tune_settings(validate_config(DIGITS))
    order = settings.spaces["SeriesSFN adaptive"]["acceleration_order"]
    domain = order.to_ray(ray_tune, random.Random(0), fixed_terms=5)
    for terms in (1, 2, 5, 20):
        draws = [domain.func({"num_terms": terms}) for _ in range(400)]
        assert set(draws) == set(range((terms - 1) // 2 + 1))


def test_a_trial_config_sets_the_sampled_values_and_adams_betas():
    raw = tuned_raw(DIGITS, {1: {"lr": 0.01, "one_minus_beta1": 0.1, "one_minus_beta2": 0.01},
                             2: {"num_terms": 7, "acceleration_order": 3}}, [5, 6])
    config = validate_config(raw)
    adam, series = config.optimizers
    assert adam.hyperparameters == {"lr": 0.01, "betas": (0.9, 0.99)}
    assert series.hyperparameters["num_terms"] == 7 and config.seeds == (5, 6)
    assert config.fast["seeds"] == (5, 6) and "tune" not in raw
    assert config.time_budget is None  # the config's own: none


def test_trials_and_reruns_get_the_tuning_time_budget():
    """A trial, and a re-run of the best settings, stops at ``tune.time_budget`` s of training
    time (replacing any ``train.time_budget`` of the config); in fast mode too."""
    raw = {**DIGITS, "train": {**DIGITS["train"], "time_budget": 99.0}}
    settings = tune_settings(validate_config(with_tune({"time_budget": 3.0, "grace_period": 1.0},
                                                          raw)))
    trial = validate_config(tuned_raw(raw, {2: {"num_terms": 7}}, [0], settings.time_budget))
    assert trial.time_budget == 3.0 and trial.num_steps(trial.optimizers[0]) == 100  # the cap
    assert trial.fast_version().time_budget == 3.0
    assert validate_config(tuned_raw(raw, {2: {}}, [0])).time_budget == 99.0
    assert settings.budget().endswith("best re-run over 10 seeds, 3 s of training time each")


BAD_TUNE = [
    # (what is wrong, the [tune] table, the field the error must name)
    ("unknown field", {"samples": 3}, "tune.samples"),
    ("no samples", {"num_samples": 0}, "tune.num_samples"),
    ("grace after the budget", {"time_budget": 5.0, "grace_period": 10.0}, "tune.grace_period"),
    ("no halving", {"reduction_factor": 1}, "tune.reduction_factor"),
    ("tuning on the test set", {"metric_split": "test"}, "tune.metric_split"),
    ("a GPU for a CPU config", {"gpus_per_trial": 1}, "tune.gpus_per_trial"),
    ("bad fast field", {"fast": {"num_samples": -1}}, "tune.fast.num_samples"),
    ("unknown optimiser", {"space": {"AdamW": {}}}, "tune.space.AdamW"),
    ("unknown parameter", {"space": {"SGD": {"learning_rate": {"loguniform": [1e-3, 1]}}}},
     "tune.space.SGD.learning_rate"),
    ("two kinds", {"space": {"SGD": {"lr": {"loguniform": [1e-3, 1], "uniform": [0, 1]}}}},
     "tune.space.SGD.lr"),
    ("log of zero", {"space": {"SGD": {"lr": {"loguniform": [0, 1]}}}},
     "tune.space.SGD.lr.loguniform"),
    ("max outside acceleration_order", {"space": {"SGD": {"lr": {"randint": [0, "max"]}}}},
     "tune.space.SGD.lr.randint"),
    ("a value the optimiser refuses", {"space": {"SeriesSFN unadaptive": {
        "momentum": {"uniform": [0.5, 1.5]}}}}, "tune.space.SeriesSFN unadaptive.momentum"),
]


@pytest.mark.parametrize("what, table, field", BAD_TUNE, ids=[b[0] for b in BAD_TUNE])
def test_bad_tune_tables_name_the_field(what, table, field):
    with pytest.raises(ConfigError) as error:
        tune_settings(validate_config(with_tune(table)))
    assert error.value.field == field, str(error.value)


def test_a_space_that_makes_k_too_small_for_a_fixed_order_names_num_terms():
    raw = {**DIGITS, "optimizers": [{"name": "S", "type": "series_sfn",
                                     "acceleration_order": 2}]}
    with pytest.raises(ConfigError, match="K|num_terms") as error:
        tune_settings(validate_config(with_tune({"space": {"S": {
            "num_terms": {"randint": [1, 9]}, "acceleration_order": {"choice": [2]}}}}, raw)))
    assert error.value.field in ("tune.space.S.num_terms", "tune.space.S.acceleration_order")


# --------------------------------------------------------------------------------------------
# Where it runs: errors before any work
# --------------------------------------------------------------------------------------------


def test_an_unreachable_ray_address_fails_at_once():
    address = f"127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at {address}"):
        check_reachable(address)
    with pytest.raises(ClusterError, match="cannot reach"):
        check_reachable(f"ray://{address}", "RAY_ADDRESS")
    assert time.perf_counter() - start < 5
    with pytest.raises(ClusterError, match="must be HOST:PORT"):
        check_reachable("http://127.0.0.1:8265/")


def test_more_gpus_or_cpus_per_trial_than_there_are_is_refused():
    settings = tune_settings(validate_config(SGD_ONLY))
    with pytest.raises(ConfigError) as error:
        check_resources(settings, {"CPU": 0}, "this machine")
    assert error.value.field == "tune.cpus_per_trial"
    settings = dataclasses.replace(settings, gpus_per_trial=1)  # a CUDA config's default
    with pytest.raises(ConfigError, match="asks for 1 GPU") as error:
        check_resources(settings, {"CPU": 16, "GPU": 0}, "this machine")
    assert error.value.field == "tune.gpus_per_trial"


def test_cli_unreachable_address_is_one_error_and_no_output(tmp_path, capsys):
    config = write_config(tmp_path, SGD_ONLY)
    start = time.perf_counter()
    status = main(["tune", str(config), "--out", str(tmp_path / "out"),
                   "--address", f"127.0.0.1:{closed_port()}"])
    assert status == 1 and time.perf_counter() - start < 15
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: cannot reach the Ray cluster")
    assert not (tmp_path / "out").exists()


def test_cli_more_cpus_per_trial_than_the_machine_has(tmp_path, capsys):
    raw = with_tune({"cpus_per_trial": (os.cpu_count() or 1) + 1}, SGD_ONLY)
    status = main(["tune", str(write_config(tmp_path, raw)), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "'tune.cpus_per_trial'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_ray_the_command_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    with pytest.raises(RayNotInstalledError, match=r'pip install -e "\.\[tune\]"'):
        import_ray_tune()
    config = write_config(tmp_path, SGD_ONLY)
    assert main(["tune", str(config), "--out", str(tmp_path / "out")]) == 1
    assert 'install it with: pip install -e ".[tune]"' in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# A real local tuning, interrupted and resumed
# --------------------------------------------------------------------------------------------

# Adam and the paper's adaptive SeriesSFN on the digits, 4 samples × 2 s each (--fast), halving
# at 0.5, 1 and 2 s; a third optimiser whose series always diverges (a fixed scale far below
# λ_max(H²)), so that every one of its trials gives up with NonFiniteStepError.
TUNING = {
    **digits_config("tiny_tuning", [ADAM, SERIES_ADAPTIVE, {
        "name": "SeriesSFN diverging", "type": "series_sfn", "scale_rule": "fixed", "scale": 1e-20,
        "max_skipped_steps": 0}], hidden=[16], steps=6000, batch_size=100, evals=120, seeds=[0]),
    "fast": {"steps": 30, "evals": 3},
    "tune": {"reduction_factor": 2,
             "fast": {"num_samples": 4, "time_budget": 2.0, "grace_period": 0.5,
                      "reeval_seeds": 2},
             "space": {"SeriesSFN diverging": {"num_terms": {"choice": [20]}}}},
}
SLUGS = ("adam", "seriessfn-adaptive", "seriessfn-diverging")


def trial_records(out):
    """``{trial folder: its records}`` of every trial run directory."""
    return {path.parent: [json.loads(line) for line in path.read_text().splitlines()]
            for path in sorted((out / "trials").glob("*/*/records.jsonl"))}


def tune_process(config, out, home, *extra):
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "sfn_teach.bench", "tune", str(config), "--fast",
         "--out", str(out), *extra],
        cwd=ROOT, env={**os.environ, "HOME": str(home)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_local_tuning_stops_trials_early_resumes_and_reruns_the_best(tmp_path):
    config, out, home = write_config(tmp_path, TUNING), tmp_path / "out", tmp_path / "home"
    home.mkdir()

    # 1. start, and interrupt (Ctrl-C) once Adam's 4 trials have finished and SeriesSFN's run
    process = tune_process(config, out, home)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("[2/3]"):
            break
    # a SeriesSFN trial has two records (under a load of 4 on 2 cores one made no more in its
    # 2 s), or the next optimiser has started; the time limits only guard against a hang
    deadline = time.monotonic() + 240
    while not any(len(r) >= 2 and d.parent.name == SLUGS[1] or d.parent.name == SLUGS[2]
                  for d, r in trial_records(out).items()):
        assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=180)
    output = "".join(lines) + rest
    assert process.returncode == 130, output
    assert "interrupted: continue with --resume" in output
    assert output.startswith("tuning tiny_tuning") and "budget of every optimiser: 4 samples × " \
        "at most 2 s of training time each (8 s)" in output
    before = trial_records(out)
    finished = {d: r for d, r in before.items() if d.parent.name == SLUGS[0]}
    assert len(finished) == 4

    # 2. resume: Ray Tune restores each experiment; no finished trial runs again
    process = tune_process(config, out, home, "--resume")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    after = trial_records(out)
    for folder, records in finished.items():
        assert after[folder] == records  # untouched
    for folder, records in before.items():  # interrupted ones went on from their checkpoint
        if records and records[-1]["wall_clock"] >= 2.0:
            # a record at the time budget that Ray Tune had not checkpointed when the Ctrl-C
            # came is made again; the step where a clock runs out is not reproducible
            records = records[:-1]
        resumed = after[folder]
        if resumed and resumed[-1]["wall_clock"] >= 2.0:
            # records made after Ray Tune's last checkpoint are made again, on a clock that ran
            # on under other load: the resumed run may reach the budget before such a step
            records = [r for r in records if r["step"] < resumed[-1]["step"]]
        assert without_timing(resumed[: len(records)]) == without_timing(records)
    trials = json.loads((out / "trials.json").read_text())
    assert [sum(t["optimizer"] == spec["name"] for t in trials)
            for spec in TUNING["optimizers"]] == [4, 4, 4]
    assert len(after) == 12 and all(len(list((out / "ray" / slug).glob("*_0000?"))) == 4
                                    for slug in SLUGS)
    for records in after.values():
        steps = [r["step"] for r in records]
        assert steps == sorted(set(steps))  # no record twice

    # no trial trains past its budget: it stops after the first step that reaches 2 s, with a
    # record there (so at most one step over), whether or not an evaluation was due
    for records in after.values():
        times = [r["wall_clock"] for r in records]
        assert all(t < 2.0 for t in times[:-1]), times
    budget = [t for t in trials if t["end"] == "budget"]
    for trial in budget:
        assert trial["wall_clock"] >= 2.0 and trial["step"] < 6000

    # ASHA stopped some trials at a rung: before the budget and before their last step
    stopped = [t for t in trials if t["end"] == "stopped"]
    assert stopped, trials
    slugs = {spec["name"]: slug for spec, slug in zip(TUNING["optimizers"], SLUGS)}
    for trial in stopped:
        last = after[out / "trials" / slugs[trial["optimizer"]] / trial["trial_id"]][-1]
        assert last["wall_clock"] < 2.0 and last["step"] < 6000
    # every trial of the diverging optimiser gave up, reported inf, and the tuning went on
    diverged = [t for t in trials if t["optimizer"] == "SeriesSFN diverging"]
    assert all(t["end"] == "diverged" and t["metric"] is None for t in diverged)

    # the best settings of Adam and SeriesSFN re-run over seeds 1 and 2
    best = json.loads((out / "best.json").read_text())
    assert sorted(best) == ["Adam", "SeriesSFN adaptive"]
    for name, trial in best.items():
        own = [t["metric"] for t in trials if t["optimizer"] == name and t["metric"] is not None]
        assert trial["metric"] == min(own) and math.isfinite(trial["metric"])
    for slug in SLUGS[:2]:
        for seed in (1, 2):
            assert (out / "best" / f"{slug}-seed{seed}" / "records.jsonl").exists()
    rerun = json.loads((out / "best" / "config.json").read_text())["config"]
    assert rerun["train"]["time_budget"] == 2.0  # the re-runs' budget is the trials'
    for path in (out / "best").glob("*/records.jsonl"):
        times = [json.loads(line)["wall_clock"] for line in path.read_text().splitlines()]
        assert all(t < 2.0 for t in times[:-1]), (path, times)
    assert not list((out / "best").glob("seriessfn-diverging*"))
    report = (out / "tune.md").read_text()
    assert "Budget of every optimiser: 4 samples" in report and "| Adam | 4 |" in report
    assert "Each run trained for at most 2 s of training time, the trials' budget" in report
    assert (out / "asha.png").stat().st_size > 0 and (out / "best" / "summary.md").exists()
    assert not (home / "ray_results").exists()  # Ray's storage is the output folder

    # the archive: one small file that reads back as the directory does, without Ray
    archive = out / ARCHIVE_FILE
    assert archive.stat().st_size < sum(p.stat().st_size for p in out.rglob("records.jsonl"))
    kept, full = load_tuning_archive(archive), load_tuning(out)
    assert kept.table == full.table and kept.rerun.table == full.rerun.table
    assert kept.best == full.best and kept.settings == full.settings
    for stored, read in zip(kept.trials, full.trials):  # thinned, the last record kept
        assert {r["step"] for r in stored["records"]} <= {r["step"] for r in read["records"]}
        assert stored["records"][-1]["val_loss"] == pytest.approx(read["records"][-1]["val_loss"],
                                                                  rel=1e-4)
    assert {r["run_id"] for r in kept.rerun.records} == {r["run_id"] for r in full.rerun.records}


# --------------------------------------------------------------------------------------------
# The tunings kept in the repository
# --------------------------------------------------------------------------------------------

ARCHIVES = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def test_there_are_kept_tunings():
    assert any(path.stem == "digits_tune" for path in ARCHIVES)


@pytest.mark.parametrize("archive", ARCHIVES, ids=lambda p: p.stem)
def test_a_kept_tuning_is_of_the_shipped_config_in_full(archive):
    """Each file under benchmarks/results is a full (not --fast) tuning of the config of the same
    name as it is now, with every optimiser tuned and re-run over the configured seeds: a config
    changed without tuning again fails here."""
    stored = json.loads(archive.read_text())["run_config"]
    assert stored["config"] == read_config(ROOT / "benchmarks" / f"{archive.stem}.toml")
    assert stored["fast"] is False
    result = load_tuning_archive(archive)
    names = [spec.name for spec in result.config.optimizers]
    assert set(result.best) == set(names)
    assert [row["optimizer"] for row in result.rerun.summary] == names
    assert all(row["seeds"] == result.settings.reeval_seeds for row in result.rerun.summary)
    samples = {name: sum(t["optimizer"] == name for t in result.trials) for name in names}
    assert set(samples.values()) == {result.settings.num_samples}
