"""SeriesSFN, ExactSFN and Newton against dense references, in float64; the update kernel, the
per-step statistics and the optimisers' module structure."""

import ast
import copy
import math
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from sfn_teach.optim import (
    ExactSFN,
    Newton,
    NonFiniteStepError,
    SeriesSFN,
    StepStats,
    curvature_update,
)
from sfn_teach.series import exact_sfn_direction, sfn_direction

pytestmark = pytest.mark.float64
F64 = torch.float64


def paper_toy(xy):
    """f(x, y) = 2x² + 2xy − y², Hessian [[4, 2], [2, −2]], saddle at the origin."""
    x, y = xy[0], xy[1]
    return 2 * x**2 + 2 * x * y - y**2


def run(optimizer_class, f, start, steps, **kwargs):
    theta = torch.nn.Parameter(torch.tensor(start))
    optimizer = optimizer_class([theta], **kwargs)
    points, losses = [theta.detach().clone()], [float(f(theta.detach()))]
    for _ in range(steps):
        optimizer.step(lambda: f(theta))
        points.append(theta.detach().clone())
        losses.append(float(f(theta.detach())))
    return points, losses, optimizer


def quadratic(hessian, b):
    return lambda theta: 0.5 * theta @ hessian @ theta - b @ theta


def random_spd(n, low, high, seed):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    return q @ torch.diag(torch.linspace(low, high, n)) @ q.T


class TinyNet(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
        )
        gen = torch.Generator().manual_seed(seed + 100)
        self.x = torch.randn(32, 4, generator=gen)
        self.y = torch.randint(0, 3, (32,), generator=gen)

    def loss(self):
        return torch.nn.functional.cross_entropy(self.net(self.x), self.y)


# ---------------------------------------------------------------------------------------------
# Saddles, Newton steps, the adaptive solve, damping, state_dict
# ---------------------------------------------------------------------------------------------


def test_newton_lands_on_the_saddle_while_sfn_escapes():
    start = [-0.75, -0.75]
    negative = torch.linalg.eigh(torch.tensor([[4.0, 2.0], [2.0, -2.0]])).eigenvectors[:, 0]
    points, _, _ = run(Newton, paper_toy, start, 3)
    assert points[1].norm() < 1e-12  # a quadratic saddle is reached in one Newton step

    for cls, kwargs in [
        (ExactSFN, {}),
        (SeriesSFN, dict(num_terms=30, scale=25.0, scale_rule="fixed", damping=0.0)),
    ]:
        points, losses, _ = run(cls, paper_toy, start, 5, **kwargs)
        along_negative_curvature = [abs(float(p @ negative)) for p in points]
        assert all(b < a for a, b in zip(losses, losses[1:])), (cls, losses)
        assert all(b > a for a, b in zip(along_negative_curvature, along_negative_curvature[1:]))
        assert points[-1].norm() > 10 * points[0].norm()


def test_series_on_convex_quadratic_is_the_newton_step():
    hessian = random_spd(20, 1.0, 10.0, seed=1)
    b = torch.randn(20, generator=torch.Generator().manual_seed(2))
    f = quadratic(hessian, b)
    start = torch.randn(20, generator=torch.Generator().manual_seed(3)).tolist()
    points, _, optimizer = run(
        SeriesSFN, f, start, 1, lr=1.0, momentum=0.0, damping=0.0, num_terms=2500,
        scale=100.0, scale_rule="fixed",
    )
    newton = torch.tensor(start) - torch.linalg.solve(
        hessian, hessian @ torch.tensor(start) - b
    )
    assert float((points[1] - newton).norm() / newton.norm()) < 1e-6
    assert optimizer.stats["num_hvps"] == 2 * 2499


