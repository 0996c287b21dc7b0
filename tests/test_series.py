"""The series against exact references: mpmath coefficients, dense matrix polynomials, eigh."""

import math

import mpmath
import pytest
import torch

from sfn_teach.series import (
    exact_sfn_direction,
    filter_target,
    series_coefficients,
    sfn_direction,
    sfn_series,
    spectral_filter,
    sqrt_coefficients,
    wynn_epsilon,
)

pytestmark = pytest.mark.float64
F64 = torch.float64


def random_symmetric(eigenvalues, seed):
    """Q diag(h) Qᵀ with a random orthogonal Q."""
    gen = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=F64)) @ q.T


def indefinite_spectrum(n=50, low=1e-3, high=10.0, seed=0):
    """|h| log-spaced from low to high, random signs (at least one of each)."""
    gen = torch.Generator().manual_seed(seed)
    magnitudes = torch.logspace(math.log10(low), math.log10(high), n, dtype=F64)
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    signs[0], signs[-1] = 1.0, -1.0
    return magnitudes * signs


def random_grad(n, seed=1):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


# ---------------------------------------------------------------------------------------------
# Coefficients against 100-digit mpmath
# ---------------------------------------------------------------------------------------------


def mpmath_coefficients(num_terms, d):
    """Taylor coefficients of 1/(√(1−x) + d) in 100-digit arithmetic, by other formulas.

    d ≠ 1: the reference code's recurrence c_k = −(c_{k−1} + b_k)/(d² − 1) (unstable in
    floating point, harmless with 100 digits); d = 1: 1/(1 + √(1−x)) = (1 − √(1−x))/x, so
    c_k = −b_{k+1}.
    """
    with mpmath.workdps(100):
        d = mpmath.mpf(d)
        b = [(-1) ** j * mpmath.binomial(mpmath.mpf(1) / 2, j) for j in range(num_terms + 1)]
        if d == 1:
            return [-b[k + 1] for k in range(num_terms)]
        c = [1 / (1 + d)]
        for k in range(1, num_terms):
            c.append(-(c[k - 1] + b[k]) / (d * d - 1))
        return c


@pytest.mark.parametrize("d", [0.0, 0.3, 0.9, 1.0, 3.0])
def test_coefficients_match_high_precision_reference(d):
    scale = 4.0
    ours = series_coefficients(60, damping=d * math.sqrt(scale), scale=scale)
    assert ours.dtype == torch.float64
    reference = mpmath_coefficients(60, d)
    for k, (c, r) in enumerate(zip(ours.tolist(), reference, strict=True)):
        assert abs(c - float(r)) <= 1e-12 * abs(float(r)), (k, c, float(r))


def test_undamped_coefficients_are_central_binomials_and_quasi_damped_ignores_damping():
    a = [math.comb(2 * k, k) / 4**k for k in range(30)]
    torch.testing.assert_close(series_coefficients(30), torch.tensor(a), rtol=1e-14, atol=0)
    torch.testing.assert_close(
        series_coefficients(30, damping=0.7, scale=2.0, kind="quasi-damped"),
        torch.tensor(a),
        rtol=1e-14,
        atol=0,
    )


def test_sqrt_coefficients_are_the_binomial_series():
    b = sqrt_coefficients(12)
    for j in range(12):
        assert float(b[j]) == pytest.approx(float((-1) ** j * mpmath.binomial(0.5, j)), rel=1e-15)


def test_damping_squared_equal_to_scale_is_regular():
    c = series_coefficients(40, damping=3.0, scale=9.0)
    assert torch.isfinite(c).all()
    torch.testing.assert_close(c, -sqrt_coefficients(41)[1:], rtol=1e-13, atol=0)


# ---------------------------------------------------------------------------------------------
# The series on an operator against the dense matrix polynomial
# ---------------------------------------------------------------------------------------------


def dense_polynomial_direction(hessian, grad, num_terms, scale, damping, kind):
    """V^(-½) Σ c_k X^k g with X = I − H²/V (or (1 − λ/V)I − H²/V), by explicit matrix powers."""
    n = hessian.shape[0]
    shift = damping if kind == "quasi-damped" else 0.0
    x = (1 - shift / scale) * torch.eye(n) - hessian @ hessian / scale
    c = series_coefficients(num_terms, damping, scale, kind)
    power = torch.eye(n)
    total = torch.zeros(n, n)
    for k in range(num_terms):
        total = total + c[k] * power
        power = power @ x
    return total @ grad / math.sqrt(scale)


SPECTRUM = indefinite_spectrum()
HESSIAN = random_symmetric(SPECTRUM, seed=0)
GRAD = random_grad(50)
SCALE = float(SPECTRUM.abs().max() ** 2)  # V = λ_max(H)²


