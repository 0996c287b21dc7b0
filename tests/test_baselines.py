"""The optimisers a user would pick instead: AdaHessian and Sophia-H from
``pytorch-optimizer``, L-BFGS from ``torch.optim``, through the registry and the trainer.

Each run through :class:`sfn_teach.train.Trainer` equals the library's optimiser driven by hand
in its documented way, bit for bit on the CPU, with the work counted from what actually ran;
and each keeps the runner's guarantees: reproducibility, exact resume (from a state dict and
after a SIGKILL of the CLI), bad hyperparameters refused before training with the field named,
and no non-finite step reaching the parameters.
"""

import copy
import inspect
import math
import signal

import pytest
import pytorch_optimizer
import torch
import torch.nn.functional as F
from asdl import FISHER_MC, KfacGradientMaker, PreconditioningConfig
from bench_configs import changed, digits_config, without_timing, write_config
from test_bench import cli, records_on_disk
from test_train import stopped_and_resumed

from sfn_teach.bench import ConfigError, load_benchmark, run_benchmark, validate_config
from sfn_teach.checkpoint import load_checkpoint
from sfn_teach.checks import ArgumentError
from sfn_teach.data import Batches, load_digits
from sfn_teach.models import MLP
from sfn_teach.optim import NonFiniteStepError
from sfn_teach.registry import OPTIMIZERS, get_optimizer
from sfn_teach.train import CostModel, Trainer, seed_everything

torch.set_num_threads(1)

SETTINGS = {
    "adahessian": dict(lr=0.1),
    "sophia_h": dict(lr=0.05, update_period=3),
    "lbfgs": dict(lr=0.5, max_iter=4),
    "lbfgs_wolfe": dict(lr=1.0, max_iter=4, line_search_fn="strong_wolfe"),
    "kfac": dict(lr=0.1, momentum=0.9, damping=1e-3, curvature_interval=2),
    "kfac_clipped": dict(lr=0.1, momentum=0.9, damping=1e-3, curvature_interval=2,
                         max_grad_norm=0.5),  # ASDL's CIFAR-10 examples clip (to norm 1)
}
KINDS = list(SETTINGS)
LIBRARY = {"adahessian": pytorch_optimizer.AdaHessian, "sophia_h": pytorch_optimizer.SophiaH,
           "lbfgs": torch.optim.LBFGS, "lbfgs_wolfe": torch.optim.LBFGS, "kfac": torch.optim.SGD,
           "kfac_clipped": torch.optim.SGD}
BATCH, HIDDEN, STEPS = 200, 6, 7


def key(kind):
    return {"lbfgs_wolfe": "lbfgs", "kfac_clipped": "kfac"}.get(kind, kind)


@pytest.fixture(scope="module")
def digits():
    return load_digits(torch.float64)


def fresh_model(seed=0):
    seed_everything(seed)
    return MLP((64, HIDDEN, 10)).double()


def make_trainer(digits, kind, seed=0, loss_fn=F.cross_entropy):
    model = fresh_model(seed)
    if key(kind) == "kfac":
        optimizer = OPTIMIZERS["kfac"](model, **SETTINGS[kind], data_size=BATCH)
    else:
        optimizer = OPTIMIZERS[key(kind)](model.parameters(), **SETTINGS[kind])
    return Trainer(model, optimizer, digits, BATCH, seed, loss_fn=loss_fn)