def test_series_step_is_the_series_direction_with_lr_and_momentum():
    """Two unadaptive steps by hand: δ₀ = αΔ₀, δ₁ = αΔ₁ + μδ₀."""
    hessian = random_spd(10, -3.0, 4.0, seed=4)  # indefinite
    b = torch.ones(10)
    f = quadratic(hessian, b)
    start = torch.linspace(-1, 1, 10)
    kwargs = dict(
        lr=0.3, momentum=0.5, damping=0.1, num_terms=7, acceleration_order=2,
        scale=20.0, scale_rule="fixed",
    )
    points, _, _ = run(SeriesSFN, f, start.tolist(), 2, **kwargs)

    def direction(theta):
        return sfn_direction(
            lambda v: hessian @ v, hessian @ theta - b, 7, 20.0, 0.1, acceleration_order=2
        )

    delta0 = 0.3 * direction(start)
    delta1 = 0.3 * direction(start - delta0) + 0.5 * delta0
    torch.testing.assert_close(points[1], start - delta0, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(points[2], start - delta0 - delta1, rtol=1e-13, atol=1e-14)


def test_lower_bound_scale_rule_uses_first_square_of_gradient():
    hessian = torch.diag(torch.tensor([30.0, -2.0, 0.5]))
    f = quadratic(hessian, torch.zeros(3))
    start = [1.0, 1.0, 1.0]
    g = hessian @ torch.tensor(start)
    expected = max(100.0, float((hessian @ hessian @ g).norm() / g.norm()))
    _, _, optimizer = run(SeriesSFN, f, start, 1, num_terms=3, scale_rule="lower_bound")
    assert optimizer.stats["scale"] == pytest.approx(expected, rel=1e-14)
    assert expected > 100.0 and optimizer.stats["num_hvps"] == 4  # the pair is reused


def test_single_term_uses_no_hvp_and_honours_damping():
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = SeriesSFN([theta], lr=1.0, num_terms=1, damping=0.5, scale=16.0,
                          scale_rule="fixed")
    g = torch.tensor([4 * 1.0 + 2 * -2.0, 2 * 1.0 - 2 * -2.0])
    optimizer.step(lambda: paper_toy(theta))
    torch.testing.assert_close(theta.detach(), torch.tensor([1.0, -2.0]) - g / 4.5)
    assert optimizer.stats["num_hvps"] == 0 and optimizer.stats["scale"] == 16.0


def test_power_scale_rule_bounds_the_spectrum():
    hessian = torch.diag(torch.tensor([-50.0, 3.0, 1.0]))
    _, _, optimizer = run(
        SeriesSFN, quadratic(hessian, torch.ones(3)), [1.0, 1.0, 1.0], 3,
        num_terms=5, scale_rule="power", power_iterations=30, scale_safety=1.2,
    )
    assert optimizer.stats["scale"] == pytest.approx((1.2 * 50.0) ** 2, rel=1e-3)
    assert not optimizer.stats["diverging"]
    assert optimizer.stats["num_hvps"] > 8  # the series' 8 plus the power iterations


def test_adaptive_step_sizes_equal_an_independent_two_by_two_solve():
    model = TinyNet()
    params = list(model.parameters())
    optimizer = SeriesSFN(
        params, adaptive=True, num_terms=4, acceleration_order=1, damping=1e-2,
        scale=50.0, scale_rule="fixed",
    )
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in params])  # noqa: E731
    previous_update = torch.zeros_like(flat())
    curvature = torch.zeros_like(flat())
    for _ in range(4):
        theta = flat()
        loss = model.loss()
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)])

        def hvp(v, theta=theta):
            grads = torch.autograd.grad(model.loss(), params, create_graph=True)
            flat_grad = torch.cat([x.reshape(-1) for x in grads])
            return torch.cat([
                x.reshape(-1) for x in torch.autograd.grad(flat_grad @ v, params)
            ])

        direction = sfn_direction(hvp, g, 4, 50.0, 1e-2, acceleration_order=1)
        q = float(previous_update @ curvature) or 1.0
        system = np.array([[g @ direction, g @ previous_update], [g @ previous_update, q]])
        rhs = np.array([g @ direction, g @ previous_update])
        alpha, mu = np.linalg.solve(system, rhs)
        optimizer.step(model.loss)
        assert optimizer.stats["alpha"] == pytest.approx(alpha, abs=1e-9)
        assert optimizer.stats["mu"] == pytest.approx(mu, abs=1e-9)
        assert optimizer.stats["alpha"] == pytest.approx(1.0, abs=1e-9)  # the solution is (1, 0)
        previous_update = theta - flat()
        curvature = mu * curvature + alpha * g


def levenberg_marquardt(damping, rho, omega=0.9, low=1e-8):
    if rho > 0.75:
        damping *= omega
    elif rho < 0.25:
        damping /= omega
    return max(damping, low)


