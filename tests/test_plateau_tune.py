"""The tuned comparison on a plateau (notebook 05): the MLP's small initialisation and the
plateau it makes, benchmarks/plateau_tune.toml, the committed tuning that the notebook reads,
the escape measured on records, and the config's fast tuning run end to end."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sfn_teach.bench import ConfigError, build_model, load_config, read_config, validate_config
from sfn_teach.bench.tune import load_tuning_archive, tune_settings
from sfn_teach.data import load_digits
from sfn_teach.hvp import ModelHVP, dense_hessian
from sfn_teach.models import MLP
from sfn_teach.plateau_tuning import escape_steps, plot_escape, series_steps, start_curvature
from sfn_teach.train import seed_everything

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "benchmarks" / "plateau_tune.toml"
RESULTS = ROOT / "benchmarks" / "results" / "plateau_tune.json"
NAMES = ["SGD", "Adam", "SeriesSFN adaptive", "SeriesSFN unadaptive", "AdaHessian", "Sophia-H",
         "L-BFGS", "K-FAC"]


# --------------------------------------------------------------------------------------------
# The small initialisation
# --------------------------------------------------------------------------------------------


def parameters(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0])
def test_init_scale_multiplies_the_default_initialisation(scale):
    torch.manual_seed(7)
    default = parameters(MLP((5, 4, 3, 2)))
    torch.manual_seed(7)
    scaled = parameters(MLP((5, 4, 3, 2), init_scale=scale))
    assert all(torch.equal(s, scale * d) for d, s in zip(default, scaled, strict=True))
    assert not any(torch.equal(s, d) for d, s in zip(default, scaled))
    torch.manual_seed(7)
    assert all(torch.equal(d, s) for d, s in zip(default, parameters(
        MLP((5, 4, 3, 2), init_scale=1))))  # the default leaves it untouched


@pytest.mark.parametrize("bad", [0.0, -0.1, math.nan, math.inf, "0.1", True])
def test_bad_init_scale_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=r"^init_scale must be"):
        MLP(init_scale=bad)


@pytest.mark.parametrize("bad, problem", [(0, "finite and > 0"), ("small", "must be a float")])
def test_a_config_with_a_bad_init_scale_names_the_field(bad, problem):
    raw = read_config(CONFIG)
    raw["model"]["init_scale"] = bad
    with pytest.raises(ConfigError, match=problem) as error:
        validate_config(raw)
    assert error.value.field == "model.init_scale"


def sgd_losses(config, steps, lr=0.1, seed=0, every=50):
    """The training loss of SGD (α = lr, the config's batch size) on the config's model, on the
    whole training set every ``every`` steps."""
    torch.manual_seed(seed)
    model = build_model(config)
    train = load_digits(dtype=torch.float64).train
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps + 1):
        if step % every == 0:
            with torch.no_grad():
                losses.append(float(F.cross_entropy(model(train.inputs), train.targets)))
        batch = torch.randint(0, len(train.inputs), (config.batch_size,), generator=order)
        optimizer.zero_grad()
        F.cross_entropy(model(train.inputs[batch]), train.targets[batch]).backward()
        optimizer.step()
    return losses


def test_the_configs_network_sits_on_a_plateau_that_the_default_initialisation_has_not():
    config = load_config(CONFIG)
    assert config.model == {"type": "mlp", "hidden": [16, 16], "activation": "tanh",
                            "init_scale": 0.01}
    plateau = sgd_losses(config, 1000)
    assert all(abs(loss - math.log(10)) < 2e-3 for loss in plateau)  # 1,000 steps at log 10
    default = sgd_losses(load_config(CONFIG, {"model.init_scale": 1.0}), 500)
    assert default[-1] < math.log(10) / 2  # the same SGD leaves log 10 from the default


def test_the_start_curvature_is_the_runs_first_gradient_and_hessian_spectrum():
    config = load_config(CONFIG, {"model.hidden": [4, 3]})  # 325 parameters: a dense check
    gradient, eigenvalues = start_curvature(config, seed=3)
    seed_everything(3)  # the runner's model for seed 3, on the first batch_size images
    model = build_model(config)
    train = load_digits(dtype=torch.float64).train
    inputs, targets = train.inputs[:100], train.targets[:100]
    loss = F.cross_entropy(model(inputs), targets)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])
    assert torch.equal(gradient, expected)
    products = ModelHVP(model, F.cross_entropy, inputs, targets)  # double backward, not func
    reference = torch.linalg.eigvalsh(dense_hessian(products.matvec, gradient))
    torch.testing.assert_close(eigenvalues, reference, rtol=0, atol=1e-12)


def test_at_the_start_of_the_plateau_the_output_biases_hold_the_largest_curvature():
    """At uniform predictions p = 1/10 the output biases' Hessian diag(p) − ppᵀ has nine
    eigenvalues 1/10; every other curvature is smaller, and a saddle: some are negative."""
    gradient, eigenvalues = start_curvature(load_config(CONFIG), seed=1)
    assert eigenvalues.numel() == gradient.numel() == 1482
    torch.testing.assert_close(eigenvalues[-9:], torch.full((9,), 0.1, dtype=torch.float64),
                               rtol=0, atol=1e-3)
    assert float(eigenvalues[-10]) < 0.07 and float(eigenvalues[0]) < -0.05


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------


def test_every_optimiser_gets_the_same_budget_and_the_sources_search_spaces():
    config = load_config(CONFIG)
    assert [spec.name for spec in config.optimizers] == NAMES
    assert config.target_loss == pytest.approx(math.log(10) / 2, abs=1e-4)
    settings = tune_settings(config)
    assert (settings.num_samples, settings.time_budget, settings.reeval_seeds) == (16, 3.0, 5)
    assert settings.metric == "val_loss" and settings.rungs == pytest.approx([0.25, 0.75, 2.25])
    digits = tune_settings(load_config(ROOT / "benchmarks" / "digits_tune.toml"))
    for name in NAMES:  # the digits tuning's spaces, each named with its source there
        assert settings.spaces[name] == digits.spaces[name], name
    fast = tune_settings(config, fast=True)
    assert (fast.num_samples, fast.time_budget, fast.reeval_seeds) == (2, 0.5, 1)


# --------------------------------------------------------------------------------------------
# The escape, measured on records
# --------------------------------------------------------------------------------------------


def record(name, seed, step, loss):
    return {"optimizer": name, "seed": seed, "step": step, "val_loss": loss}


def test_escape_steps_are_the_first_records_at_or_below_the_target():
    records = [record("A", 1, 0, 2.3), record("A", 1, 10, 1.2), record("A", 1, 20, 1.0),
               record("A", 1, 30, 0.5), record("A", 2, 0, 2.3), record("A", 2, 10, 1.1),
               record("A", 2, 20, 1.3), record("B", 1, 0, 2.3), record("B", 1, 5, 2.2)]
    assert escape_steps(records, 1.1) == {"A": [20, 10], "B": [math.inf]}
    assert escape_steps(records, 2.3) == {"A": [0, 0], "B": [0]}
    assert escape_steps(records, 0.1) == {"A": [math.inf, math.inf], "B": [math.inf]}


# --------------------------------------------------------------------------------------------
# The kept tuning (what notebook 05 reads)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kept():
    return load_tuning_archive(RESULTS)


def test_the_kept_tuning_is_a_full_tuning_of_the_shipped_config(kept):
    stored = json.loads(RESULTS.read_text())["run_config"]
    assert stored["config"] == read_config(CONFIG) and not stored["fast"]
    assert kept.settings == tune_settings(load_config(CONFIG))
    assert [sum(t["optimizer"] == name for t in kept.trials) for name in NAMES] == [16] * 8
    assert list(kept.best) == NAMES  # every optimiser had a finite best
    records = kept.rerun.records
    runs = {(r["optimizer"], r["seed"]) for r in records}
    assert runs == {(name, seed) for name in NAMES for seed in (1, 2, 3, 4, 5)}
    for name, seed in runs:  # each re-run trained until the first step that reached 3 s
        times = [r["wall_clock"] for r in records if (r["optimizer"], r["seed"]) == (name, seed)]
        assert all(t < 3.0 for t in times[:-1]) and times[-1] >= 3.0, (name, seed)


def test_the_escape_figure_draws_every_optimiser_against_the_three_costs(kept):
    figure = plot_escape(kept)
    assert [ax.get_xlabel() for ax in figure.axes] == [
        "step", "wall-clock of training steps (s)", "per-example gradient-equivalents"]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == NAMES
    for ax in figure.axes:
        levels = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() in (":", "--")]
        assert levels == pytest.approx([math.log(10), 1.1513]) and ax.get_xlim()[0] == 0
        assert ax.get_xscale() == "symlog"


def test_a_tuned_optimiser_from_the_plateau_records_every_step(kept, tmp_path):
    records = series_steps(kept, "SeriesSFN adaptive", 3, tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3] and records[0]["seed"] == 1
    assert records[0]["val_loss"] == pytest.approx(math.log(10), abs=1e-3)  # on the plateau
    params = kept.best["SeriesSFN adaptive"]["params"]
    for r in records[1:]:  # what the step saw, with the tuned K
        assert r["implicit_damping"] == pytest.approx(
            0.5 * math.sqrt(math.pi * r["scale"] / params["num_terms"]), rel=1e-12)
    assert series_steps(kept, "SeriesSFN adaptive", 3, tmp_path) == records  # a rerun reuses it
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        series_steps(kept, "SeriesSFN adaptive", 0, tmp_path)


# --------------------------------------------------------------------------------------------
# The config's fast tuning, end to end (two of its optimisers, to keep it short)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_fast_tuning_of_the_config_runs_and_its_archive_reads_back(tmp_path):
    raw = read_config(CONFIG)
    raw["optimizers"] = [o for o in raw["optimizers"] if o["name"] in ("SGD", "K-FAC")]
    raw["tune"]["space"] = {"K-FAC": raw["tune"]["space"]["K-FAC"]}
    config, out, home = tmp_path / "plateau_tune.json", tmp_path / "out", tmp_path / "home"
    config.write_text(json.dumps(raw))
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "sfn_teach.bench", "tune", str(config), "--fast", "--out",
         str(out)], cwd=ROOT, env={**os.environ, "HOME": str(home)}, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = load_tuning_archive(out / "tuning.json")
    assert result.settings.num_samples == 2 and result.config.model["init_scale"] == 0.01
    assert [sum(t["optimizer"] == name for t in result.trials) for name in ("SGD", "K-FAC")] \
        == [2, 2]
    assert {r["seed"] for r in result.rerun.records} == {1}
    assert set(escape_steps(result.rerun.records, 1.1513)) == set(result.best)