def by_hand(digits, kind, steps):
    """The library's optimiser as its documentation drives it, on the trainer's batches:
    ``loss.backward(create_graph=True); optimizer.step(); optimizer.zero_grad()`` for
    pytorch-optimizer's Hutchinson optimisers, ``optimizer.step(closure)`` for L-BFGS, ASDL's
    ``setup_model_call``, ``setup_loss_call``, ``forward_and_backward``, (as ASDL's CIFAR-10
    example) ``clip_grad_norm_``, then SGD for K-FAC. Returns the model and the gradients per
    step."""
    model = fresh_model()
    settings = dict(SETTINGS[kind])
    if key(kind) == "kfac":
        interval, clip = settings.pop("curvature_interval"), settings.pop("max_grad_norm", None)
        maker = KfacGradientMaker(model, PreconditioningConfig(
            data_size=BATCH, damping=settings.pop("damping"), curvature_upd_interval=interval,
            preconditioner_upd_interval=interval), fisher_type=FISHER_MC)
    optimizer = LIBRARY[kind](model.parameters(), **settings)
    batches = Batches(digits.train, BATCH, 0)
    evaluations = []
    for step in range(steps):
        x, y = batches[step]
        if key(kind) == "kfac":
            optimizer.zero_grad()
            dummy_y = maker.setup_model_call(model, x)
            maker.setup_loss_call(F.cross_entropy, dummy_y, y)
            maker.forward_and_backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            evaluations.append(2 if step % interval == 0 else 1)  # + the Fisher's backward
        elif kind in ("adahessian", "sophia_h"):
            loss = F.cross_entropy(model(x), y)
            loss.backward(create_graph=True)
            optimizer.step()
            optimizer.zero_grad()
            evaluations.append(1)
        else:
            calls = 0

            def closure(x=x, y=y):
                nonlocal calls
                calls += 1
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            optimizer.step(closure)
            evaluations.append(calls)
    return model, evaluations


@pytest.mark.parametrize("kind", KINDS)
def test_the_trainer_equals_the_library_driven_by_hand(digits, kind):
    trainer = make_trainer(digits, kind)
    records = trainer.run(STEPS, eval_every=STEPS, progress=False)
    model, evaluations = by_hand(digits, kind, STEPS)
    for p, q in zip(trainer.model.parameters(), model.parameters()):
        assert torch.equal(p, q)
    # the work: a gradient per closure evaluation (K-FAC: + the Fisher's backward), Hutchinson
    # products by the library's rule, K-FAC's factor updates (steps 1, 3, 5, 7) and
    # preconditionings (every step)
    assert records[-1]["gradients"] == sum(evaluations)
    expected_hvps = {"adahessian": STEPS, "sophia_h": 3}.get(kind, 0)  # Sophia: steps 1, 4, 7
    factor_updates, preconditionings = (4, STEPS) if key(kind) == "kfac" else (0, 0)
    assert records[-1]["hvps"] == expected_hvps
    assert (records[-1]["factor_updates"], records[-1]["preconditionings"]) == (
        factor_updates, preconditionings)
    cost = CostModel()
    assert records[-1]["grad_equivalents"] == (sum(evaluations) + 2.0 * expected_hvps
                                               + cost.kfac_curvature * factor_updates
                                               + cost.kfac_precondition * preconditionings)
    if kind.startswith("lbfgs"):
        assert sum(evaluations) > STEPS  # several closure evaluations per step, all counted
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert all(p.grad is None for p in trainer.model.parameters()) == (
        kind in ("adahessian", "sophia_h"))  # create_graph: the cycle is broken after the step


def test_the_registry_says_how_each_is_driven():
    for name in ("adahessian", "sophia_h"):
        entry = get_optimizer(name)
        assert entry.create_graph and entry.uses_backward and entry.guarded
        assert "kwargs" not in entry.defaults and entry.defaults["lr"] == inspect_default(
            entry.cls, "lr")
    lbfgs = get_optimizer("lbfgs")
    assert not lbfgs.create_graph and lbfgs.hvps is None and lbfgs.guarded
    assert lbfgs.defaults["line_search_fn"] is None and lbfgs.defaults["max_iter"] == 20
    kfac = get_optimizer("kfac")
    assert kfac.needs_model and not kfac.uses_backward and kfac.guarded
    assert "data_size" not in kfac.defaults and kfac.defaults["damping"] == 1e-3


def inspect_default(cls, name):
    return inspect.signature(cls).parameters[name].default


