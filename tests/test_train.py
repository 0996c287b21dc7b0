"""The training loop: closures, evaluation, cost accounting, determinism and exact resume."""

import copy
import io
import math
import time

import pytest
import torch
import torch.nn.functional as F

import sfn_teach.train as train_module
from sfn_teach.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from sfn_teach.data import load_digits
from sfn_teach.models import MLP
from sfn_teach.train import (
    CURVATURE_FIELDS,
    OPTIMIZERS,
    STAT_FIELDS,
    TIMING_FIELDS,
    CostModel,
    Trainer,
    curvature_diagnostics,
    evaluate,
    hessian_eigenvalues,
    make_closure,
    seed_everything,
)

torch.set_num_threads(1)

SETTINGS = {
    "sgd": dict(lr=0.05, momentum=0.9),
    "adam": dict(lr=1e-3),
    "series_sfn": dict(num_terms=4, acceleration_order=1, damping=1e-3, adaptive=True,
                       damping_factor=0.9),
    "exact_sfn": dict(damping=1e-3, damping_factor=0.9),
}


@pytest.fixture(scope="module")
def digits():
    return load_digits(torch.float64)


def make_trainer(digits, kind, seed=0, batch_size=200, hidden=6):
    seed_everything(seed)
    model = MLP((64, hidden, 10)).double()
    optimizer = OPTIMIZERS[kind](model.parameters(), **SETTINGS[kind])
    return Trainer(model, optimizer, digits, batch_size, seed)


def without_wall_clock(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def test_closures_hide_the_backward_difference(digits):
    x, y = digits.train.inputs[:50], digits.train.targets[:50]
    for kind in ("sgd", "series_sfn"):
        model = MLP((64, 4, 10)).double()
        optimizer = OPTIMIZERS[kind](model.parameters(), **SETTINGS[kind])
        loss = make_closure(optimizer, model, F.cross_entropy, x, y)()
        assert torch.allclose(loss, F.cross_entropy(model(x), y))
        has_grad = all(p.grad is not None for p in model.parameters())
        assert has_grad == (kind == "sgd")  # torch.optim gets backward, SeriesSFN does not
        assert loss.requires_grad


def test_evaluate_in_chunks_equals_whole(digits):
    model = MLP((64, 5, 10)).double()
    whole = evaluate(model, F.cross_entropy, digits.val)
    chunked = evaluate(model, F.cross_entropy, digits.val, batch_size=64)
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-12)
    assert chunked["accuracy"] == whole["accuracy"]
    predictions = model(digits.val.inputs).argmax(1)
    assert whole["accuracy"] == float((predictions == digits.val.targets).double().mean())
    assert model.training  # restored


def test_records_schedule_and_cost_accounting(digits):
    trainer = make_trainer(digits, "series_sfn")
    seen, per_step = [], []
    original = trainer.train_step

    def counting_step():
        per_step.append(original())
        return per_step[-1]

    trainer.train_step = counting_step
    records = trainer.run(7, eval_every=3, on_record=seen.append, progress=False)
    assert [r["step"] for r in records] == [0, 3, 6, 7] and seen == records
    assert records[0]["batch_loss"] is None and records[0]["grad_equivalents"] == 0
    hvps = sum(s["num_hvps"] for s in per_step)
    forward = sum(s.get("num_forward", 0) for s in per_step)
    scale_products = [s["scale_products"] for s in per_step]  # the "ritz" rule's extra ones
    assert scale_products[0] > 0  # the power iteration that starts the "ritz" rule
    assert hvps == 7 * 2 * (4 - 1) + sum(scale_products) and forward == 7
    last = records[-1]
    assert (last["gradients"], last["hvps"], last["forward"]) == (7, hvps, forward)
    assert last["grad_equivalents"] == CostModel()(7, hvps, forward) == 7 + 2.0 * hvps + 3.5
    assert last["epoch"] == 7 / 5  # 1,000 // 200 = 5 steps per epoch
    assert last["damping"] == per_step[-1]["damping"] and last["alpha"] == pytest.approx(1.0)
    for field in ("lambda_max", "scale_ratio", "implicit_damping"):  # SeriesSFN's own stats
        assert last[field] == per_step[-1][field] is not None
    # per example: each step's gradient-equivalents times the 200 examples of its batch
    step_costs = [CostModel()(1, s["num_hvps"], s.get("num_forward", 0)) for s in per_step]
    assert last["example_grad_equivalents"] == sum(200 * c for c in step_costs)
    assert CostModel(hvp=1.5, forward=0.25)(2, 4, 4) == 2 + 6 + 1
    sgd = make_trainer(digits, "sgd").run(2, eval_every=1, progress=False)
    assert sgd[-1]["grad_equivalents"] == 2 and sgd[-1]["damping"] is None
    assert all(sgd[-1][field] is None for field in STAT_FIELDS)
    assert not set(CURVATURE_FIELDS) & set(sgd[-1])  # no diagnostics unless asked for