@pytest.mark.parametrize("kind", ["damped", "quasi-damped"])
@pytest.mark.parametrize("num_terms", [1, 2, 5, 40])
@pytest.mark.parametrize("damping", [0.0, 1e-3, 0.5, math.sqrt(SCALE)])
def test_series_equals_dense_polynomial(kind, num_terms, damping):
    calls = []

    def hvp(v):
        calls.append(1)
        return HESSIAN @ v

    ours = sfn_direction(hvp, GRAD, num_terms, SCALE, damping, kind=kind)
    reference = dense_polynomial_direction(HESSIAN, GRAD, num_terms, SCALE, damping, kind)
    assert relative_error(ours, reference) < 1e-10
    assert len(calls) == 2 * (num_terms - 1)


def test_single_term_is_gradient_over_root_scale_plus_damping():
    direction = sfn_direction(lambda v: pytest.fail("K = 1 needs no HVP"), GRAD, 1, 25.0, 0.3)
    torch.testing.assert_close(direction, GRAD / (5.0 + 0.3), rtol=1e-15, atol=0)


def test_long_series_converges_to_exact_sfn_direction():
    spectrum = torch.linspace(1, 10, 50) * torch.where(torch.arange(50) % 2 == 0, 1.0, -1.0)
    hessian = random_symmetric(spectrum, seed=3)
    ours = sfn_direction(lambda v: hessian @ v, GRAD, 3000, 100.0, 0.5)
    exact = exact_sfn_direction(hessian, GRAD, 0.5)
    assert relative_error(ours, exact) < 1e-6


def test_convergence_near_zero_eigenvalues_is_slow_but_monotone():
    """With |h| down to 1e-3 the error still falls as K grows, but far from geometrically."""
    exact = exact_sfn_direction(HESSIAN, GRAD)
    errors = [
        relative_error(sfn_direction(lambda v: HESSIAN @ v, GRAD, k, SCALE), exact)
        for k in (50, 200, 800, 3000)
    ]
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == 4
    assert errors[-1] > 0.1  # 6000 HVPs and still far off: truncation acts as implicit damping


def test_filter_at_zero_grows_like_root_k():
    """φ_K(0) = V^(-½) Σ_{k<K} a_k ≈ 2√(K/(πV)): the K^(-½) law of the implicit damping."""
    scale = 100.0
    for k in (200, 3000):
        value = float(spectral_filter(torch.tensor([0.0]), k, scale))
        assert value == pytest.approx(2 * math.sqrt(k / (math.pi * scale)), rel=0.01)


def test_exact_direction_is_the_eigen_formula_and_undoes_abs_hessian():
    damping = 0.2
    exact = exact_sfn_direction(HESSIAN, GRAD, damping)
    eigenvalues, q = torch.linalg.eigh(HESSIAN)
    abs_hessian = q @ torch.diag(eigenvalues.abs()) @ q.T
    torch.testing.assert_close((abs_hessian + damping * torch.eye(50)) @ exact, GRAD)
    quasi = exact_sfn_direction(HESSIAN, GRAD, damping, kind="quasi-damped")
    root = q @ torch.diag((eigenvalues**2 + damping).sqrt()) @ q.T
    torch.testing.assert_close(root @ quasi, GRAD)


# ---------------------------------------------------------------------------------------------
# Wynn's ε-algorithm
# ---------------------------------------------------------------------------------------------