@pytest.mark.parametrize("kind", KINDS)
def test_reproducible_and_resumed_exactly(digits, kind, tmp_path):
    reference = make_trainer(digits, kind)
    expected = reference.run(6, eval_every=2, progress=False)
    assert without_timing(make_trainer(digits, kind).run(6, eval_every=2, progress=False)) \
        == without_timing(expected)

    # the global generators are disturbed before the restore: Hutchinson's probes come from them
    records, _, resumed = stopped_and_resumed(lambda: make_trainer(digits, kind), 4, 6,
                                              tmp_path / "state.pt")
    assert without_timing(records) == without_timing(expected)
    for p, q in zip(resumed.model.parameters(), reference.model.parameters()):
        assert torch.equal(p, q)


# The three in one benchmark config (tiny: 8 steps, a record every 2)
TABLES = [{"name": "AdaHessian", "type": "adahessian", "lr": 0.1},
          {"name": "Sophia-H", "type": "sophia_h", "lr": 0.05, "update_period": 3},
          {"name": "L-BFGS", "type": "lbfgs", "lr": 1.0, "max_iter": 3,
           "line_search_fn": "strong_wolfe"},
          {"name": "K-FAC", "type": "kfac", "lr": 0.1, "curvature_interval": 3}]
CONFIG = digits_config("baselines", TABLES, hidden=[6], steps=8, batch_size=200, evals=4,
                       checkpoint_every=1, seeds=[0])

BAD = [
    # (index, hyperparameter, value)
    (0, "lr", -0.1),
    (0, "betas", [0.9, 1.5]),
    (0, "update_period", 0),
    (0, "hessian_power", 2.0),
    (1, "hessian_distribution", "uniform"),
    (1, "num_samples", 0),
    (1, "p", 0.0),
    (2, "line_search_fn", "armijo"),
    (2, "history_size", 0),
    (2, "max_iter", 1.5),
    (2, "momentum", 0.9),  # not a hyperparameter of L-BFGS
    (3, "damping", 0.0),
    (3, "ema_decay", 0.5),  # not offered (ASDL's moving average needs CUDA's NVTX)
    (3, "curvature_interval", 0),
    (3, "max_grad_norm", 0.0),
    (3, "data_size", 10),  # set by the builder (the batch size), not by a config
]


@pytest.mark.parametrize("index, name, value", BAD, ids=[f"{i}-{n}" for i, n, _ in BAD])
def test_bad_hyperparameters_are_refused_with_the_field_named(index, name, value):
    with pytest.raises(ConfigError) as error:
        validate_config(changed(CONFIG, ("optimizers", index, name), value))
    assert error.value.field == f"optimizers[{index}].{name}"


def test_sigkill_then_resume_gives_identical_records(tmp_path):
    reference = tmp_path / "reference"
    run_benchmark(CONFIG, reference, progress=False)
    expected = without_timing(load_benchmark(reference)[1])
    assert len(expected) == 4 * 5
    path = write_config(tmp_path, CONFIG)
    out = tmp_path / "killed"
    for number, kill_at in enumerate(("record:3", "checkpoint-write:2", "record:2")):
        process = cli(path, out, *(["--resume"] if number else []), kill_at=kill_at)
        assert process.wait(timeout=60) == -signal.SIGKILL, process.stderr.read()
        on_disk = without_timing(records_on_disk(out))
        assert on_disk == expected[: len(on_disk)]
    process = cli(path, out, "--resume")
    assert process.wait(timeout=60) == 0, process.stderr.read()
    assert without_timing(load_benchmark(out)[1]) == expected


