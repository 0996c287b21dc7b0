"""The training loop: closures, evaluation, cost accounting, determinism and exact resume."""

import io
import time

import pytest
import torch
import torch.nn.functional as F

import sfn_teach.train as train_module
from sfn_teach.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from sfn_teach.data import load_digits
from sfn_teach.models import MLP
from sfn_teach.train import (
    OPTIMIZERS,
    TIMING_FIELDS,
    CostModel,
    Trainer,
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
    assert CostModel(hvp=1.5, forward=0.25)(2, 4, 4) == 2 + 6 + 1
    sgd = make_trainer(digits, "sgd").run(2, eval_every=1, progress=False)
    assert sgd[-1]["grad_equivalents"] == 2 and sgd[-1]["damping"] is None


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


@pytest.mark.parametrize("kind", ["sgd", "adam", "series_sfn"])
def test_state_dict_resumes_exactly(digits, kind, tmp_path):
    reference = make_trainer(digits, kind)
    expected = reference.run(9, eval_every=2, progress=False)

    first = make_trainer(digits, kind)
    records = first.run(4, eval_every=2, progress=False)
    save_checkpoint(first.state_dict(), tmp_path / "state.pt")
    torch.rand(5)  # disturb the global generators before restoring them
    resumed = make_trainer(digits, kind, seed=0)
    resumed.model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    resumed.load_state_dict(load_checkpoint(tmp_path / "state.pt"))
    records += resumed.run(9, eval_every=2, progress=False)
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
