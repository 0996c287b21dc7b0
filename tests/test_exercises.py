"""Exercise checks: right answers pass, wrong ones fail, no message gives the answer away."""

import math
import re

import pytest
import torch

from sfn_teach import exercises
from sfn_teach.hvp import hvp
from sfn_teach.series import series_coefficients, sfn_direction, wynn_epsilon
from sfn_teach.toys import gradient, hessian

torch.set_num_threads(1)


def numbers_in(message):
    return [float(x) for x in re.findall(r"-?\d+\.?\d*(?:e[-+]?\d+)?", message)]


def assert_not_revealed(message, values):
    """No number in the message is (to 3 significant digits) one of the solution's values."""
    for value in values:
        if abs(value) > 1e-12:
            for number in numbers_in(message):
                assert not math.isclose(number, value, rel_tol=5e-3), (message, value)


# ---------------------------------------------------------------------------------------------
# Functions the students write
# ---------------------------------------------------------------------------------------------


def double_backward_hvp(f, x, v):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    return torch.autograd.grad(g @ v, x)[0]


def test_check_hvp(capsys):
    result = exercises.check_hvp(double_backward_hvp)
    assert result.correct and result.message.startswith("✅")
    assert result.message in capsys.readouterr().out
    assert exercises.check_hvp(lambda f, x, v: hvp(f, x, v, backend="double-backward")).correct
    wrong = exercises.check_hvp(lambda f, x, v: 2 * hvp(f, x, v))
    assert not wrong.correct and wrong.message.startswith("❌") and "Hint" in wrong.message
    shape = exercises.check_hvp(lambda f, x, v: torch.zeros(3))
    assert not shape.correct and "shape" in shape.message


def test_check_hvp_reports_the_students_exception():
    def broken(f, x, v):
        raise RuntimeError("element 0 of tensors does not require grad")

    result = exercises.check_hvp(broken)
    assert not result.correct and "RuntimeError: element 0" in result.message
    assert not exercises.check_hvp("not a function").correct


def test_check_coefficients():
    assert exercises.check_coefficients(lambda k, d: series_coefficients(k, d, 1.0)).correct

    def undamped(k, d):
        a = [1.0]
        for j in range(1, k):
            a.append(a[-1] * (2 * j - 1) / (2 * j))
        return a

    assert exercises.check_coefficients(undamped, dampings=(0.0,)).correct
    wrong = exercises.check_coefficients(undamped)
    assert not wrong.correct and "d = 0.3" in wrong.message
    assert_not_revealed(wrong.message, series_coefficients(5, 0.3, 1.0).tolist())


def test_check_series_direction():
    right = exercises.check_series_direction(
        lambda hv, g, k, v, lam: sfn_direction(hv, g, k, v, lam)
    )
    assert right.correct
    undamped = exercises.check_series_direction(lambda hv, g, k, v, lam: sfn_direction(hv, g, k, v))
    assert not undamped.correct and "λ = 0.5" in undamped.message


def test_check_wynn():
    assert exercises.check_wynn(wynn_epsilon).correct
    assert not exercises.check_wynn(lambda sums, order: sums[-1]).correct
    sablonniere = exercises.check_wynn(lambda sums, order: wynn_epsilon(sums, order, True))
    assert not sablonniere.correct and "order r = 1" in sablonniere.message


# ---------------------------------------------------------------------------------------------
# Values the students predict
# ---------------------------------------------------------------------------------------------


def test_check_eigenvalue_signs():
    assert exercises.check_eigenvalue_signs("paper", (0.0, 0.0), ("negative", "positive")).correct
    assert exercises.check_eigenvalue_signs("paper", (0.3, 0.1), (-1, 1)).correct
    assert exercises.check_eigenvalue_signs("monkey", (0.0, 0.0), ("0", "0")).correct
    assert exercises.check_eigenvalue_signs("himmelblau", (-0.2708, -0.9230), "--").correct
    wrong = exercises.check_eigenvalue_signs("double_well", (0.0, 0.0), ("+", "+"))
    assert not wrong.correct and "Hint" in wrong.message
    assert "negative" not in wrong.message and "positive" not in wrong.message
    unreadable = exercises.check_eigenvalue_signs("paper", (0.0, 0.0), ("up", "down"))
    assert not unreadable.correct and "could not read" in unreadable.message
    assert not exercises.check_eigenvalue_signs("paper", (0.0, 0.0), (1, 1, 1)).correct


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_check_newton_step(damping):
    start = torch.tensor([0.4, 2.1], dtype=torch.float64)
    h = hessian("himmelblau", start) + damping * torch.eye(2, dtype=torch.float64)
    expected = start - torch.linalg.solve(h, gradient("himmelblau", start))
    assert exercises.check_newton_step("himmelblau", start, expected.tolist(), damping).correct
    flipped = exercises.check_newton_step("himmelblau", start, (2 * start - expected), damping)
    assert not flipped.correct and "opposite way" in flipped.message
    wrong = exercises.check_newton_step("himmelblau", start, expected + 0.1, damping)
    assert not wrong.correct and "relative error" in wrong.message
    assert_not_revealed(wrong.message + flipped.message, expected.tolist())
    assert not exercises.check_newton_step("himmelblau", start, (1.0, 2.0, 3.0)).correct


