"""K-FAC's work counted by its rule, and every other optimiser's count unchanged.

A K-FAC step counts one gradient (the loss's backward) and ``c_P`` (its preconditioning); a
curvature step adds one gradient (the Monte-Carlo Fisher's backward) and ``c_KF`` (its factor
updates and inversions). With ``curvature_interval = c`` the curvature steps of ``N`` steps are
steps ``1, 1 + c, 1 + 2c, …``: ``⌈N/c⌉`` of them, so ``N`` steps cost
``N (1 + c_P) + ⌈N/c⌉ (1 + c_KF)`` gradient-equivalents. The constants here are binary
fractions, so every count is exact in float64.
"""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from bench_configs import digits_config

from sfn_teach.bench import ConfigError, load_benchmark, run_benchmark, validate_config
from sfn_teach.checks import ArgumentError
from sfn_teach.cost import COUNTS, CostModel
from sfn_teach.data import load_digits
from sfn_teach.models import MLP
from sfn_teach.registry import OPTIMIZERS
from sfn_teach.train import Trainer, seed_everything

torch.set_num_threads(1)

BATCH = 100
COST = CostModel(hvp=1.75, forward=0.25, kfac_curvature=3.375, kfac_precondition=0.125)
OTHERS = {  # every other optimiser of the registry, on a network small enough for all
    "sgd": dict(lr=0.1), "adam": dict(lr=1e-3), "series_sfn": dict(num_terms=3),
    "exact_sfn": dict(damping=1.0, damping_factor=0.9), "newton": dict(damping=1.0),
    "adahessian": dict(lr=0.1), "sophia_h": dict(lr=0.05, update_period=2),
    "lbfgs": dict(lr=1.0, max_iter=3, line_search_fn="strong_wolfe"),
}


@pytest.fixture(scope="module")
def digits():
    return load_digits(torch.float64)


def trainer(digits, kind, cost, **hyperparameters):
    seed_everything(0)
    model = MLP((64, 4, 10)).double()
    if kind == "kfac":
        optimizer = OPTIMIZERS[kind](model, data_size=BATCH, **hyperparameters)
    else:
        optimizer = OPTIMIZERS[kind](model.parameters(), **hyperparameters)
    return Trainer(model, optimizer, digits, BATCH, seed=0, cost=cost)


def kfac_rule(steps, interval, cost):
    """``N (1 + c_P) + ⌈N/c⌉ (1 + c_KF)``, and the counts behind it."""
    curvature_steps = math.ceil(steps / interval)
    counts = {"gradients": steps + curvature_steps, "hvps": 0, "forward": 0,
              "factor_updates": curvature_steps, "preconditionings": steps}
    return (steps * (1 + cost.kfac_precondition)
            + curvature_steps * (1 + cost.kfac_curvature)), counts


@pytest.mark.parametrize(("steps", "interval"), [(7, 3), (5, 1), (4, 10), (6, 2)])
def test_a_kfac_run_counts_what_the_rule_gives(digits, steps, interval):
    run = trainer(digits, "kfac", COST, lr=0.05, curvature_interval=interval)
    records = run.run(steps, eval_every=1, progress=False)
    for record in records:
        expected, counts = kfac_rule(record["step"], interval, COST)
        assert {name: record[name] for name in COUNTS} == counts
        assert record["grad_equivalents"] == expected
        assert record["example_grad_equivalents"] == BATCH * expected


def test_a_resumed_kfac_run_counts_on_where_it_stopped(digits):
    first = trainer(digits, "kfac", COST, lr=0.05, curvature_interval=3)
    first.run(4, eval_every=4, progress=False)
    state = first.state_dict()
    resumed = trainer(digits, "kfac", COST, lr=0.05, curvature_interval=3)
    resumed.load_state_dict(state)
    last = resumed.run(7, eval_every=7, progress=False)[-1]
    assert last["grad_equivalents"] == kfac_rule(7, 3, COST)[0]


def test_an_old_checkpoint_without_the_kfac_counts_still_loads(digits):
    run = trainer(digits, "sgd", COST, lr=0.1)
    run.run(2, eval_every=2, progress=False)
    state = run.state_dict()
    for name in ("factor_updates", "preconditionings"):
        del state["counts"][name]
    again = trainer(digits, "sgd", COST, lr=0.1)
    again.load_state_dict(state)
    assert again.counts == run.counts and again.grad_equivalents == 2