def test_work_per_example_weighs_every_step_by_its_batch(digits):
    """One gradient on one example is 1: SGD on batches of 400 does 4× the work per example of
    SGD on batches of 100 in the same number of steps, the same work per step."""
    small = make_trainer(digits, "sgd", batch_size=100).run(3, eval_every=1, progress=False)
    large = make_trainer(digits, "sgd", batch_size=400).run(3, eval_every=1, progress=False)
    assert [r["grad_equivalents"] for r in small] == [r["grad_equivalents"] for r in large] == [
        0, 1, 2, 3]
    assert [r["example_grad_equivalents"] for r in small] == [0, 100, 200, 300]
    assert [r["example_grad_equivalents"] for r in large] == [0, 400, 800, 1200]


def test_wall_clock_counts_training_steps_only(digits, monkeypatch):
    real = train_module.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", slow_evaluate)
    trainer = make_trainer(digits, "sgd")
    start = time.perf_counter()
    records = trainer.run(2, eval_every=1, progress=False)
    assert time.perf_counter() - start > 1.8  # 3 records x 3 splits x 0.2 s
    assert 0 < records[-1]["wall_clock"] < 0.5


@pytest.mark.parametrize("kind", ["sgd", "adam", "series_sfn", "exact_sfn"])
def test_bit_for_bit_reproducible(digits, kind):
    first, second = make_trainer(digits, kind), make_trainer(digits, kind)
    a = first.run(6, eval_every=3, progress=False)
    b = second.run(6, eval_every=3, progress=False)
    assert without_wall_clock(a) == without_wall_clock(b)
    for p, q in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    other = make_trainer(digits, kind, seed=1).run(6, eval_every=3, progress=False)
    assert without_wall_clock(other) != without_wall_clock(a)


def stopped_and_resumed(make, stop: int, end: int, path):
    """A trainer from ``make()`` run to ``stop`` steps (a record every 2) and checkpointed to
    ``path``; the global generators disturbed; a fresh trainer with reset weights restored from
    the checkpoint and run to ``end``. Returns the records of both, the first and the resumed
    trainer."""
    first = make()
    records = first.run(stop, eval_every=2, progress=False)
    save_checkpoint(first.state_dict(), path)  # weights_only-loadable
    torch.rand(5)  # disturb the global generators before restoring them
    resumed = make()
    resumed.model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    resumed.load_state_dict(load_checkpoint(path))
    records += resumed.run(end, eval_every=2, progress=False)
    return records, first, resumed


@pytest.mark.parametrize("kind", ["sgd", "adam", "series_sfn"])
def test_state_dict_resumes_exactly(digits, kind, tmp_path):
    reference = make_trainer(digits, kind)
    expected = reference.run(9, eval_every=2, progress=False)

    records, first, resumed = stopped_and_resumed(lambda: make_trainer(digits, kind), 4, 9,
                                                  tmp_path / "state.pt")
    assert without_wall_clock(records) == without_wall_clock(expected)
    for p, q in zip(resumed.model.parameters(), reference.model.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="data seed"):
        make_trainer(digits, kind, seed=3).load_state_dict(first.state_dict())


def test_rng_state_round_trip():
    import random

    import numpy as np

    np.random.randn()  # noqa: NPY002 (the legacy global generator is what is saved)
    random.gauss(0, 1)
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    draws = lambda: (torch.rand(3).tolist(), np.random.rand(2).tolist(),  # noqa: E731, NPY002
                     random.random(), random.gauss(0, 1))
    expected = draws()
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert draws() == expected


