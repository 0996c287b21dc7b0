"""The spectrum for free: Rayleigh–Ritz values from the series' own moments, and SeriesSFN's
default ``"ritz"`` scale rule that follows the spectrum, checked against dense ``eigvalsh``."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from sfn_teach.data import Batches, load_digits
from sfn_teach.hvp import ModelHVP, dense_hessian
from sfn_teach.models import MLP
from sfn_teach.optim import GRADIENT_DESCENT_RATIO, SeriesSFN
from sfn_teach.series import MAX_RITZ_DIMENSION, exact_sfn_direction, ritz_values, sfn_series

pytestmark = pytest.mark.float64


def symmetric(eigenvalues, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


def dense_ritz(hessian, grad, m):
    """Rayleigh–Ritz for H² on span{g, H²g, …, H^{2(m−1)}g}, orthonormalised by QR."""
    square = hessian @ hessian
    basis = torch.stack([torch.linalg.matrix_power(square, i) @ grad for i in range(m)], 1)
    q, _ = torch.linalg.qr(basis)
    return torch.linalg.eigvalsh(q.T @ square @ q)


# --------------------------------------------------------------------------------------------
# ritz_values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_terms", [2, 3, 4, 6])
@pytest.mark.parametrize("scale", [81.0, 100.0, 400.0])
@pytest.mark.parametrize("kind", ["damped", "quasi-damped"])
def test_ritz_values_from_moments_equal_dense_rayleigh_ritz(num_terms, scale, kind):
    # indefinite, with tiny and outlying eigenvalues; λ_max² = 81, so V = 81 is λ² = V for λ = 9
    h = torch.cat([torch.linspace(-3, 3, 40, dtype=torch.float64), torch.tensor([1e-4, 8, -9])])
    hessian, grad = symmetric(h), torch.randn(len(h), dtype=torch.float64,
                                              generator=torch.Generator().manual_seed(1))
    damping = 0.5
    result = sfn_series(lambda v: hessian @ v, grad, num_terms, scale, damping, kind=kind)
    assert len(result.moments) == 2 * num_terms - 1
    m = len(result.ritz_values)
    assert 1 <= m <= num_terms - 1
    reference = dense_ritz(hessian, grad, m)
    # inner Ritz values inherit the conditioning of the Hankel matrices; the largest, which
    # sets V, is far better determined
    torch.testing.assert_close(result.ritz_values, reference, rtol=0, atol=1e-6 * reference[-1])
    assert result.ritz_values[-1] == pytest.approx(float(reference[-1]), rel=1e-7)
    assert ritz_values(result.moments, scale, damping, kind).equal(result.ritz_values)


def test_ritz_values_lie_in_the_spectrum_and_find_few_distinct_eigenvalues_exactly():
    h = torch.tensor([-5.0, -5.0, 2.0, 2.0, 2.0, 5.0, 0.5], dtype=torch.float64)  # h² ∈ {25, 4, ¼}
    hessian = symmetric(h, seed=3)
    grad = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    values = sfn_series(lambda v: hessian @ v, grad, 6, 30.0).ritz_values
    torch.testing.assert_close(values, torch.tensor([0.25, 4.0, 25.0], dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)
    for seed in range(5):
        hessian = symmetric(torch.randn(30, generator=torch.Generator().manual_seed(seed)) * 3)
        square = torch.linalg.eigvalsh(hessian @ hessian)
        values = sfn_series(lambda v, hessian=hessian: hessian @ v,
                            torch.ones(30, dtype=torch.float64), 8, float(square[-1])).ritz_values
        assert square[0] * (1 - 1e-9) <= values[0] and values[-1] <= square[-1] * (1 + 1e-9)


def test_long_series_collect_moments_only_for_the_ritz_space():
    hessian = symmetric(torch.linspace(-3, 3, 30, dtype=torch.float64).tolist(), seed=5)
    grad = torch.ones(30, dtype=torch.float64)
    long = sfn_series(lambda v: hessian @ v, grad, 200, 20.0, 0.1)
    assert len(long.moments) == 2 * MAX_RITZ_DIMENSION + 1
    short = sfn_series(lambda v: hessian @ v, grad, MAX_RITZ_DIMENSION + 1, 20.0, 0.1)
    assert long.moments == short.moments and long.ritz_values.equal(short.ritz_values)


def test_ritz_values_of_nothing():
    assert len(ritz_values([1.0], 1.0)) == 0  # K = 1: no product, no estimate
    assert len(ritz_values([0.0, 0.0, 0.0], 1.0)) == 0  # g = 0
    assert len(sfn_series(lambda v: 2 * v, torch.ones(3), 1, 4.0).ritz_values) == 0
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        ritz_values([1.0, 0.5], 0.0)


def test_a_diverging_series_stops_at_its_first_growing_term():
    hessian = torch.diag(torch.tensor([10.0, 1.0], dtype=torch.float64))  # h² = 100 > 2V = 20
    result = sfn_series(lambda v: hessian @ v, torch.ones(2, dtype=torch.float64), 12, 10.0,
                        stop_if_diverging=True)
    assert result.diverging and result.num_hvps == 2 and len(result.term_norms) == 2
    full = sfn_series(lambda v: hessian @ v, torch.ones(2, dtype=torch.float64), 12, 10.0)
    assert full.diverging and full.num_hvps == 22


# --------------------------------------------------------------------------------------------
# The "ritz" scale rule along training runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_digits(torch.float64)


def lambda_max_squared(model, inputs, targets):
    operator = ModelHVP(model, F.cross_entropy, inputs, targets)
    return float(torch.linalg.eigvalsh(dense_hessian(operator.matvec, operator.grad))
                 .abs().max()) ** 2


def test_scale_follows_the_spectrum_along_a_full_batch_run(digits):
    """V of every step after the first lies within [λ_max²/2, 4 λ_max²] of that step's Hessian:
    the series converges (h² ≤ 2V) and its filter is not blurred by a V far above the spectrum."""
    torch.manual_seed(0)
    model = MLP((64, 8, 10)).double()
    x, y = digits.train.inputs[:300], digits.train.targets[:300]
    optimizer = SeriesSFN(model.parameters(), num_terms=8, acceleration_order=1, damping=1e-3,
                          adaptive=True, damping_factor=0.9)
    ratios, extra = [], 0
    for _ in range(25):
        before = lambda_max_squared(model, x, y)
        optimizer.step(lambda: F.cross_entropy(model(x), y))
        ratios.append(optimizer.stats["scale"] / before)
        extra += optimizer.stats["scale_products"]
        assert not optimizer.stats["diverging"]
    assert all(0.5 <= ratio <= 4.0 for ratio in ratios[1:]), ratios
    assert extra / 25 <= 1.0  # the starting power iteration is most of it


def test_scale_shrinks_with_the_spectrum_and_grows_at_once_when_the_terms_diverge():
    hessian = symmetric([-4.0, -1.0, 0.3, 1.0, 2.0, 3.0], seed=2)
    theta = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
    factor = {"c": 1.0}  # the loss c·½θᵀHθ has the spectrum c·h

    def loss():
        return factor["c"] * 0.5 * theta @ hessian @ theta

    optimizer = SeriesSFN([theta], num_terms=6, damping=1e-3, lr=0.1)
    for c in (1.0, 0.3, 0.1, 0.03):  # the spectrum shrinks; V follows one step later
        factor["c"] = c
        optimizer.step(loss)
        optimizer.step(loss)
        assert 0.5 * (4 * c) ** 2 <= optimizer.stats["scale"] <= 4 * (4 * c) ** 2
    factor["c"] = 10.0  # and jumps: with V from c = 0.03 the terms would grow like 10⁵ᵏ
    optimizer.step(loss)
    assert optimizer.stats["scale_retries"] >= 1 and not optimizer.stats["diverging"]
    assert 0.5 * 40.0**2 <= optimizer.stats["scale"] <= 4 * 40.0**2
    assert optimizer.stats["lambda_max"] == pytest.approx(40.0, rel=1e-3)  # Ritz, from below


def test_at_most_one_extra_product_per_step_on_minibatches(digits):
    torch.manual_seed(1)
    model = MLP((64, 12, 10)).double()
    batches = Batches(digits.train, 400, seed=1)
    optimizer = SeriesSFN(model.parameters(), num_terms=10, acceleration_order=1,
                          damping=1.8e-3, adaptive=True, damping_factor=0.9)
    series, extra = 0, 0
    for step in range(60):
        inputs, targets = batches[step]
        optimizer.step(lambda x=inputs, y=targets: F.cross_entropy(model(x), y))
        extra += optimizer.stats["scale_products"]
        series += optimizer.stats["num_hvps"] - optimizer.stats["scale_products"]
    assert series == 60 * 18 and extra / 60 <= 1.0, extra


def test_state_dict_round_trip_is_bit_identical_with_the_ritz_rule(digits):
    torch.manual_seed(2)
    model = MLP((64, 6, 10)).double()
    batches = Batches(digits.train, 200, seed=2)
    kwargs = dict(num_terms=5, acceleration_order=2, damping=1e-3, adaptive=True,
                  damping_factor=0.9)
    optimizer = SeriesSFN(model.parameters(), **kwargs)

    def closure_of(net, step):
        inputs, targets = batches[step]
        return lambda: F.cross_entropy(net(inputs), targets)

    for step in range(4):
        optimizer.step(closure_of(model, step))
    twin = copy.deepcopy(model)
    twin_optimizer = SeriesSFN(twin.parameters(), **kwargs)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for step in range(4, 8):
        optimizer.step(closure_of(model, step))
        twin_optimizer.step(closure_of(twin, step))
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
        assert optimizer.stats == twin_optimizer.stats


# --------------------------------------------------------------------------------------------
# Is the step saddle-free? The digits MLP at initialisation, and the warning
# --------------------------------------------------------------------------------------------


def first_direction(model, inputs, targets, **settings):
    """Δ of one adaptive SeriesSFN step from ``model`` (α = 1, μ = 0 at the first step)."""
    twin = copy.deepcopy(model)
    optimizer = SeriesSFN(twin.parameters(), num_terms=10, damping=1.8e-3, adaptive=True,
                          **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer.step(lambda: F.cross_entropy(twin(inputs), targets))
    return torch.cat([optimizer.state[p]["previous_update"].reshape(-1)
                      for p in twin.parameters()])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_default_rule_points_closer_to_exact_sfn_than_the_papers_rule_and_the_gradient(
        digits, seed):
    torch.manual_seed(seed)
    model = MLP((64, 12, 10)).double()
    inputs, targets = Batches(digits.train, 400, seed)[0]
    operator = ModelHVP(model, F.cross_entropy, inputs, targets)
    exact = exact_sfn_direction(dense_hessian(operator.matvec, operator.grad), operator.grad,
                                1.8e-3)

    def cosine(direction):
        return float(direction @ exact / (direction.norm() * exact.norm()))

    ritz = cosine(first_direction(model, inputs, targets))
    paper = cosine(first_direction(model, inputs, targets, scale_rule="lower_bound",
                                   scale=100.0))
    gradient = cosine(operator.grad)
    assert ritz > paper and ritz > gradient, (ritz, paper, gradient)


def test_the_warning_fires_on_the_papers_settings_and_not_on_the_default(digits):
    torch.manual_seed(0)
    batches = Batches(digits.train, 400, seed=0)

    def warnings_of(**settings):
        model = MLP((64, 12, 10)).double()
        optimizer = SeriesSFN(model.parameters(), num_terms=10, acceleration_order=1,
                              damping=1.8e-3, adaptive=True, damping_factor=0.9, **settings)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(15):
                inputs, targets = batches[step]
                optimizer.step(lambda x=inputs, y=targets: F.cross_entropy(model(x), y))
        return [str(w.message) for w in caught if "gradient descent" in str(w.message)]

    fired = warnings_of(scale_rule="lower_bound", scale=100.0)
    assert len(fired) == 1 and "learning rate ≈ 2√(K/(πV))" in fired[0]  # once per run
    assert "× λ̂_max²" in fired[0] and GRADIENT_DESCENT_RATIO == 100.0
    assert warnings_of() == []


def test_a_series_diverging_before_any_ritz_value_doubles_v_and_leaves_theta_finite():
    """The spectrum jumps to 1e100: ‖H²g‖² overflows, so the series has no moments to estimate
    λ_max from and each retry doubles V; the step ends diverged, θ untouched and finite."""
    scale = {"h": 1.0}
    theta = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

    def loss():
        hessian = torch.diag(torch.tensor([scale["h"], 1.0, -2.0], dtype=torch.float64))
        return 0.5 * theta @ hessian @ theta

    optimizer = SeriesSFN([theta], num_terms=6, damping=1e-3, lr=0.1)
    optimizer.step(loss)
    before, v = theta.detach().clone(), optimizer.stats["scale"]
    scale["h"] = 1e100
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        optimizer.step(loss)
    assert optimizer.stats["diverging"] and optimizer.stats["scale_retries"] == 3
    assert optimizer.stats["scale"] == pytest.approx(8 * v)
    assert optimizer.stats["skipped"] and torch.equal(theta.detach(), before)


def test_a_vanishing_hessian_leaves_v_where_it_was():
    """A loss linear in θ has H = 0: every estimate of λ_max² is 0, which says nothing about
    the scale, so V stays at its starting value (a V of 0 would be refused by the series)."""
    theta = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    slope = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    optimizer = SeriesSFN([theta], num_terms=6, scale=7.0)
    for _ in range(3):
        optimizer.step(lambda: slope @ theta)
        assert optimizer.stats["scale"] == 7.0 and optimizer.stats["lambda_max"] is None
    assert torch.isfinite(theta).all() and not torch.equal(theta.detach(), torch.ones(3).double())


def test_one_low_ritz_estimate_does_not_raise_the_gradient_descent_warning():
    """Escaping the deep linear network's saddle, some steps' g hardly touches the top
    eigenvector and their Ritz estimate falls far below λ_max (here below a tenth of the
    largest remembered one); V follows the spectrum all along, so no warning. A step whose
    first try diverged remembers the largest λ_max² its tries proved, so V ≤ 2 λ̂²."""
    from sfn_teach import plateaus

    task = plateaus.deep_linear_task()
    model = plateaus.DeepLinear(depth=3, init_scale=1e-2, seed=4)
    optimizer = SeriesSFN(list(model.parameters()), lr=0.5, damping=0.1, num_terms=10)
    low_estimates = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gradient descent")
        for _ in range(80):
            optimizer.step(lambda: task.loss_fn(model(task.inputs), task.targets))
            stats = optimizer.stats
            state = optimizer.state[next(model.parameters())]
            largest = math.sqrt(max(state["spectrum_estimates"]))
            low_estimates += stats["lambda_max"] < largest / 10
            assert stats["scale"] <= 2 * largest**2
    assert low_estimates >= 1  # the situation the warning must see through did arise