def test_damping_follows_rho_along_a_training_run():
    model = TinyNet(seed=3)
    optimizer = SeriesSFN(
        model.parameters(), adaptive=True, num_terms=6, acceleration_order=2, damping=1e-3,
        damping_factor=0.9, scale=4.0,
    )
    damping = 1e-3
    for _ in range(10):
        with torch.no_grad():
            loss_before = float(model.loss())
        optimizer.step(model.loss)
        stats = optimizer.stats
        with torch.no_grad():
            rho = (float(model.loss()) - loss_before) / stats["model_decrease"]
        assert stats["rho"] == pytest.approx(rho, rel=1e-9)
        damping = levenberg_marquardt(damping, rho)
        assert stats["damping"] == pytest.approx(damping, rel=1e-12)


@pytest.mark.parametrize("start, branch", [(0.3, "down"), (0.7, "keep"), (1.0, "up")])
def test_damping_moves_by_omega_as_rho_dictates(start, branch):
    """f = log cosh θ: the SFN step sinh(2θ)/2 overshoots more the further θ is from 0."""
    theta = torch.nn.Parameter(torch.tensor([start]))
    f = lambda: torch.log(torch.cosh(theta)).sum()  # noqa: E731
    optimizer = SeriesSFN(
        [theta], num_terms=150, scale=1.0, scale_rule="fixed", damping=1e-2, damping_factor=0.9,
    )
    optimizer.step(f)
    g, h = math.tanh(start), 1 / math.cosh(start) ** 2
    step = float(theta.detach()) - start
    model = -0.5 * g * (-step)  # M = ½α²gᵀΔ − αgᵀΔ with α = 1 and gᵀΔ = g·(−step)
    rho = (math.log(math.cosh(start + step)) - math.log(math.cosh(start))) / model
    assert optimizer.stats["rho"] == pytest.approx(rho, rel=1e-6)
    expected = {"down": 0.9e-2, "keep": 1e-2, "up": 1e-2 / 0.9}[branch]
    assert optimizer.stats["damping"] == pytest.approx(expected, rel=1e-12)
    assert step == pytest.approx(-g / (h + 1e-2), rel=1e-6)  # the series has converged


@pytest.mark.parametrize("scale_rule", ["lower_bound", "power"])
def test_state_dict_round_trip_gives_bit_identical_next_steps(scale_rule):
    model = TinyNet(seed=5)
    kwargs = dict(
        adaptive=True, num_terms=5, acceleration_order=2, damping=1e-3, damping_factor=0.9,
        scale_rule=scale_rule,
    )
    optimizer = SeriesSFN(model.parameters(), **kwargs)
    for _ in range(3):
        optimizer.step(model.loss)
    twin = copy.deepcopy(model)
    twin_optimizer = SeriesSFN(twin.parameters(), **kwargs)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for _ in range(2):
        optimizer.step(model.loss)
        twin_optimizer.step(twin.loss)
        for a, b in zip(model.parameters(), twin.parameters()):
            assert torch.equal(a, b)
        assert optimizer.stats == twin_optimizer.stats


def test_exact_sfn_matches_eigen_direction_with_momentum():
    hessian = random_spd(6, -2.0, 3.0, seed=7)
    f = quadratic(hessian, torch.ones(6))
    start = torch.linspace(-1, 1, 6)
    points, _, optimizer = run(ExactSFN, f, start.tolist(), 2, lr=0.5, momentum=0.3, damping=0.2)
    delta0 = 0.5 * exact_sfn_direction(hessian, hessian @ start - 1, 0.2)
    second = start - delta0
    delta1 = 0.5 * exact_sfn_direction(hessian, hessian @ second - 1, 0.2) + 0.3 * delta0
    torch.testing.assert_close(points[2], second - delta1)
    assert optimizer.stats["num_hvps"] == 6


# ---------------------------------------------------------------------------------------------
# Non-finite values and divergence
# ---------------------------------------------------------------------------------------------


