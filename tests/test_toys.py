"""The 2-D toys, the trajectory runner and the one-step partial sums, against exact references."""

import math

import numpy as np
import pytest
import torch

from sfn_teach.series import exact_sfn_direction, series_coefficients
from sfn_teach.toys import (
    CRITICAL_KINDS,
    OPTIMIZERS,
    TOYS,
    CriticalPoint,
    exact_step_point,
    get_toy,
    gradient,
    hessian,
    run_trajectories,
    run_trajectory,
    series_partial_sum_points,
    series_scale_limit,
)

torch.set_num_threads(1)

PAPER_START = (-0.75, -0.75)
PAPER_HESSIAN = torch.tensor([[4.0, 2.0], [2.0, -2.0]], dtype=torch.float64)


def random_points(toy, count=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    (x0, x1), (y0, y1) = toy.box
    low = torch.tensor([x0, y0], dtype=torch.float64)
    width = torch.tensor([x1 - x0, y1 - y0], dtype=torch.float64)
    return [low + width * torch.rand(2, generator=gen, dtype=torch.float64) for _ in range(count)]


# Hand-derived gradients and Hessians: the exact references for torch.func.
ANALYTIC = {
    "paper": (
        lambda x, y: [4 * x + 2 * y, 2 * x - 2 * y],
        lambda x, y: [[4, 2], [2, -2]],
    ),
    "saddle": (lambda x, y: [2 * x, -2 * y], lambda x, y: [[2, 0], [0, -2]]),
    "monkey": (
        lambda x, y: [3 * x**2 - 3 * y**2, -6 * x * y],
        lambda x, y: [[6 * x, -6 * y], [-6 * y, -6 * x]],
    ),
    "double_well": (
        lambda x, y: [x**3 - x, y],
        lambda x, y: [[3 * x**2 - 1, 0], [0, 1]],
    ),
    "rosenbrock": (
        lambda x, y: [-2 * (1 - x) - 40 * x * (y - x**2), 20 * (y - x**2)],
        lambda x, y: [[2 - 40 * y + 120 * x**2, -40 * x], [-40 * x, 20]],
    ),
    "himmelblau": (
        lambda x, y: [
            4 * x * (x**2 + y - 11) + 2 * (x + y**2 - 7),
            2 * (x**2 + y - 11) + 4 * y * (x + y**2 - 7),
        ],
        lambda x, y: [
            [12 * x**2 + 4 * y - 42, 4 * x + 4 * y],
            [4 * x + 4 * y, 4 * x + 12 * y**2 - 26],
        ],
    ),
}


# ---------------------------------------------------------------------------------------------
# The toys
# ---------------------------------------------------------------------------------------------


def test_the_six_toys_are_there():
    assert set(ANALYTIC) <= set(TOYS)
    for key, toy in TOYS.items():
        assert toy.key == key and toy.name and toy.formula
        (x0, x1), (y0, y1) = toy.box
        assert x0 < toy.start[0] < x1 and y0 < toy.start[1] < y1
        assert toy.scale > 0 and toy.lr > 0


@pytest.mark.parametrize("key", sorted(ANALYTIC))
def test_gradient_and_hessian_match_the_hand_derived_ones(key):
    toy = TOYS[key]
    grad_formula, hessian_formula = ANALYTIC[key]
    for point in random_points(toy):
        x, y = point.tolist()
        g, h = gradient(toy, point), hessian(key, point)
        assert g.dtype == h.dtype == torch.float64 and h.shape == (2, 2)
        torch.testing.assert_close(g, torch.tensor(grad_formula(x, y), dtype=torch.float64))
        torch.testing.assert_close(
            h, torch.tensor(hessian_formula(x, y), dtype=torch.float64), rtol=1e-12, atol=1e-12
        )


def expected_signs(kind):
    """The signs of (h_1, h_2), h_1 ≤ h_2, for each kind of critical point."""
    return {"minimum": (1, 1), "maximum": (-1, -1), "saddle": (-1, 1), "monkey saddle": (0, 0)}[
        kind
    ]


@pytest.mark.parametrize("key", sorted(TOYS))
def test_critical_points_are_critical_with_the_stated_kind(key):
    toy = TOYS[key]
    for critical in toy.critical_points:
        assert critical.kind in CRITICAL_KINDS
        h = hessian(toy, critical.point)
        size = float(h.abs().max()) + 1.0
        assert float(gradient(toy, critical.point).norm()) < 1e-9 * size, critical
        eigenvalues = torch.linalg.eigvalsh(h)
        signs = tuple(int(s) for s in torch.sign(eigenvalues.round(decimals=9)).tolist())
        assert signs == expected_signs(critical.kind), (critical, eigenvalues)


def test_himmelblau_has_four_minima_one_maximum_four_saddles():
    kinds = [c.kind for c in TOYS["himmelblau"].critical_points]
    assert (kinds.count("minimum"), kinds.count("maximum"), kinds.count("saddle")) == (4, 1, 4)
    for critical in TOYS["himmelblau"].critical_points:
        assert float(TOYS["himmelblau"](torch.tensor(critical.point))) >= 0


def test_monkey_saddle_falls_away_in_three_directions():
    toy = TOYS["monkey"]
    for angle in (0.0, 2 * math.pi / 3, 4 * math.pi / 3):
        direction = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        assert float(toy(0.1 * direction)) > 0 and float(toy(-0.1 * direction)) < 0


def test_bad_toys_and_points_are_refused():
    with pytest.raises(ValueError, match="toy must be a Toy or one of"):
        get_toy("banana")
    with pytest.raises(ValueError, match="point must be two finite"):
        gradient("paper", (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="point must be two finite"):
        hessian("paper", (math.nan, 0.0))
    with pytest.raises(TypeError, match="point must be a pair"):
        gradient("paper", "xy")
    with pytest.raises(ValueError, match="kind must be one of"):
        CriticalPoint((0.0, 0.0), "valley")


def test_series_scale_limit_is_half_the_largest_squared_eigenvalue():
    assert series_scale_limit("paper", PAPER_START) == pytest.approx((1 + math.sqrt(13)) ** 2 / 2)
    assert series_scale_limit("double_well", (2.0, 0.0)) == pytest.approx(11.0**2 / 2)


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_runner_records_points_losses_and_stats_for_every_optimizer(optimizer):
    toy = TOYS["double_well"]
    trajectory = run_trajectory(toy, toy.start, optimizer, 7)
    assert trajectory.optimizer == optimizer and trajectory.stopped is None
    assert trajectory.points.shape == (8, 2) and trajectory.points.dtype == np.float64
    assert trajectory.losses.shape == (8,) and len(trajectory.stats) == 7
    np.testing.assert_array_equal(trajectory.points[0], toy.start)
    for point, loss in zip(trajectory.points, trajectory.losses):
        assert loss == pytest.approx(float(toy(torch.tensor(point))), rel=1e-14, abs=1e-14)
    assert trajectory.num_steps == 7 and trajectory.final_loss == trajectory.losses[-1]
    assert trajectory.final_loss < trajectory.losses[0]  # every one of them descends here
    if optimizer in ("newton", "exact_sfn", "series_sfn"):
        assert [s["step"] for s in trajectory.stats] == list(range(1, 8))


def test_gradient_descent_is_theta_minus_lr_times_gradient():
    trajectory = run_trajectory("himmelblau", (0.3, 2.5), "gd", 5, lr=0.01)
    theta = torch.tensor([0.3, 2.5], dtype=torch.float64)
    for point in trajectory.points[1:]:
        theta = theta - 0.01 * gradient("himmelblau", theta)
        np.testing.assert_allclose(point, theta.numpy(), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
def test_first_order_learning_rate_defaults_to_the_toys(optimizer):
    for key in ("rosenbrock", "himmelblau"):
        trajectory = run_trajectory(key, TOYS[key].start, optimizer, 30)
        assert trajectory.hyperparameters["lr"] == TOYS[key].lr
        assert trajectory.stopped is None and trajectory.final_loss < trajectory.losses[0]


def test_momentum_and_adam_take_their_hyperparameters():
    slow = run_trajectory("rosenbrock", (-1.5, 2.5), "momentum", 5, lr=0.001, momentum=0.5)
    fast = run_trajectory("rosenbrock", (-1.5, 2.5), "momentum", 5, lr=0.001, momentum=0.9)
    assert not np.allclose(slow.points, fast.points)
    adam = run_trajectory("paper", PAPER_START, "adam", 1, lr=0.25, betas=(0.5, 0.999))
    # Adam's first step moves every coordinate by lr·sign(g) (bias-corrected moments).
    expected_step = -0.25 * np.sign(gradient("paper", PAPER_START).numpy())
    np.testing.assert_allclose(adam.points[1] - adam.points[0], expected_step, rtol=1e-6)


def test_series_sfn_single_term_step_is_gradient_over_root_scale_plus_damping():
    trajectory = run_trajectory(
        "paper", PAPER_START, "series_sfn", 1, num_terms=1, scale=16.0, damping=0.5
    )
    expected = torch.tensor(PAPER_START) - gradient("paper", PAPER_START) / (4.0 + 0.5)
    np.testing.assert_allclose(trajectory.points[1], expected.numpy(), rtol=1e-15)
    assert trajectory.hyperparameters["scale"] == 16.0
    assert trajectory.label == "series SFN (num_terms=1, scale=16, damping=0.5)"


def test_series_sfn_default_scale_is_the_toys_and_backends_agree():
    default = run_trajectory("himmelblau", (0.3, 2.5), "series_sfn", 20, num_terms=8)
    autograd = run_trajectory(
        "himmelblau", (0.3, 2.5), "series_sfn", 20, num_terms=8, hvp_backend="double-backward"
    )
    assert default.hyperparameters["scale"] == TOYS["himmelblau"].scale
    np.testing.assert_allclose(default.points, autograd.points, rtol=1e-10, atol=1e-10)


def test_paper_toy_newton_lands_on_the_saddle():
    trajectory = run_trajectory("paper", PAPER_START, "newton", 3)
    distances = np.linalg.norm(trajectory.points, axis=1)
    assert distances[1:].min() <= 1e-8
    assert np.argmax(distances <= 1e-8) <= 3


def test_paper_toy_exact_sfn_escapes_the_saddle():
    trajectory = run_trajectory("paper", PAPER_START, "exact_sfn", 10)
    assert trajectory.stopped is None
    assert trajectory.losses[10] <= trajectory.losses[0] - 1.0


def test_runner_refuses_unknown_names_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"optimizer must be one of .*'series_sfn'"):
        run_trajectory("paper", PAPER_START, "lbfgs", 3)
    with pytest.raises(ValueError, match=r"K is not a hyperparameter of series SFN .*num_terms"):
        run_trajectory("paper", PAPER_START, "series_sfn", 3, K=5)
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        run_trajectory("paper", PAPER_START, "gd", -1)
    with pytest.raises(ValueError, match="damping"):
        run_trajectory("paper", PAPER_START, "series_sfn", 3, damping=-1.0)
    with pytest.raises(ValueError, match="start must be two finite"):
        run_trajectory("paper", (0.0,), "gd", 3)


def test_zero_steps_give_the_start_alone():
    trajectory = run_trajectory("saddle", (1.0, 0.05), "newton", 0)
    assert trajectory.points.shape == (1, 2) and trajectory.stats == []


def test_divergence_is_stopped_and_reported_not_raised():
    trajectory = run_trajectory("rosenbrock", (-1.5, 2.5), "gd", 100, lr=0.1)
    assert trajectory.stopped.startswith(f"diverged after {trajectory.num_steps} steps")
    assert trajectory.num_steps < 100 and np.isfinite(trajectory.points).all()
    assert np.linalg.norm(trajectory.points[-1]) > 1e6 > np.linalg.norm(trajectory.points[-2])


def test_non_finite_steps_stop_the_run_with_the_optimizers_reason():
    # At the monkey saddle H = 0: every Newton direction is non-finite and is skipped until
    # the optimiser gives up with NonFiniteStepError.
    trajectory = run_trajectory("monkey", (0.0, 0.0), "newton", 50, max_skipped_steps=3)
    assert trajectory.stopped.startswith("stopped after 3 steps")
    assert "non-finite" in trajectory.stopped
    assert trajectory.num_steps == 3 and (trajectory.points == 0).all()


def test_a_diverging_series_runs_and_says_so():
    trajectory = run_trajectory("paper", PAPER_START, "series_sfn", 3, num_terms=30, scale=5.0)
    assert trajectory.stats[0]["diverging"]
    assert trajectory.stopped is not None and "diverged" in trajectory.stopped


# ---------------------------------------------------------------------------------------------
# One step of the series
# ---------------------------------------------------------------------------------------------


def test_partial_sums_converge_to_the_exact_sfn_step_on_the_paper_toy():
    points = series_partial_sum_points("paper", PAPER_START, 200, 25.0)
    exact = torch.tensor(PAPER_START) - exact_sfn_direction(
        PAPER_HESSIAN, PAPER_HESSIAN @ torch.tensor(PAPER_START, dtype=torch.float64)
    )
    np.testing.assert_allclose(exact_step_point("paper", PAPER_START), exact.numpy(), rtol=1e-14)
    errors = np.linalg.norm(points - exact.numpy(), axis=1)
    assert points.shape == (200, 2)
    assert errors[-1] <= 1e-6
    assert errors[-1] < errors[20] < errors[2]


@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_partial_sums_equal_the_dense_matrix_polynomial(damping):
    start = torch.tensor([1.3, -0.4], dtype=torch.float64)
    h, g = hessian("himmelblau", start), gradient("himmelblau", start)
    scale = series_scale_limit("himmelblau", start) * 1.5
    c = series_coefficients(12, damping, scale)
    x = torch.eye(2, dtype=torch.float64) - h @ h / scale
    partial = torch.zeros(2, dtype=torch.float64)
    expected = []
    for k in range(12):
        partial = partial + c[k] * torch.linalg.matrix_power(x, k) @ g
        expected.append(start - partial / math.sqrt(scale))
    points = series_partial_sum_points("himmelblau", start, 12, scale, damping)
    np.testing.assert_allclose(points, torch.stack(expected).numpy(), rtol=1e-12, atol=1e-12)


def test_partial_sums_refuse_bad_terms():
    with pytest.raises(ValueError, match="num_terms must be an int >= 1"):
        series_partial_sum_points("paper", PAPER_START, 0, 25.0)


# ---------------------------------------------------------------------------------------------
# Every optimiser at once, by closed forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(TOYS))
def test_closed_form_derivatives_are_the_autograd_ones(key):
    toy = TOYS[key]
    for point in random_points(toy, seed=1):
        f, g, h = toy.derivatives(*point.tolist())
        assert f == pytest.approx(float(toy(point)), rel=1e-13, abs=1e-13)
        np.testing.assert_allclose(g, gradient(toy, point).numpy(), rtol=1e-13, atol=1e-12)
        (hxx, hxy), (_, hyy) = hessian(toy, point).tolist()
        np.testing.assert_allclose(h, (hxx, hxy, hyy), rtol=1e-13, atol=1e-12)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a − b| / max(|a|, |b|)``: rounding-level when two runs are one trajectory."""
    assert a.shape == b.shape, f"{a.shape} != {b.shape}: the runs stopped at different steps"
    return float(np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300))


def assert_same_runs(fast, toy, start, runs, steps, rtol):
    for key, given in runs.items():
        reference = run_trajectory(toy, start, key, steps, **given)
        run = fast[key]
        assert (run.stopped or "").split(":")[0] == (reference.stopped or "").split(":")[0]
        assert run.hyperparameters == reference.hyperparameters
        difference = max(relative_difference(run.points, reference.points),
                         relative_difference(run.losses, reference.losses))
        assert difference <= rtol, (key, given, start, difference)
        if key in ("newton", "exact_sfn", "series_sfn"):
            assert [s["skipped"] for s in run.stats] == [s["skipped"] for s in reference.stats]
        if key == "series_sfn":
            assert [s["diverging"] for s in run.stats] == [
                s["diverging"] for s in reference.stats]


#: starts besides each toy's own, away from the regions where the runs are chaotic (damped
#: Newton circling the monkey saddle, say: there a start moved by one ulp ends elsewhere, and
#: no two float64 implementations agree for long)
OTHER_STARTS = {
    "paper": [(0.05, 1.8), (-1.42, 1.79)], "saddle": [(-1.2, 0.4), (0.3, -1.1)],
    "monkey": [(1.0, 0.3), (-1.0, 0.6)], "double_well": [(1.5, -1.0), (-0.3, 0.9)],
    "rosenbrock": [(1.85, 1.9), (0.16, 0.11)], "himmelblau": [(0.16, -3.84), (1.23, 2.77)],
}


@pytest.mark.parametrize("key", sorted(TOYS))
def test_run_trajectories_are_the_real_optimizers_trajectories(key):
    """Closed forms against sfn_teach.optim and torch.optim, to float64 rounding: every toy,
    three starts, K from 1 to 50, V at the toy's scale, 4× it and below the series' limit
    (a diverging series), with and without damping, 100 steps."""
    toy = TOYS[key]
    for start in [toy.start, *OTHER_STARTS[key]]:
        limit = series_scale_limit(toy, start)
        runs = {
            "gd": {}, "momentum": dict(lr=toy.lr / 2), "adam": dict(betas=(0.8, 0.999)),
            "newton": {}, "exact_sfn": dict(damping=0.1),
            "series_sfn": dict(num_terms=5, damping=0.1),
        }
        assert_same_runs(run_trajectories(toy, start, 100, runs), toy, start, runs, 100, 1e-12)
        for terms, scale, damping in [(1, toy.scale, 0.0), (20, 4 * toy.scale, 0.0),
                                      (50, toy.scale, 0.5), (10, limit / 3, 0.0)]:
            series = {"series_sfn": dict(num_terms=terms, scale=scale, damping=damping)}
            fast = run_trajectories(toy, start, 100, series)
            assert_same_runs(fast, toy, start, series, 100, 1e-12)


@pytest.mark.parametrize("key", sorted(TOYS))
def test_run_trajectories_with_wynn_acceleration_follow_the_optimizer(key):
    """With Wynn's ε (r ≥ 1) the last partial sums differ by little more than their rounding,
    and the ε-table divides by those differences, so it magnifies their rounding: ~1e-12 of
    the trajectory's size for r = 1, up to ~1e-8 for r = 3 (the library's two ways of taking
    products, dense and by autograd, differ by as much on Rosenbrock)."""
    toy = TOYS[key]
    for order, terms, rtol in [(1, 9, 1e-11), (2, 20, 1e-9), (3, 30, 1e-6)]:
        runs = {"series_sfn": dict(num_terms=terms, acceleration_order=order, damping=0.1)}
        fast = run_trajectories(toy, toy.start, 100, runs)
        assert_same_runs(fast, toy, toy.start, runs, 100, rtol)


def test_run_trajectories_stop_as_the_optimizers_do():
    # gradient descent diverging on Rosenbrock, Newton skipping at the monkey saddle (H = 0)
    fast = run_trajectories("rosenbrock", (-1.5, 2.5), 100, {"gd": dict(lr=0.1)})
    assert fast["gd"].stopped.startswith(f"diverged after {fast['gd'].num_steps} steps")
    assert_same_runs(fast, TOYS["rosenbrock"], (-1.5, 2.5), {"gd": dict(lr=0.1)}, 100, 1e-12)
    newton = {"newton": dict(max_skipped_steps=3)}
    skipped = run_trajectories("monkey", (0.0, 0.0), 50, newton)["newton"]
    assert skipped.stopped.startswith("stopped after 3 steps: non-finite update")
    assert skipped.num_steps == 3 and (skipped.points == 0).all()
    assert_same_runs({"newton": skipped}, TOYS["monkey"], (0.0, 0.0), newton, 50, 0.0)


def test_run_trajectories_refuse_what_they_cannot_follow():
    with pytest.raises(ValueError, match="run_trajectory runs every setting"):
        run_trajectories("paper", PAPER_START, 3, {"series_sfn": dict(adaptive=True)})
    with pytest.raises(ValueError, match="run_trajectory runs every setting"):
        run_trajectories("paper", PAPER_START, 3, {"newton": dict(damping_factor=0.5)})
    with pytest.raises(ValueError, match="K is not a hyperparameter"):
        run_trajectories("paper", PAPER_START, 3, {"series_sfn": dict(K=5)})
    with pytest.raises(ValueError, match="damping"):
        run_trajectories("paper", PAPER_START, 3, {"exact_sfn": dict(damping=-1.0)})
    with pytest.raises(ValueError, match="num_terms must be >= 2"):
        run_trajectories("paper", PAPER_START, 3, {"series_sfn": dict(num_terms=2,
                                                                      acceleration_order=1)})
    with pytest.raises(ValueError, match="optimizer must be one of"):
        run_trajectories("paper", PAPER_START, 3, {"lbfgs": {}})