class PoisonAfter:
    """Cross-entropy that turns NaN from its ``n``-th call on (a stand-in for a divergence)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, outputs, targets):
        self.calls += 1
        loss = F.cross_entropy(outputs, targets)
        return loss * math.nan if self.calls >= self.n else loss


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_finite_step_never_reaches_the_parameters(digits, kind):
    trainer = make_trainer(digits, kind)
    trainer.run(2, eval_every=2, progress=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    state = copy.deepcopy(trainer.optimizer.state_dict())
    trainer.loss_fn = PoisonAfter(1)  # every later evaluation (training and records) is NaN
    with pytest.raises(NonFiniteStepError, match=r"step 3 gave non-finite .* step was undone"):
        trainer.train_step()
    for p, q in zip(trainer.model.parameters(), before):
        assert torch.equal(p, q)
    assert str(trainer.optimizer.state_dict()) == str(state)
    assert trainer.step == 2 and trainer.counts["gradients"] >= 2


def test_a_divergent_run_stops_with_its_finite_records_and_checkpoint_kept(tmp_path):
    """AdaHessian at α = 1e306: its first step gives finite (huge) parameters at which the loss
    overflows, so the second step is refused: the run stops with the error, the records up to
    step 1 are kept (step 1's losses are the measured ∞) and the checkpoint holds the finite
    parameters of step 1."""
    config = changed(CONFIG, ("optimizers",), [{**TABLES[0], "lr": 1e306}])
    config["train"]["evals"] = 8  # a record and a checkpoint after every step
    with pytest.raises(NonFiniteStepError, match="AdaHessian: step 2 gave non-finite loss"):
        run_benchmark(config, tmp_path, progress=False)
    records = records_on_disk(tmp_path)
    assert [r["step"] for r in records] == [0, 1]
    assert math.isfinite(records[0]["train_loss"]) and records[1]["train_loss"] == math.inf
    state = load_checkpoint(tmp_path / "adahessian-seed0" / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert state["step"] == records[-1]["step"]


def test_kfac_resumes_exactly_on_convolutions_with_batchnorm():
    """Conv2d and Linear layers are preconditioned, BatchNorm gets the plain gradient, and the
    state_dict (SGD's state and every Kronecker factor's inverse ASDL keeps) restores the run
    exactly."""
    def network():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3),
                                   torch.nn.ReLU(), torch.nn.Flatten(),
                                   torch.nn.Linear(3 * 4 * 4, 5)).double()

    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 5, (8,))
    model = network()
    optimizer = OPTIMIZERS["kfac"](model, lr=0.05, curvature_interval=3, data_size=8)
    assert sorted(optimizer.layers) == ["0", "4"]  # BatchNorm ("1") is left alone
    step = lambda m, o: o.step(lambda: F.cross_entropy(m(x), y))  # noqa: E731
    for _ in range(2):
        step(model, optimizer)
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(optimizer.state_dict())
    # without a moving average ASDL keeps the damped inverses (A + π√λ)⁻¹, (G + √λ/π)⁻¹ only
    assert set(saved["kfac"]["factors"]["0"]) == {"A_inv", "B_inv"}
    rng = torch.get_rng_state()
    for _ in range(3):
        step(model, optimizer)
    again = network()
    again.load_state_dict(saved_model)
    restored = OPTIMIZERS["kfac"](again, lr=0.05, curvature_interval=3, data_size=8)
    restored.load_state_dict(saved)
    torch.set_rng_state(rng)
    for _ in range(3):
        step(again, restored)
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ArgumentError, match="data_size"):  # a batch of another size
        restored.step(lambda: F.cross_entropy(again(x[:4]), y[:4]))


def test_kfacs_clipping_acts_and_a_failed_cholesky_stops_the_run(digits, monkeypatch):
    """max_grad_norm changes the run (the preconditioned gradient is longer than 0.5 here); a
    damped factor that Cholesky refuses (as in a run whose factors blew up) stops the run with
    NonFiniteStepError, the parameters as before the step."""
    clipped, plain = (make_trainer(digits, kind) for kind in ("kfac_clipped", "kfac"))
    for trainer in (clipped, plain):
        trainer.run(2, eval_every=2, progress=False)
    assert not all(torch.equal(p, q) for p, q in zip(clipped.model.parameters(),
                                                     plain.model.parameters()))

    def refuse(matrix, damping):
        raise torch.linalg.LinAlgError("linalg.cholesky: the input is not positive-definite.")

    monkeypatch.setattr("asdl.operations.operation.cholesky_inv", refuse)
    before = [p.detach().clone() for p in plain.model.parameters()]
    with pytest.raises(NonFiniteStepError, match="not positive definite .* parameters are "
                                                 "unchanged and the run stops"):
        plain.train_step()  # step 3: a curvature step (interval 2)
    assert all(torch.equal(p, q) for p, q in zip(plain.model.parameters(), before))