def test_non_finite_loss_is_skipped_and_damping_grows_then_raises():
    theta = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = SeriesSFN(
        [theta], damping=1e-2, damping_factor=0.5, max_skipped_steps=2, scale_rule="fixed"
    )
    bad = lambda: (theta**2).sum() * float("nan")  # noqa: E731
    for expected_damping in (2e-2, 4e-2):
        optimizer.step(bad)
        assert optimizer.stats["skipped"] and "loss" in optimizer.stats["skip_reason"]
        assert optimizer.stats["damping"] == pytest.approx(expected_damping)
        assert theta.tolist() == [1.0, 2.0]
    with pytest.raises(NonFiniteStepError, match="non-finite loss"):
        optimizer.step(bad)
    assert theta.tolist() == [1.0, 2.0]
    optimizer.step(lambda: (theta**2).sum())  # recovers on a good batch
    assert not optimizer.stats["skipped"] and theta.tolist() != [1.0, 2.0]


def test_step_to_non_finite_loss_is_undone():
    theta = torch.nn.Parameter(torch.tensor([0.5]))
    # −log(1 − θ) − 3θ: g = −1 at 0.5, the step of 4 lands beyond 1, where the loss is nan
    f = lambda: -torch.log(1 - theta).sum() - theta.sum() * 3  # noqa: E731
    optimizer = SeriesSFN([theta], lr=4.0, damping_factor=0.9, num_terms=1, scale=1.0)
    optimizer.step(f)
    assert optimizer.stats["skipped"] and "after the step" in optimizer.stats["skip_reason"]
    assert theta.tolist() == [0.5]


def test_diverging_series_is_reported():
    hessian = torch.diag(torch.tensor([40.0, 1.0]))
    theta = torch.nn.Parameter(torch.tensor([0.0, 1.0]))  # g has no component along h = 40
    optimizer = SeriesSFN([theta], num_terms=12, scale=1.0,  # so ‖H²g‖/‖g‖ = 1 misses h = 40
                          scale_rule="lower_bound")
    theta.data[0] = 1e-6
    with pytest.warns(RuntimeWarning, match="diverging"):
        optimizer.step(lambda: 0.5 * theta @ hessian @ theta)
    assert optimizer.stats["diverging"]


# ---------------------------------------------------------------------------------------------
# Bad input, each named, parameters unchanged
# ---------------------------------------------------------------------------------------------


def _param():
    return torch.nn.Parameter(torch.tensor([1.0, 2.0]))


def _construct(**kwargs):
    return lambda p: SeriesSFN([p], **kwargs)


def _step(closure_factory, **kwargs):
    def attempt(p):
        SeriesSFN([p], **kwargs).step(closure_factory(p))

    return attempt


BAD_INPUTS = [
    ("num_terms=0", _construct(num_terms=0), ValueError, "num_terms"),
    ("num_terms=-3", _construct(num_terms=-3), ValueError, "num_terms"),
    ("num_terms=2.5", _construct(num_terms=2.5), TypeError, "num_terms"),
    ("damping<0", _construct(damping=-1e-3), ValueError, "damping"),
    ("scale<0", _construct(scale=-1.0), ValueError, "scale"),
    ("scale=0", _construct(scale=0.0), ValueError, "scale"),
    ("lr<0", _construct(lr=-0.1), ValueError, "lr"),
    ("lr=nan", _construct(lr=float("nan")), ValueError, "lr"),
    ("momentum=1", _construct(momentum=1.0), ValueError, "momentum"),
    ("K<2r+1", _construct(num_terms=4, acceleration_order=2), ValueError, "num_terms"),
    ("r<0", _construct(acceleration_order=-1), ValueError, "acceleration_order"),
    ("scale_rule", _construct(scale_rule="guess"), ValueError, "scale_rule"),
    ("kind", _construct(kind="exact"), ValueError, "kind"),
    ("damping_factor>1", _construct(damping_factor=1.5), ValueError, "damping_factor"),
    ("damping_max<min", _construct(damping_min=1.0, damping_max=0.1), ValueError, "damping_max"),
    ("hvp_backend", _construct(hvp_backend="finite-differences"), ValueError, "hvp_backend"),
    ("adaptive='yes'", _construct(adaptive="yes"), TypeError, "adaptive"),
    ("no closure", lambda p: SeriesSFN([p]).step(), TypeError, "closure"),
    ("closure returns float", _step(lambda p: lambda: float((p.detach() ** 2).sum())), TypeError,
     "closure"),
    ("detached loss", _step(lambda p: lambda: (p**2).sum().detach()), ValueError, "closure"),
    ("loss under no_grad", _step(lambda p: torch.no_grad()(lambda: (p**2).sum())), ValueError,
     "closure"),
    ("non-scalar loss", _step(lambda p: lambda: p**2), ValueError, "closure"),
    ("non-finite loss", _step(lambda p: lambda: (p**2).sum() / 0.0 * 0.0, max_skipped_steps=0),
     ValueError, "non-finite loss"),
    ("nan in grad", _step(lambda p: lambda: (p.sqrt() - p.sqrt()).sum() + torch.sqrt(
        p[0] - 1).sum(), max_skipped_steps=0), ValueError, "non-finite gradient"),
    ("mixed dtypes", lambda p: SeriesSFN([p, torch.nn.Parameter(torch.ones(2,
        dtype=torch.float32))]), ValueError, "params"),
    ("mixed devices", lambda p: SeriesSFN([p, torch.nn.Parameter(torch.ones(2,
        device="meta"))]), ValueError, "params"),
    ("groups disagree", lambda p: SeriesSFN([{"params": [p]}, {"params": [torch.nn.Parameter(
        torch.ones(1))], "num_terms": 3}]).step(lambda: (p**2).sum()), ValueError, "num_terms"),
]


