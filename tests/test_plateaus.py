"""sfn_teach.plateaus against exact references in float64."""

import math

import pytest
import torch

from sfn_teach import plateaus
from sfn_teach.optim import ExactSFN, Newton
from sfn_teach.train import CostModel


def test_deep_linear_task_is_whitened_and_starts_at_half_the_singular_values_squared():
    task = plateaus.deep_linear_task()
    n = task.inputs.shape[0]
    torch.testing.assert_close(task.inputs.T @ task.inputs / n, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.svdvals(task.teacher),
                               torch.tensor(plateaus.SINGULAR_VALUES, dtype=torch.float64))
    zero = torch.zeros(n, 6, dtype=torch.float64)
    assert float(task.loss_fn(zero, task.targets)) == pytest.approx(
        0.5 * sum(s * s for s in plateaus.SINGULAR_VALUES), rel=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_deep_linear_loss_and_gradients_match_autograd_and_the_closed_forms(depth):
    task = plateaus.deep_linear_task()
    model = plateaus.DeepLinear(depth=depth, init_scale=0.7, seed=3)
    loss = task.loss_fn(model(task.inputs), task.targets)
    closed = plateaus.deep_linear_loss(model.weights, task.teacher)
    assert float(loss) == pytest.approx(float(closed), rel=1e-12)
    grads = torch.autograd.grad(loss, model.weights)
    expected = plateaus.deep_linear_gradients([w.detach() for w in model.weights], task.teacher)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_hessian_index_is_a_dense_eigvalsh_count():
    task = plateaus.deep_linear_task()
    model = plateaus.DeepLinear(depth=3, init_scale=0.3, seed=1)
    params = list(model.parameters())
    loss = task.loss_fn(model(task.inputs), task.targets)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = [torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat[i], params,
                                                                    retain_graph=True)])
            for i in range(flat.numel())]
    dense = torch.stack(rows)
    torch.testing.assert_close(plateaus.flat_hessian(model, task.loss_fn, task.inputs,
                                                     task.targets), 0.5 * (dense + dense.T))
    h = torch.linalg.eigvalsh(0.5 * (dense + dense.T))
    expected = int((h < -1e-6 * h.abs().max()).sum()) / h.numel()
    assert plateaus.hessian_index(model, task.loss_fn, task.inputs, task.targets) == expected
    assert 0 < expected < 1  # a saddle region


def test_index_of_by_hand():
    assert plateaus.index_of(torch.tensor([-2.0, -1e-9, 0.0, 1.0])) == 0.25
    assert plateaus.index_of(torch.tensor([-1.0, -1.0])) == 1.0
    assert plateaus.index_of(torch.zeros(3)) == 0.0


def test_escape_step_on_a_hand_made_curve():
    curve = [8.0, 7.9, 7.9, 4.1, 3.9, 5.0, 1.0]
    assert plateaus.escape_step(curve, 4.0) == 4
    assert plateaus.escape_step(curve, 0.5) is None
    assert plateaus.escape_step(curve, 9.0) == 0


def test_escape_summary_counts_a_run_that_never_escaped_as_infinite():
    runs = [plateaus.PlateauRun("m", s, loss=[1.0] * 5, work=list(range(5)), escape=e)
            for s, e in enumerate([3, 1, None])]
    summary = plateaus.escape_summary(runs)
    assert summary == dict(median=3, low=1, high=math.inf, escaped=2, runs=3)
    assert plateaus.escape_summary(runs[:2], "work") == dict(median=2.0, low=1, high=3,
                                                             escaped=2, runs=2)


def test_run_plateau_records_losses_work_and_the_escape():
    task = plateaus.deep_linear_task()
    run = plateaus.run_plateau(task, plateaus.DeepLinear(depth=2, init_scale=0.1),
                               lambda p: torch.optim.SGD(p, lr=0.1), 100, index_every=10,
                               stop_after_escape=2)
    assert run.loss[0] == pytest.approx(7.16125, abs=0.05)  # ½‖M‖² plus the initial W
    assert run.escape is not None and run.loss[run.escape] < run.loss[0] / 2
    assert all(x >= run.loss[0] / 2 for x in run.loss[:run.escape])
    assert len(run.loss) == run.escape + 3 and run.work == list(range(len(run.loss)))
    # the same losses as the closed-form gradient descent
    closed = plateaus.closed_form_descent(2, 0.1, len(run.loss) - 1, lr=0.1)
    assert run.loss == pytest.approx(closed, rel=1e-9)
    assert set(run.index) == {t for t in range(len(run.loss)) if t % 10 == 0}


def test_run_plateau_counts_a_curvature_step_with_the_cost_model():
    task = plateaus.deep_linear_task()
    run = plateaus.run_plateau(task, plateaus.DeepLinear(depth=2, init_scale=0.1),
                               lambda p: ExactSFN(p, lr=0.5, damping=0.1), 3)
    per_step = CostModel()(1, 72, 0)  # a dense 72 × 72 Hessian from 72 products
    assert run.work == pytest.approx([0, per_step, 2 * per_step, 3 * per_step])


def test_newton_halves_theta_near_the_saddle_of_a_depth_3_network():
    task = plateaus.deep_linear_task()
    model = plateaus.DeepLinear(depth=3, init_scale=1e-3)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    Newton(model.parameters(), lr=1.0, damping=0.0).step(
        lambda: task.loss_fn(model(task.inputs), task.targets))
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(after, before / 2, rtol=1e-3, atol=1e-12)


def test_tanh_network_small_and_default_initialisation():
    small = plateaus.tanh_network((8, 5, 10), 1e-3, seed=0)
    assert all(float(m.bias.abs().max()) == 0 for m in small if hasattr(m, "bias"))
    assert float(small[0].weight.abs().max()) < 1e-2
    default = plateaus.tanh_network((8, 5, 10), None, seed=0)
    assert float(default[0].weight.abs().max()) > 0.1


def test_checks_accept_the_right_answers_and_refuse_wrong_ones():
    assert plateaus.check_deep_linear_gradients(plateaus.deep_linear_gradients).correct
    assert not plateaus.check_deep_linear_gradients(
        lambda ws, m: [torch.zeros_like(w) for w in ws]).correct
    assert not plateaus.check_deep_linear_gradients(lambda ws, m: None).correct
    assert plateaus.check_newton_contraction(3, 0.5).correct
    assert not plateaus.check_newton_contraction(3, 1.0).correct
    assert not plateaus.check_newton_contraction(3, ...).correct
    assert plateaus.check_exact_sfn_cost(108, 2.0, 217).correct
    assert not plateaus.check_exact_sfn_cost(108, 2.0, 109).correct