@pytest.mark.parametrize("kind", OTHERS)
def test_every_other_optimiser_counts_as_before(digits, kind):
    """No factor work, and the same gradient-equivalents whatever K-FAC's constants are:
    ``n_grad + c_HVP n_HVP + c_fwd n_fwd``, the rule before K-FAC's constants."""
    without = CostModel(hvp=COST.hvp, forward=COST.forward, kfac_curvature=0.0,
                        kfac_precondition=0.0)
    records = [trainer(digits, kind, cost, **OTHERS[kind]).run(3, eval_every=1,
                                                                 progress=False)
               for cost in (COST, without)]
    for with_kfac, plain in zip(*records):
        assert with_kfac["factor_updates"] == with_kfac["preconditionings"] == 0
        assert with_kfac["grad_equivalents"] == plain["grad_equivalents"] == (
            with_kfac["gradients"] + COST.hvp * with_kfac["hvps"]
            + COST.forward * with_kfac["forward"])
    assert records[0][-1]["grad_equivalents"] >= 3


def test_the_cost_model_weighs_every_count():
    assert COST(2, 4, 4, 3, 8) == 2 + 1.75 * 4 + 0.25 * 4 + 3.375 * 3 + 0.125 * 8
    assert COST(2, 4, 4) == 2 + 7 + 1  # no factor work: the rule without K-FAC
    for name, value in (("hvp", 0.0), ("forward", -0.5), ("kfac_curvature", -1.0),
                        ("kfac_precondition", math.inf)):
        with pytest.raises(ArgumentError) as refused:
            CostModel(**{name: value})
        assert refused.value.field == name


def raw_config(cost):
    table = {"name": "K-FAC", "type": "kfac", "lr": 0.05, "curvature_interval": 2}
    raw = digits_config("kfac_cost", [table], hidden=[4], steps=5, batch_size=BATCH, evals=5,
                        seeds=[0])
    raw["cost"] = cost
    return raw


def test_a_config_sets_kfacs_constants_and_its_records_use_them(tmp_path):
    cost = {"kfac_curvature": 2.5, "kfac_precondition": 0.75}
    assert validate_config(raw_config(cost)).cost == CostModel(**cost)
    assert validate_config(raw_config({})).cost == CostModel()  # the digits defaults
    run_benchmark(raw_config(cost), tmp_path / "run", fast=False, progress=False)
    _, records = load_benchmark(tmp_path / "run")
    assert records[-1]["grad_equivalents"] == kfac_rule(5, 2, CostModel(**cost))[0] == (
        5 * 1.75 + 3 * 3.5)
    for name, value in (("kfac_curvature", -1.0), ("kfac_precondition", "0.1")):
        with pytest.raises(ConfigError) as refused:
            validate_config(raw_config({name: value}))
        assert refused.value.field == f"cost.{name}"


def kfac_cost_script():
    """``bench/kfac_cost.py`` as a module."""
    path = Path(__file__).resolve().parent.parent / "bench" / "kfac_cost.py"
    spec = importlib.util.spec_from_file_location("kfac_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_measurement_splits_a_step_into_its_parts(capsys):
    """The parts in gradients from times (binary fractions: exact), and a real run of the
    script on the digits MLP (one repeat) that prints them."""
    script = kfac_cost_script()
    seconds = {script.GRADIENT: 2.0, script.SAMPLED: 3.0, script.FACTORS: 7.0,
               script.INVERSIONS: 1.0, script.PRECONDITION: 0.5, script.CURVATURE_STEP: 12.0,
               script.PLAIN_STEP: 2.5}
    parts = script.parts({name: [value, 2 * value] for name, value in seconds.items()}, min)
    assert parts == {"forward + backward": 1.0, "sampled backward": 0.5, "factor updates": 2.0,
                     "inversions": 0.5, "preconditioning": 0.25, "sum of the parts": 4.25,
                     "curvature step, measured": 6.0, "step without curvature, measured": 1.25,
                     "kfac_curvature": 2.5, "kfac_precondition": 0.25}
    script.main(["--only", "digits", "--repeats", "1"])
    printed = capsys.readouterr().out
    assert "digits MLP 64-12-10" in printed and "load average" in printed
    line = next(line for line in printed.splitlines() if line.strip().startswith("kfac_curvature"))
    assert all(float(value) > 0 for value in line.split()[1:])