@pytest.mark.parametrize("name, attempt, error, words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_named_error_and_leaves_parameters(name, attempt, error, words):
    p = _param()
    with pytest.raises(error, match=words):
        attempt(p)
    assert p.tolist() == [1.0, 2.0]


def test_bad_input_table_is_large_enough():
    assert len(BAD_INPUTS) >= 15


@pytest.mark.parametrize("cls", [ExactSFN, Newton])
def test_dense_optimisers_validate_too(cls):
    with pytest.raises(ValueError, match="damping"):
        cls([_param()], damping=-1.0)
    with pytest.raises(TypeError, match="closure"):
        cls([_param()]).step()


def test_newton_with_singular_hessian_skips():
    theta = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    optimizer = Newton([theta], max_skipped_steps=3)
    optimizer.step(lambda: (theta[0] + theta[1]) ** 2)  # H = [[2, 2], [2, 2]] is singular
    assert optimizer.stats["skipped"] and theta.tolist() == [1.0, 1.0]
    assert math.isfinite(optimizer.stats["loss"])


def test_dense_backend_takes_the_same_steps_as_double_backward():
    trajectories = []
    for backend in ("double-backward", "dense", "forward-over-reverse"):
        model = TinyNet(seed=8)
        optimizer = SeriesSFN(
            model.parameters(), num_terms=6, acceleration_order=1, hvp_backend=backend,
            adaptive=True, damping_factor=0.9, scale_rule="lower_bound",
        )
        for _ in range(3):
            optimizer.step(model.loss)
        trajectories.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(trajectories[1], trajectories[0], rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(trajectories[2], trajectories[0], rtol=1e-11, atol=1e-13)


def test_dense_backend_refuses_large_problems():
    from sfn_teach.hvp import DENSE_MAX_DIM, ParamsHVP

    theta = torch.nn.Parameter(torch.zeros(DENSE_MAX_DIM + 1))
    with pytest.raises(ValueError, match="DENSE_MAX_DIM"):
        ParamsHVP(lambda: (theta**2).sum(), [theta], backend="dense")


def test_astronomical_learning_rate_never_raises_an_overflow():
    theta = torch.nn.Parameter(torch.tensor([1e-170, 2e-170]))
    optimizer = SeriesSFN([theta], lr=1e160, num_terms=3, damping_factor=0.9, scale=10.0)
    optimizer.step(lambda: (theta**2).sum())  # α² overflows a Python float power
    assert torch.isfinite(theta).all()
    assert optimizer.stats["damping"] >= 1e-4  # the model promised nothing: λ did not shrink


# ---------------------------------------------------------------------------------------------
# The functional kernel, the per-step statistics, the module structure
# ---------------------------------------------------------------------------------------------


def test_curvature_update_is_the_update_rule_by_hand():
    gen = torch.Generator().manual_seed(11)
    grad, direction, previous, buffer = torch.randn(4, 7, generator=gen, dtype=F64)
    proposal = curvature_update(grad, direction, previous, buffer, lr=0.3, momentum=0.6,
                                adaptive=False)
    g_dir, g_prev, q = float(grad @ direction), float(grad @ previous), float(previous @ buffer)
    torch.testing.assert_close(proposal.update, 0.3 * direction + 0.6 * previous, rtol=0, atol=0)
    torch.testing.assert_close(proposal.curvature_buffer, 0.6 * buffer + 0.3 * grad, rtol=0,
                               atol=0)
    assert (proposal.alpha, proposal.mu) == (0.3, 0.6)
    expected = 0.5 * (0.09 * g_dir + 0.36 * g_prev + 0.36 * q) - (0.3 * g_dir + 0.6 * g_prev)
    assert proposal.model_decrease == pytest.approx(expected, rel=1e-14)
    # adaptive: the 2×2 system's right-hand side is its first column, so (α, μ) = (1, 0) and
    # the model decrease is −½gᵀΔ
    adaptive = curvature_update(grad, direction, previous, buffer, lr=0.3, momentum=0.6,
                                adaptive=True)
    assert adaptive.alpha == pytest.approx(1.0, abs=1e-12)
    assert adaptive.mu == pytest.approx(0.0, abs=1e-12)
    assert adaptive.model_decrease == pytest.approx(-0.5 * g_dir, rel=1e-10)
    # the first step: δ₀ = b₋₁ = 0, so q := 1 and the update is αΔ
    zero = torch.zeros(7, dtype=F64)
    first = curvature_update(grad, direction, zero, zero, lr=0.3, momentum=0.6, adaptive=False)
    assert first.model_decrease == pytest.approx(0.5 * (0.09 * g_dir + 0.36) - 0.3 * g_dir)


def test_step_stats_is_a_typed_record_and_a_mapping():
    theta = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=F64))
    series = SeriesSFN([theta], num_terms=3, damping_factor=0.9)
    series.step(lambda: paper_toy(theta))
    stats = series.stats
    assert isinstance(stats, StepStats) and list(stats) == [f.name for f in fields(StepStats)]
    assert stats["scale"] == stats.scale > 0 and stats.get("rho") == stats.rho is not None
    assert dict(stats) == {name: getattr(stats, name) for name in stats} and stats == dict(stats)
    assert stats.get("no such field", 7) == 7 and "no such field" not in stats
    with pytest.raises(KeyError):
        stats["no such field"]
    assert (stats.num_gradients, stats.num_forward, stats.skipped) == (1, 1, False)
    assert stats.diverging is False and stats.allreduce_bytes is None  # one process
    exact = ExactSFN([torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=F64))])
    exact.step(lambda: paper_toy(exact.param_groups[0]["params"][0]))
    assert exact.stats.num_hvps == 2 and exact.stats.num_forward == 0  # n = 2 products for H
    assert exact.stats.diverging is None and exact.stats.scale is None  # no series, no V
    assert exact.stats != stats


