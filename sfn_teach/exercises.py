"""Checks for the notebooks' exercises: right or not, with a hint, never with the solution.

Each ``check_*`` function compares a student's answer (a value, or a function they wrote)
with what the library computes, prints ``✅ …`` or ``❌ …`` so that the notebook cell shows
it, and returns a :class:`CheckResult` with ``.correct`` and ``.message``. A message names
the case that failed (the inputs, never the expected output) and how far off the answer was,
plus a hint about the mathematics; it never contains the solution's values.

Function checks run the student's function on several inputs, in float64, against
:func:`sfn_teach.hvp.hvp`, :func:`sfn_teach.series.series_coefficients`,
:func:`sfn_teach.series.sfn_direction` and :func:`sfn_teach.series.wynn_epsilon`; an exception
raised by the student's code is reported, not re-raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .hvp import hvp
from .optim import adaptive_step_sizes, levenberg_marquardt
from .series import series_coefficients, sfn_direction, wynn_epsilon
from .toys import as_point, get_toy, gradient, hessian

__all__ = [
    "RTOL", "CheckResult", "check_adaptive_step_sizes", "check_allreduces_per_step",
    "check_coefficients", "check_damping_update", "check_eigenvalue_signs", "check_filter_limit",
    "check_hvp", "check_hvps_per_epoch", "check_newton_step", "check_series_direction",
    "check_sfn_step", "check_step_cost", "check_terms_needed", "check_wynn"
]

#: relative tolerance of every comparison (float64 answers agree far closer than this)
RTOL = 1e-6


@dataclass(frozen=True)
class CheckResult:
    """The verdict of a check: ``correct`` and the ``message`` that was printed."""

    correct: bool
    message: str

    def __repr__(self) -> str:
        return f"CheckResult(correct={self.correct})"


def _report(correct: bool, message: str) -> CheckResult:
    text = f"{'✅' if correct else '❌'} {message}"
    print(text)
    return CheckResult(correct, text)


def _unanswered(value) -> bool:
    """A template still holding ``...`` (or a function body that returns nothing)."""
    return value is Ellipsis or value is None


def _not_yet(what: str) -> CheckResult:
    text = f"⏳ {what}: not answered yet — replace the ... with your answer and run the cell."
    print(text)
    return CheckResult(False, text)


def _relative_error(answer, expected: torch.Tensor) -> float:
    """``‖answer − expected‖ / max(‖expected‖, 1e-300)``; raises if the shapes differ."""
    answer = torch.as_tensor(answer, dtype=torch.float64)
    if answer.shape != expected.shape:
        raise ValueError(
            f"it has shape {tuple(answer.shape)}, but {tuple(expected.shape)} was expected"
        )
    scale = max(float(expected.norm()), 1e-300)
    return float((answer - expected).norm()) / scale


def _check_function(student_fn: Callable, what: str, cases, hint: str) -> CheckResult:
    """Run ``student_fn(*args)`` for each ``(description, args, expected)`` case."""
    if not callable(student_fn):
        return _report(False, f"{what}: pass your function itself (a callable), "
                              f"got {type(student_fn).__name__}")
    for description, args, expected in cases:
        try:
            answer = student_fn(*args)
            if _unanswered(answer):
                return _not_yet(what)
            error = _relative_error(answer, expected)
        except Exception as exception:  # noqa: BLE001 - report the student's error
            return _report(
                False, f"{what}: your function failed for {description}: "
                       f"{type(exception).__name__}: {exception}"
            )
        if not error <= RTOL:
            return _report(
                False, f"{what}: not yet right for {description} (relative error "
                       f"{error:.2e}). Hint: {hint}"
            )
    return _report(True, f"{what}: right in all {len(cases)} cases checked.")


def _random_symmetric(n: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return (a + a.T) / 2


# --------------------------------------------------------------------------------------------
# Functions the students write
# --------------------------------------------------------------------------------------------


def check_hvp(student_fn: Callable, seed: int = 0) -> CheckResult:
    """Check ``student_fn(f, x, v)`` returns ``Hv`` with ``H = ∇²f(x)`` (Pearlmutter's trick).

    Compared with :func:`sfn_teach.hvp.hvp` for a quadratic ``½xᵀAx``, a non-quadratic
    ``Σ tanh(Bx)²`` and the paper's toy, at random float64 ``x`` and ``v``.
    """
    gen = torch.Generator().manual_seed(seed)
    a, b = _random_symmetric(5, gen), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    functions = [
        ("f(x) = ½ xᵀAx with a random symmetric 5×5 A", lambda x: 0.5 * x @ a @ x, 5),
        ("f(x) = Σ tanh(Bx)² with a random 3×5 B", lambda x: torch.tanh(b @ x).pow(2).sum(), 5),
        ("the paper's toy 2x² + 2xy − y²", get_toy("paper").f, 2),
    ]
    cases = []
    for description, f, n in functions:
        x = torch.randn(n, generator=gen, dtype=torch.float64)
        v = torch.randn(n, generator=gen, dtype=torch.float64)
        arguments = (f, x.clone(), v.clone())
        cases.append((f"{description} at a random x and v", arguments, hvp(f, x, v)))
    return _check_function(
        student_fn, "Hessian-vector product", cases,
        "Hv is the derivative of the gradient along v: differentiate the scalar ∇f(x)ᵀv once "
        "more with respect to x (keep the graph of the first gradient, create_graph=True).",
    )


def check_coefficients(student_fn: Callable, dampings=(0.0, 0.3, 1.0, 3.0)) -> CheckResult:
    """Check ``student_fn(num_terms, d)`` returns ``c_0, …, c_{K−1}`` of ``1/(√(1 − x) + d)``.

    Compared with :func:`sfn_teach.series.series_coefficients` (``d = λ/√V``) for
    ``K ∈ {1, 5, 30}`` and each ``d`` in ``dampings`` (pass ``dampings=(0.0,)`` to check the
    undamped ``a_k = C(2k, k)/4^k`` alone).
    """
    cases = [
        (f"K = {terms}, d = {d:g}", (terms, d), series_coefficients(terms, damping=d, scale=1.0))
        for d in dampings
        for terms in (1, 5, 30)
    ]
    return _check_function(
        student_fn, "series coefficients", cases,
        "for d = 0, a_k = a_{k−1}·(2k − 1)/(2k) starting from a_0 = 1; for d > 0 divide the "
        "power series 1 by (1 + d) + Σ_{j≥1} b_j x^j with √(1 − x) = Σ b_j x^j, term by term.",
    )


def check_series_direction(student_fn: Callable, seed: int = 0) -> CheckResult:
    """Check ``student_fn(hvp, grad, num_terms, scale, damping)`` sums the series.

    The answer must be ``Δ_K = V^(-½) Σ_{k<K} c_k v_k`` with ``v_0 = g`` and
    ``v_k = v_{k−1} − H(H v_{k−1})/V`` (no acceleration), compared with
    :func:`sfn_teach.series.sfn_direction` on a random symmetric 6×6 ``H`` with
    ``V = max h²`` for ``K ∈ {1, 4, 25}`` and ``λ ∈ {0, 0.5}``.
    """
    gen = torch.Generator().manual_seed(seed)
    h = _random_symmetric(6, gen)
    g = torch.randn(6, generator=gen, dtype=torch.float64)
    scale = float(torch.linalg.eigvalsh(h).abs().max()) ** 2
    cases = [
        (f"a random 6×6 H, K = {terms}, λ = {damping:g}",
         (lambda v: h @ v, g.clone(), terms, scale, damping),
         sfn_direction(lambda v: h @ v, g, terms, scale, damping))
        for damping in (0.0, 0.5)
        for terms in (1, 4, 25)
    ]
    return _check_function(
        student_fn, "series direction", cases,
        "start from v_0 = g and S = c_0 v_0; each further term is v_k = v_{k−1} − H(H v_{k−1})/V "
        "added with weight c_k (series_coefficients with the damping and scale); "
        "finally divide by √V.",
    )


def check_wynn(student_fn: Callable, seed: int = 0) -> CheckResult:
    """Check ``student_fn(partial_sums, order)`` is Wynn's vector ε-algorithm (plain, σ = 1).

    Compared with :func:`sfn_teach.series.wynn_epsilon` on the last ``2r + 1`` of a list of
    vectors, for ``r ∈ {0, 1, 2}``: a geometric sequence ``S + a qⁿ`` (which order 1 sums
    exactly) and the partial sums of the series on a random symmetric matrix.
    """
    gen = torch.Generator().manual_seed(seed)
    limit, a = (torch.randn(4, generator=gen, dtype=torch.float64) for _ in range(2))
    geometric = [limit + a * 0.7**n for n in range(7)]
    h = _random_symmetric(4, gen)
    x = torch.eye(4, dtype=torch.float64) - h @ h / float(torch.linalg.eigvalsh(h @ h).max())
    coefficients = series_coefficients(9)
    terms = [torch.linalg.matrix_power(x, k) @ limit for k in range(9)]
    sums = [sum(c * t for c, t in zip(coefficients[: j + 1], terms[: j + 1])) for j in range(9)]
    cases = [
        (f"{name}, order r = {order}", ([s.clone() for s in sequence], order),
         wynn_epsilon(sequence, order))
        for name, sequence in (("a geometric sequence", geometric), ("series partial sums", sums))
        for order in (0, 1, 2)
    ]
    return _check_function(
        student_fn, "ε-algorithm", cases,
        "use the last 2r + 1 sums as column ε_0, a zero column as ε_{−1}, and build columns "
        "ε_s^{(m)} = ε_{s−2}^{(m+1)} + (ε_{s−1}^{(m+1)} − ε_{s−1}^{(m)})⁻¹ with the Samelson "
        "inverse w⁻¹ = w/(wᵀw); the answer is the single entry of column 2r.",
    )


# --------------------------------------------------------------------------------------------
# Values the students predict
# --------------------------------------------------------------------------------------------

_SIGN_WORDS = {"negative": -1, "-": -1, "zero": 0, "0": 0, "positive": 1, "+": 1}


def _as_sign(value) -> int:
    if isinstance(value, str) and value.strip().lower() in _SIGN_WORDS:
        return _SIGN_WORDS[value.strip().lower()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (-1, 0, 1):
        return int(value)
    raise ValueError(
        f"each sign must be -1, 0, 1 or one of {sorted(_SIGN_WORDS)}, got {value!r}"
    )


def check_eigenvalue_signs(toy, point, answer) -> CheckResult:
    """Check the signs of the eigenvalues ``h_1 ≤ h_2`` of ``H = ∇²f(point)``.

    ``answer`` is a pair of signs in increasing order of eigenvalue, each ``-1``/``0``/``1``
    or ``"negative"``/``"zero"``/``"positive"`` (or ``"-"``, ``"0"``, ``"+"``). An
    eigenvalue counts as zero when ``|h| ≤ 1e-9 · max(1, ‖H‖)``.
    """
    toy, theta = get_toy(toy), as_point(point)
    if _unanswered(answer):
        return _not_yet("signs of the eigenvalues")
    try:
        signs = tuple(_as_sign(value) for value in answer)
        if len(signs) != 2:
            raise ValueError(f"give two signs (one per eigenvalue), got {len(signs)}")
    except (TypeError, ValueError) as error:
        return _report(False, f"could not read your answer: {error}")
    h = hessian(toy, theta)
    eigenvalues = torch.linalg.eigvalsh(h)
    tolerance = 1e-9 * max(1.0, float(h.norm()))
    expected = tuple(0 if abs(e) <= tolerance else int(math.copysign(1, e)) for e in eigenvalues)
    where = f"{toy.name} at ({float(theta[0]):.4g}, {float(theta[1]):.4g})"
    if signs == expected:
        return _report(True, f"right: those are the signs of the curvatures of {where}.")
    return _report(
        False, f"not the signs of the eigenvalues of H for {where}. Hint: with h₁ ≤ h₂, "
               "det H = h₁h₂ and trace H = h₁ + h₂; compute f_xx, f_xy and f_yy there.",
    )


def _check_point(answer, expected: torch.Tensor, start: torch.Tensor, what: str, where: str,
                 hint: str) -> CheckResult:
    """Compare a predicted point; a step of the wrong sign gets its own hint."""
    if _unanswered(answer):
        return _not_yet(what)
    try:
        error = _relative_error(answer, expected)
    except (TypeError, ValueError, RuntimeError) as exception:
        return _report(False, f"could not read your {what}: {exception}")
    if error <= RTOL:
        return _report(True, f"right: that is the {what} {where}.")
    if _relative_error(answer, 2 * start - expected) <= RTOL:
        return _report(False, f"your {what} {where} goes the opposite way: θ₁ = θ₀ − Δ.")
    return _report(False, f"not the {what} {where} (relative error {error:.2e}). Hint: {hint}")


def _where(toy, theta, damping):
    return (f"for {toy.name} from ({float(theta[0]):.4g}, {float(theta[1]):.4g})"
            + (f" with λ = {damping:g}" if damping else ""))


def check_newton_step(toy, point, answer, damping: float = 0.0) -> CheckResult:
    """Check the point ``θ₁ = θ₀ − (H + λI)⁻¹ g`` after one Newton step from ``θ₀ = point``."""
    toy, theta = get_toy(toy), as_point(point)
    h = hessian(toy, theta) + damping * torch.eye(2, dtype=torch.float64)
    step, info = torch.linalg.solve_ex(h, gradient(toy, theta))
    if info.item() != 0:
        return _report(False, f"H + λI is singular {_where(toy, theta, damping)}: Newton's step "
                              "is not defined there; pick another point or a damping λ > 0.")
    return _check_point(
        answer, theta - step, theta, "point after one Newton step", _where(toy, theta, damping),
        "solve (H + λI)Δ = g for Δ (no absolute values: Newton divides by the signed h).",
    )


def check_sfn_step(toy, point, answer, damping: float = 0.0) -> CheckResult:
    """Check the point ``θ₁ = θ₀ − (|H| + λI)⁻¹ g`` after one exact saddle-free Newton step."""
    toy, theta = get_toy(toy), as_point(point)
    eigenvalues, q = torch.linalg.eigh(hessian(toy, theta))
    direction = q @ ((q.T @ gradient(toy, theta)) / (eigenvalues.abs() + damping))
    return _check_point(
        answer, theta - direction, theta, "point after one saddle-free Newton step",
        _where(toy, theta, damping),
        "in the eigenbasis of H divide each component of g by |h_i| + λ, then map back.",
    )


def check_filter_limit(scale: float, answer: float) -> CheckResult:
    """Check the largest ``|h|`` for which the series at scale ``V = scale`` converges.

    Per eigenvalue the series is a power series in ``x = 1 − h²/V``: it converges for
    ``|x| ≤ 1`` (``x ≠ 1``), i.e. up to ``|h| = √(2V)``.
    """
    if _unanswered(answer):
        return _not_yet("convergence limit")
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return _report(False, f"give a number, got {type(answer).__name__}")
    expected = math.sqrt(2 * scale)
    if abs(answer - expected) <= RTOL * expected:
        return _report(True, f"right: beyond that |h| the series at V = {scale:g} diverges.")
    hint = "the series in x = 1 − h²/V converges while |x| ≤ 1; for which |h| does x reach −1?"
    if abs(answer - math.sqrt(scale)) <= RTOL * expected:
        hint = "that |h| makes x = 0, where the series converges fastest. " + hint
    return _report(False, f"not the convergence limit for V = {scale:g}. Hint: {hint}")


# --------------------------------------------------------------------------------------------
# The optimiser (notebook 04)
# --------------------------------------------------------------------------------------------


def check_adaptive_step_sizes(student_fn: Callable, seed: int = 0) -> CheckResult:
    """Check ``student_fn(g_dir, g_prev, q)`` returns the adaptive ``(α, μ)`` of docs/method.md §6.

    The solution of ``[[gᵀΔ, gᵀδ₀], [gᵀδ₀, q]] (α, μ)ᵀ = (gᵀΔ, gᵀδ₀)ᵀ``, compared with
    :func:`sfn_teach.optim.adaptive_step_sizes` on random non-singular systems.
    """
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(4):
        g_dir, g_prev, q = (float(x) for x in torch.randn(3, generator=gen, dtype=torch.float64))
        q = abs(q) + 0.5
        expected = torch.tensor(adaptive_step_sizes(g_dir, g_prev, q), dtype=torch.float64)
        cases.append((f"random system {i + 1}", (g_dir, g_prev, q), expected))
    return _check_function(
        student_fn, "adaptive (α, μ)", cases,
        "solve the 2×2 linear system (torch.linalg.solve) and return the pair (α, μ).",
    )


def check_damping_update(student_fn: Callable) -> CheckResult:
    """Check ``student_fn(damping, rho, omega)`` is the Levenberg–Marquardt rule (no clipping).

    Compared with :func:`sfn_teach.optim.levenberg_marquardt` for ``ρ`` below ``¼``, between
    ``¼`` and ``¾``, above ``¾`` and negative.
    """
    cases = [
        (f"λ = {lam:g}, ρ = {rho:g}, ω = {omega:g}", (lam, rho, omega),
         torch.tensor(levenberg_marquardt(lam, rho, omega), dtype=torch.float64))
        for lam, rho, omega in [(1e-3, 0.9, 0.9), (1e-3, 0.5, 0.9), (1e-3, 0.1, 0.9),
                                (2.0, -3.0, 0.5), (0.3, 1.7, 0.8)]
    ]
    return _check_function(
        student_fn, "Levenberg–Marquardt damping", cases,
        "a trustworthy model (ρ near 1) lets λ shrink by ω; a poor one (small or negative ρ) "
        "makes it grow by 1/ω; in between it stays.",
    )


def check_step_cost(num_terms: int, hvp_cost: float, levenberg_marquardt_damping: bool,
                    answer) -> CheckResult:
    """Check the cost of one SeriesSFN step in gradient-equivalents.

    One gradient (1), ``2(K − 1)`` Hessian-vector products at ``c_HVP`` gradients each, and
    one forward pass (½ a gradient) when Levenberg–Marquardt damping re-evaluates the loss.
    """
    if _unanswered(answer):
        return _not_yet("cost of a step")
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return _report(False, f"give a number, got {type(answer).__name__}")
    expected = 1 + 2 * (num_terms - 1) * hvp_cost + (0.5 if levenberg_marquardt_damping else 0)
    where = (f"K = {num_terms}, c_HVP = {hvp_cost:g}"
             + (", with Levenberg–Marquardt damping" if levenberg_marquardt_damping else ""))
    if abs(answer - expected) <= RTOL * expected:
        return _report(True, f"right: that is the cost of one step with {where}.")
    return _report(
        False, f"not the cost of one step with {where}. Hint: count the gradient, the products "
               "of the series (two per term after the first) and any extra forward pass.",
    )


def check_terms_needed(h_min: float, h_max: float, answer) -> CheckResult:
    """Check how many terms the series needs to be saddle-free over ``[h_min, h_max]``.

    It converges only where ``h² ≤ 2V``, so the smallest safe scale is ``V = h_max²/2``; its
    filter is flat (gradient descent) for ``|h| ≲ √(V/K)``, so resolving ``h_min`` needs
    ``K ≈ V/h_min² = ½ (h_max/h_min)²``: the square of the condition number. Accepted within
    5 %, since the rule is an estimate.
    """
    if _unanswered(answer):
        return _not_yet("number of terms")
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return _report(False, f"give a number, got {type(answer).__name__}")
    expected = 0.5 * (h_max / h_min) ** 2
    where = f"for |h| from {h_min:g} to {h_max:g}"
    if abs(answer - expected) <= 0.05 * expected:
        return _report(True, f"right: about that many terms {where} — the square of the "
                             "condition number, halved.")
    return _report(False, f"not the number of terms {where}. Hint: take the smallest V for "
                          "which the series converges at h_max, then the K for which the flat "
                          "part of the filter, |h| ≲ √(V/K), ends at h_min.")


# --------------------------------------------------------------------------------------------
# Scale (notebook 06)
# --------------------------------------------------------------------------------------------


def _check_count(what: str, expected: int, answer, where: str, hint: str) -> CheckResult:
    """Compare a whole-number answer (a count) with the expected one."""
    if _unanswered(answer):
        return _not_yet(what)
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return _report(False, f"give a number, got {type(answer).__name__}")
    if answer == expected:
        return _report(True, f"right: that is the {what} {where}.")
    return _report(False, f"not the {what} {where}. Hint: {hint}")


def check_hvps_per_epoch(num_train: int, batch_size: int, num_terms: int, answer) -> CheckResult:
    """Check the Hessian-vector products of one epoch of SeriesSFN: ``⌊N/B⌋ · 2(K − 1)``
    (the last, incomplete batch of an epoch is dropped)."""
    expected = (num_train // batch_size) * 2 * (num_terms - 1)
    return _check_count(
        "number of HVPs in one epoch", expected, answer,
        f"with {num_train} training images, batch {batch_size} and K = {num_terms}",
        "count the steps of an epoch (whole batches only), then the products of one step.",
    )


def check_allreduces_per_step(num_terms: int, levenberg_marquardt_damping: bool,
                              answer) -> CheckResult:
    """Check the all-reduces of one data-parallel SeriesSFN step.

    One for the loss and the gradient together, one per Hessian-vector product
    (``2(K − 1)``), and one for the re-evaluated loss of Levenberg–Marquardt damping
    (:mod:`sfn_teach.distributed`).
    """
    expected = 1 + 2 * (num_terms - 1) + (1 if levenberg_marquardt_damping else 0)
    where = (f"for K = {num_terms}"
             + (" with Levenberg–Marquardt damping" if levenberg_marquardt_damping else ""))
    return _check_count(
        "number of all-reduces per step", expected, answer, where,
        "every quantity that is an average over the whole batch must be averaged over the "
        "ranks: which of them does a step compute?",
    )