def test_progress_bar_is_silent_when_asked(digits, capsys):
    make_trainer(digits, "sgd").run(3, eval_every=1, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    make_trainer(digits, "sgd").run(3, eval_every=1, progress=True, desc="demo")
    assert "demo" in capsys.readouterr().err


def test_hessian_eigenvalues_match_autograd():
    torch.manual_seed(0)
    model = MLP((3, 4, 2)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    eigenvalues = hessian_eigenvalues(model, F.cross_entropy, x, y)
    params = list(model.parameters())
    shapes = [p.shape for p in params]

    def loss(flat):
        tensors, offset = {}, 0
        for (name, _), shape in zip(model.named_parameters(), shapes):
            tensors[name] = flat[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, tensors, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    dense = torch.autograd.functional.hessian(loss, flat)
    assert eigenvalues.shape == (flat.numel(),)
    assert torch.allclose(eigenvalues, torch.linalg.eigvalsh(dense), atol=1e-10)
    assert eigenvalues[0] < 0 < eigenvalues[-1]  # saddle directions are real in networks


# --------------------------------------------------------------------------------------------
# Time budgets
# --------------------------------------------------------------------------------------------


def test_a_time_budget_stops_after_the_first_step_that_reaches_it(digits, monkeypatch):
    monkeypatch.setattr(train_module, "timed", lambda fn, device: (fn(), 1.0))  # 1 s per step
    records = make_trainer(digits, "sgd").run(10, eval_every=4, progress=False, time_budget=2.5)
    assert [(r["step"], r["wall_clock"]) for r in records] == [(0, 0.0), (3, 3.0)]
    exact = make_trainer(digits, "sgd").run(10, eval_every=4, progress=False, time_budget=3)
    assert exact[-1]["step"] == 3  # reaching the budget is enough
    capped = make_trainer(digits, "sgd").run(5, eval_every=4, progress=False, time_budget=100.0)
    assert [r["step"] for r in capped] == [0, 4, 5]  # the step budget stays the cap
    for bad in (0, -1.0, math.inf, math.nan, "2", True):
        with pytest.raises(ValueError, match="time_budget must be (finite and > 0|a real number)"):
            make_trainer(digits, "sgd").run(5, eval_every=4, progress=False, time_budget=bad)


def test_a_resumed_run_continues_until_its_time_budget(digits, monkeypatch):
    monkeypatch.setattr(train_module, "timed", lambda fn, device: (fn(), 1.0))
    expected = make_trainer(digits, "adam").run(10, eval_every=2, progress=False,
                                                time_budget=4.5)
    assert [r["step"] for r in expected] == [0, 2, 4, 5]
    first = make_trainer(digits, "adam")
    records = first.run(2, eval_every=2, progress=False)  # interrupted after step 2
    resumed = make_trainer(digits, "adam")
    resumed.load_state_dict(first.state_dict())
    assert not resumed.finished(10, 4.5)
    records += resumed.run(10, eval_every=2, progress=False, time_budget=4.5)
    assert records == expected
    assert resumed.finished(10, 4.5) and not resumed.finished(10)
    stopped = make_trainer(digits, "adam")
    stopped.load_state_dict(resumed.state_dict())  # a run that stopped on its budget is over
    assert stopped.run(10, eval_every=2, progress=False, time_budget=4.5) == []


# --------------------------------------------------------------------------------------------
# Curvature diagnostics, against an independent dense computation
# --------------------------------------------------------------------------------------------


def dense_reference(model, inputs, targets):
    """``(h, Q, g)``: eigen-decomposition of the Hessian by ``torch.func.hessian`` and
    ``torch.linalg.eigh``, and the gradient by ``torch.func.grad``, over the flat parameters."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        tensors = dict(zip(names, torch.split(theta, [s.numel() for s in shapes])))
        tensors = {name: t.view(shape) for (name, t), shape in zip(tensors.items(), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, tensors, (inputs,)), targets)

    h, q = torch.linalg.eigh(torch.func.hessian(loss)(flat))
    return h, q, torch.func.grad(loss)(flat)


def series_filter(h, num_terms, scale, damping):
    """``V^(-½) Σ_k c_k (1 − h²/V)^k`` with ``Σ_k c_k x^k`` the Taylor series of
    ``1/(√(1 − x) + λ/√V)`` (100-digit mpmath): the series' filter without acceleration."""
    import mpmath

    mpmath.mp.dps = 100
    d = damping / math.sqrt(scale)
    c = [float(a) for a in mpmath.taylor(lambda x: 1 / (mpmath.sqrt(1 - x) + d), 0,
                                         num_terms - 1)]
    x = 1 - h**2 / scale
    return sum(ck * x**k for k, ck in enumerate(c)) / math.sqrt(scale)


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


SERIES = dict(num_terms=6, acceleration_order=0, damping=1e-2, adaptive=True,
              damping_factor=0.9)


@pytest.mark.parametrize("kind", ["series_sfn", "sgd"])
def test_curvature_diagnostics_equal_a_dense_computation_by_hand(digits, kind):
    """Digits MLP 64-8-10 in float64: at every 2nd record, λ_max(H²), cos(g, Δ_exact) and (for
    SeriesSFN, from its first step on) cos(Δ_series, Δ_exact) on the first 100 training
    examples, with the optimiser's current V and λ (as its records say)."""
    seed_everything(0)
    model = MLP((64, 8, 10)).double()
    settings = SERIES if kind == "series_sfn" else SETTINGS["sgd"]
    optimizer = OPTIMIZERS[kind](model.parameters(), **settings)
    trainer = Trainer(model, optimizer, digits, 200, 0, curvature_every=2,
                      curvature_batch_size=100)
    inputs, targets = digits.train.inputs[:100], digits.train.targets[:100]
    checked = []

    def check(record):
        if len(checked) % 2:  # records 1, 3: no diagnostics
            assert all(record[field] is None for field in CURVATURE_FIELDS)
        else:
            h, q, g = dense_reference(model, inputs, targets)
            assert record["lambda_max_squared"] == pytest.approx(float((h**2).max()), rel=1e-10)
            if kind == "sgd":  # no λ: Δ_exact is not defined (H has exactly flat directions)
                assert record["cos_gradient_exact"] is record["cos_series_exact"] is None
            else:
                damping = record["damping"] if record["step"] else SERIES["damping"]
                exact = q @ ((q.T @ g) / (h.abs() + damping))
                assert record["cos_gradient_exact"] == pytest.approx(cosine(g, exact), rel=1e-9)
                if record["step"] == 0:  # no V before the first step
                    assert record["cos_series_exact"] is None
                else:
                    weights = series_filter(h, SERIES["num_terms"], record["scale"], damping)
                    series = q @ (weights * (q.T @ g))
                    assert record["cos_series_exact"] == pytest.approx(cosine(series, exact),
                                                                       rel=1e-9)
        checked.append(record)

    records = trainer.run(4, eval_every=1, on_record=check, progress=False)
    assert len(checked) == 5
    if kind == "series_sfn":  # the series is neither the gradient nor exact SFN
        assert 0 < records[2]["cos_gradient_exact"] < records[2]["cos_series_exact"] < 1

    # instrumentation only: the same run without diagnostics gives the same records otherwise
    seed_everything(0)
    plain_model = MLP((64, 8, 10)).double()
    plain = Trainer(plain_model, OPTIMIZERS[kind](plain_model.parameters(), **settings),
                    digits, 200, 0).run(4, eval_every=1, progress=False)
    drop = (*TIMING_FIELDS, *CURVATURE_FIELDS)
    assert [{k: v for k, v in r.items() if k not in drop} for r in records] == [
        {k: v for k, v in r.items() if k not in drop} for r in plain]


def test_curvature_diagnostics_are_not_timed(digits, monkeypatch):
    """(Nor counted as work: the previous test's records equal those of a run without.)"""
    real = train_module.curvature_diagnostics

    def slow_diagnostics(*args):
        time.sleep(0.3)
        return real(*args)

    monkeypatch.setattr(train_module, "curvature_diagnostics", slow_diagnostics)
    seed_everything(0)
    model = MLP((64, 8, 10)).double()
    trainer = Trainer(model, OPTIMIZERS["series_sfn"](model.parameters(), **SERIES), digits, 200,
                      0, curvature_every=1)
    record = trainer.run(2, eval_every=1, progress=False)[-1]
    assert record["wall_clock"] < 0.3 and record["lambda_max_squared"] is not None


def test_curvature_diagnostics_refuse_bad_settings(digits):
    def trainer(hidden=8, **kwargs):
        model = MLP((64, hidden, 10)).double()
        return Trainer(model, OPTIMIZERS["sgd"](model.parameters(), lr=0.1), digits, 200, 0,
                       **kwargs)

    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="curvature_every must be an int >= 1"):
            trainer(curvature_every=bad)
    with pytest.raises(ValueError, match="curvature_every needs the dense Hessian.*4096.*7510"):
        trainer(hidden=100, curvature_every=1)  # 64·100 + 100 + 100·10 + 10 parameters
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="curvature_batch_size must be an int between 1 and "
                                             "1000"):
            trainer(curvature_every=1, curvature_batch_size=bad)


def test_curvature_diagnostics_leave_model_and_optimizer_as_they_were(digits):
    seed_everything(0)
    model = MLP((64, 8, 10)).double()
    optimizer = OPTIMIZERS["series_sfn"](model.parameters(), **SERIES)
    Trainer(model, optimizer, digits, 200, 0).run(2, eval_every=2, progress=False)
    before = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
              rng_state())
    x, y = digits.train.inputs[:50], digits.train.targets[:50]
    diagnostics = curvature_diagnostics(model, F.cross_entropy, x, y, optimizer)
    assert set(diagnostics) == set(CURVATURE_FIELDS)
    after = (model.state_dict(), optimizer.state_dict(), rng_state())
    assert str(after) == str(before) and all(p.grad is None for p in model.parameters())