def independent_epsilon_table(sequence, order, sablonniere=False):
    """Wynn's table written the textbook way: a dict e[(s, m)] filled column by column."""
    e = {}
    n = len(sequence)
    for m in range(n + 1):
        e[(-1, m)] = torch.zeros_like(sequence[0])
    for m in range(n):
        e[(0, m)] = sequence[m]
    for s in range(1, 2 * order + 1):
        for m in range(n - s):
            diff = e[(s - 1, m + 1)] - e[(s - 1, m)]
            weight = (s // 2 + 1) if sablonniere else 1
            e[(s, m)] = e[(s - 2, m + 1)] + weight * diff / (diff @ diff)
    return e[(2 * order, n - 1 - 2 * order)]


def partial_sums(hessian, grad, num_terms, scale):
    c = series_coefficients(num_terms, 0.0, scale)
    x = torch.eye(len(grad)) - hessian @ hessian / scale
    term, total, sums = grad, torch.zeros_like(grad), []
    for k in range(num_terms):
        total = total + c[k] * term
        sums.append(total.clone())
        term = x @ term
    return sums


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("sablonniere", [False, True])
def test_wynn_matches_independent_table(order, sablonniere):
    sums = partial_sums(HESSIAN, GRAD, 12, SCALE)
    ours = wynn_epsilon(sums, order, sablonniere)
    reference = independent_epsilon_table(sums, order, sablonniere)
    assert relative_error(ours, reference) < 1e-7


def test_series_acceleration_uses_last_partial_sums():
    sums = [s / math.sqrt(SCALE) for s in partial_sums(HESSIAN, GRAD, 9, SCALE)]
    ours = sfn_direction(lambda v: HESSIAN @ v, GRAD, 9, SCALE, acceleration_order=2)
    assert relative_error(ours, independent_epsilon_table(sums[-5:], 2)) < 1e-7


def test_order_one_is_exact_on_geometric_vector_sequences():
    gen = torch.Generator().manual_seed(5)
    limit, a = torch.randn(7, generator=gen), torch.randn(7, generator=gen)
    for q in (0.9, -0.5, 0.3):
        sequence = [limit + a * q**n for n in range(6)]
        assert relative_error(wynn_epsilon(sequence, 1), limit) < 1e-10


@pytest.mark.parametrize("sablonniere", [False, True])
def test_acceleration_improves_direction_at_twenty_terms(sablonniere):
    for seed in (0, 1, 2):
        hessian = random_symmetric(indefinite_spectrum(seed=seed), seed=seed)
        grad = random_grad(50, seed=seed + 10)
        exact = exact_sfn_direction(hessian, grad)
        plain = sfn_direction(lambda v, h=hessian: h @ v, grad, 20, SCALE)
        accelerated = sfn_direction(
            lambda v, h=hessian: h @ v, grad, 20, SCALE, acceleration_order=2,
            sablonniere=sablonniere,
        )
        assert cosine(accelerated, exact) > cosine(plain, exact)


def test_breakdown_of_epsilon_table_falls_back_to_plain_sum():
    """With h² = V exactly, every term after the first is 0: the ε-table divides by zero."""
    hessian = torch.diag(torch.tensor([2.0, -2.0]))
    grad = torch.tensor([1.0, 1.0])
    result = sfn_series(lambda v: hessian @ v, grad, 5, 4.0, acceleration_order=1)
    assert result.acceleration_failed
    torch.testing.assert_close(result.direction, grad / 2.0)


# ---------------------------------------------------------------------------------------------
# Spectral filter, diagnostics, divergence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["damped", "quasi-damped"])
def test_spectral_filter_is_the_series_on_a_diagonal_hessian(kind):
    h = torch.tensor([-3.0, -0.5, 0.01, 1.0, 2.5])
    damping, scale = 0.1, 9.0
    direction = sfn_direction(lambda v: h * v, torch.ones(5), 17, scale, damping, kind=kind)
    torch.testing.assert_close(
        direction, spectral_filter(h, 17, scale, damping, kind), rtol=1e-13, atol=0
    )


def test_spectral_filter_converges_inside_and_diverges_outside_root_two_v():
    scale = 4.0
    inside = torch.tensor([-2.8, -1.0, 0.5, 2.0, 2.75])
    outside = torch.tensor([math.sqrt(2 * scale) * 1.05, -3.5])
    error = (spectral_filter(inside, 4000, scale) - filter_target(inside)).abs() / filter_target(
        inside
    )
    assert error.max() < 1e-6
    assert (spectral_filter(outside, 200, scale).abs() > 1e3).all()


def test_diagnostics_report_products_norms_and_divergence():
    info = {}
    sfn_direction(lambda v: HESSIAN @ v, GRAD, 6, SCALE, diagnostics=info)
    assert info["num_hvps"] == 10 and not info["diverging"]
    assert len(info["partial_sum_norms"]) == 6 and len(info["term_norms"]) == 6
    assert all(b <= a * (1 + 1e-12) for a, b in zip(info["term_norms"], info["term_norms"][1:]))

    too_small_scale = SCALE / 3  # λ_max² = 3V > 2V
    info = {}
    sfn_direction(lambda v: HESSIAN @ v, GRAD, 30, too_small_scale, diagnostics=info)
    assert info["diverging"]
    assert info["partial_sum_norms"][-1] > 1e3 * info["partial_sum_norms"][0]


def test_square_of_grad_is_reused_and_counted():
    square = HESSIAN @ (HESSIAN @ GRAD)
    calls = []
    result = sfn_series(
        lambda v: calls.append(1) or HESSIAN @ v, GRAD, 5, SCALE, square_of_grad=square
    )
    assert len(calls) == 6 and result.num_hvps == 8
    reference = dense_polynomial_direction(HESSIAN, GRAD, 5, SCALE, 0.0, "damped")
    assert relative_error(result.direction, reference) < 1e-12


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: series_coefficients(0), ValueError, "num_terms"),
        (lambda: series_coefficients(2.5), TypeError, "num_terms"),
        (lambda: series_coefficients(5, damping=-1.0), ValueError, "damping"),
        (lambda: series_coefficients(5, scale=0.0), ValueError, "scale"),
        (lambda: series_coefficients(5, scale=float("nan")), ValueError, "scale"),
        (lambda: series_coefficients(5, kind="exact"), ValueError, "kind"),
        (lambda: sfn_direction(lambda v: v, GRAD, 4, 1.0, acceleration_order=2), ValueError,
         "num_terms must be >= 2*acceleration_order+1"),
        (lambda: sfn_direction(lambda v: v, GRAD, 5, 1.0, acceleration_order=-1), ValueError,
         "acceleration_order"),
        (lambda: wynn_epsilon([GRAD] * 2, 1), ValueError, "order"),
        (lambda: exact_sfn_direction(HESSIAN, GRAD[:3]), ValueError, "grad"),
        (lambda: spectral_filter(torch.ones(3), 3, -1.0), ValueError, "scale"),
    ],
)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error, match=words.replace("*", r"\*").replace("+", r"\+")):
        call()