def test_optim_knows_nothing_of_torch_distributed():
    """``sfn_teach.optim`` imports no ``sfn_teach.distributed``; data parallelism plugs in by
    :attr:`CurvatureOptimizer.data_parallel`, and without it ``process_group`` is refused."""
    code = (
        "import sys, torch\n"
        "from sfn_teach.optim import CurvatureOptimizer, SeriesSFN\n"
        "assert 'sfn_teach.distributed' not in sys.modules\n"
        "assert CurvatureOptimizer.data_parallel is None\n"
        "try:\n"
        "    SeriesSFN([torch.nn.Parameter(torch.ones(2))], process_group=object())\n"
        "except RuntimeError as error:\n"
        "    assert 'import sfn_teach.distributed' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('process_group accepted without a data_parallel operator')\n"
        "import sfn_teach.distributed\n"
        "assert CurvatureOptimizer.data_parallel is sfn_teach.distributed.RankAveragedOperator\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


CURVATURE_MODULES = ("checks", "hvp", "update", "scale", "optim", "distributed", "train")


@pytest.mark.parametrize("module", CURVATURE_MODULES)
def test_modules_import_only_public_names_of_each_other(module):
    path = Path(__file__).resolve().parents[1] / "sfn_teach" / f"{module}.py"
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.level or node.module.startswith("sfn_teach"))
        for alias in node.names if alias.name.startswith("_")
    ]
    assert private == [], private