def test_check_newton_step_where_it_is_undefined():
    result = exercises.check_newton_step("monkey", (0.0, 0.0), (0.0, 0.0))
    assert not result.correct and "singular" in result.message
    assert exercises.check_newton_step("monkey", (0.0, 0.0), (0.0, 0.0), damping=1.0).correct


def test_check_sfn_step():
    start = (-0.75, -0.75)  # the paper's toy: the SFN step moves away from the saddle
    h = torch.tensor([[4.0, 2.0], [2.0, -2.0]], dtype=torch.float64)
    eigenvalues, q = torch.linalg.eigh(h)
    direction = q @ ((q.T @ (h @ torch.tensor(start, dtype=torch.float64))) / eigenvalues.abs())
    expected = torch.tensor(start, dtype=torch.float64) - direction
    assert exercises.check_sfn_step("paper", start, expected).correct
    newton = exercises.check_sfn_step("paper", start, (0.0, 0.0))
    assert not newton.correct
    assert_not_revealed(newton.message, expected.tolist())


def test_check_filter_limit():
    assert exercises.check_filter_limit(25.0, math.sqrt(50.0)).correct
    at_root = exercises.check_filter_limit(25.0, 5.0)
    assert not at_root.correct and "x = 0" in at_root.message
    wrong = exercises.check_filter_limit(8.0, 2.0)
    assert not wrong.correct
    assert_not_revealed(wrong.message + at_root.message, [4.0, math.sqrt(50.0)])
    assert not exercises.check_filter_limit(8.0, "four").correct


def test_check_terms_needed():
    assert exercises.check_terms_needed(0.01, 1.0, 5000).correct
    assert exercises.check_terms_needed(0.01, 1.0, 5100).correct  # an estimate: within 5 %
    assert not exercises.check_terms_needed(0.01, 1.0, 100).correct  # κ, not κ²/2
    wrong = exercises.check_terms_needed(0.1, 2.0, 20)
    assert not wrong.correct and "√(V/K)" in wrong.message
    assert_not_revealed(wrong.message, [200.0])
    assert not exercises.check_terms_needed(0.1, 2.0, "many").correct
    assert "not answered yet" in exercises.check_terms_needed(0.1, 2.0, ...).message


def test_results_read_as_their_verdict():
    result = exercises.check_filter_limit(8.0, 4.0)
    assert repr(result) == "CheckResult(correct=True)"


def test_untouched_templates_say_not_answered_yet(capsys):
    from sfn_teach import exercises

    def template(*args):
        ...

    results = [
        exercises.check_hvp(template),
        exercises.check_coefficients(template),
        exercises.check_series_direction(template),
        exercises.check_wynn(template),
        exercises.check_eigenvalue_signs("paper", (0.0, 0.0), ...),
        exercises.check_newton_step("saddle", (1.0, 0.5), ...),
        exercises.check_sfn_step("saddle", (1.0, 0.5), ...),
        exercises.check_filter_limit(25.0, ...),
    ]
    assert all(not r.correct and "not answered yet" in r.message for r in results)
    assert capsys.readouterr().out.count("⏳") == len(results)


def test_optimiser_checks_accept_right_and_reject_wrong_answers(capsys):
    import torch

    from sfn_teach import exercises

    def solve(g_dir, g_prev, q):
        system = torch.tensor([[g_dir, g_prev], [g_prev, q]], dtype=torch.float64)
        return torch.linalg.solve(system, torch.tensor([g_dir, g_prev], dtype=torch.float64))

    def momentum_free(g_dir, g_prev, q):
        return (g_dir / q, 0.0)  # a plausible mistake

    def lm(damping, rho, omega):
        return damping * omega if rho > 0.75 else damping / omega if rho < 0.25 else damping

    def lm_inverted(damping, rho, omega):
        return damping / omega if rho > 0.75 else damping * omega if rho < 0.25 else damping

    assert exercises.check_adaptive_step_sizes(solve).correct
    assert not exercises.check_adaptive_step_sizes(momentum_free).correct
    assert exercises.check_damping_update(lm).correct
    assert not exercises.check_damping_update(lm_inverted).correct
    assert exercises.check_step_cost(5, 2.0, True, 17.5).correct
    assert not exercises.check_step_cost(5, 2.0, True, 9.5).correct
    assert not exercises.check_step_cost(5, 2.0, False, 17.5).correct
    output = capsys.readouterr().out
    assert "17" not in output.replace("17.5", "") and "17.0" not in output  # no solution shown


def test_scale_checks(capsys):
    from sfn_teach import exercises

    assert exercises.check_hvps_per_epoch(45_000, 3200, 5, 14 * 8).correct
    assert not exercises.check_hvps_per_epoch(45_000, 3200, 5, 45_000 / 3200 * 8).correct
    assert exercises.check_allreduces_per_step(5, True, 10).correct
    assert not exercises.check_allreduces_per_step(5, True, 9).correct
    assert not exercises.check_allreduces_per_step(5, False, 10).correct
    assert not exercises.check_hvps_per_epoch(45_000, 3200, 5, ...).correct
    output = capsys.readouterr().out
    assert "112" not in output.replace("got 112", "")
