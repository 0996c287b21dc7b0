"""The series of Hessian-vector products for the saddle-free Newton direction.

Everything here works on a symmetric, possibly indefinite operator ``H`` given only through
``hvp(v) = H v``. The target is the damped saddle-free Newton direction

    Δ* = (|H| + λI)⁻¹ g,        |H| = Σ_i |h_i| q_i q_iᵀ = (H²)^½.

Per eigenvalue ``h`` of ``H``, with the scale ``V > 0``, ``d = λ/√V`` and ``x = 1 − h²/V``,

    1/(|h| + λ) = V^(-½) · 1/(√(1 − x) + d) = V^(-½) Σ_k c_k x^k,

so replacing ``x`` by the matrix ``I − H²/V`` gives a series that needs only products with ``H``:

    v_0 = g,   v_k = v_{k−1} − H(H v_{k−1})/V,   S_j = Σ_{k≤j} c_k v_k,   Δ_K = V^(-½) S_{K−1}.

The ``K`` terms cost ``2(K − 1)`` Hessian-vector products. The truncated series applies the
scalar polynomial ``φ_K(h) = V^(-½) Σ_{k<K} c_k (1 − h²/V)^k`` to each eigen-component of ``g``
(:func:`spectral_filter`); it converges to ``1/(|h| + λ)`` if and only if ``0 < h² ≤ 2V``
(for ``λ > 0`` also at ``h = 0``). Wynn's ε-algorithm (:func:`wynn_epsilon`) accelerates it.

**The spectrum for free.** The terms are ``v_k = X^k g`` with ``X = I − H²/V``, so their inner
products are the moments ``ν_s = gᵀ X^s g`` (``ν_{2k} = ‖v_k‖²``, ``ν_{2k+1} = v_kᵀv_{k+1}``).
From them alone, with no further product, :func:`ritz_values` gives the Rayleigh–Ritz estimates
of the eigenvalues of ``H²`` on the Krylov space ``span{g, H²g, H⁴g, …}`` — in particular a
lower bound of ``λ_max(H²)`` that is usually close, which the ``"ritz"`` scale rule of
:class:`sfn_teach.optim.SeriesSFN` uses to choose the next step's ``V``.

The *quasi-damped* variant targets ``(H² + λI)^(-½) g`` instead: ``x = 1 − (h² + λ)/V`` and
the undamped coefficients ``a_k = C(2k, k)/4^k``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .checks import choice, integer, real
from .hvp import Workspace, all_finite

__all__ = [
    "GROWTH_TOLERANCE", "KINDS", "MAX_RITZ_DIMENSION", "SeriesResult", "exact_sfn_direction",
    "filter_target", "ritz_values", "series_coefficients", "sfn_direction", "sfn_series",
    "spectral_filter", "sqrt_coefficients", "wynn_epsilon"
]

KINDS = ("damped", "quasi-damped")


# --------------------------------------------------------------------------------------------
# Coefficients
# --------------------------------------------------------------------------------------------


def sqrt_coefficients(num_terms: int) -> torch.Tensor:
    """Taylor coefficients of ``√(1 − x) = Σ_j b_j x^j``, float64.

    ``b_j = (−1)^j binom(½, j)``: ``b_0 = 1`` and ``b_j = b_{j−1} (j − 3/2)/j``, so that
    ``b_1 = −½, b_2 = −⅛, …``; every ``b_j`` with ``j ≥ 1`` is negative.
    """
    integer("num_terms", num_terms, 1)
    b = torch.empty(num_terms, dtype=torch.float64)
    b[0] = 1.0
    for j in range(1, num_terms):
        b[j] = b[j - 1] * (j - 1.5) / j
    return b


def series_coefficients(
    num_terms: int, damping: float = 0.0, scale: float = 1.0, kind: str = "damped"
) -> torch.Tensor:
    """The coefficients ``c_0, …, c_{K−1}`` of ``1/(√(1 − x) + d) = Σ_k c_k x^k``, float64.

    ``d = λ/√V`` with ``λ = damping`` and ``V = scale``. They come from power-series division
    of ``1`` by ``√(1 − x) + d = (1 + d) + Σ_{j≥1} b_j x^j``:

        c_0 = 1/(1 + d),    c_k = −(Σ_{j=1..k} b_j c_{k−j}) / (1 + d).

    Since ``b_j < 0`` for ``j ≥ 1``, every term of the sum is positive: no cancellation, so
    the coefficients are accurate to a few ulps for every ``d ≥ 0``, including ``d = 1``
    (``λ² = V``), where the reference recurrence ``c_k = −(c_{k−1} + b_k)/(d² − 1)`` divides
    by zero. For ``d = 0`` they are ``a_k = C(2k, k)/4^k = a_{k−1}(2k − 1)/(2k)``.

    ``kind="quasi-damped"`` returns the undamped ``a_k`` whatever the damping: that variant
    puts ``λ`` into ``x = 1 − (h² + λ)/V`` instead.
    """
    integer("num_terms", num_terms, 1)
    damping = real("damping", damping, 0.0)
    scale = real("scale", scale, 0.0, low_open=True)
    d = 0.0 if choice("kind", kind, KINDS) == "quasi-damped" else damping / math.sqrt(scale)
    b = sqrt_coefficients(num_terms)
    c = torch.empty(num_terms, dtype=torch.float64)
    c[0] = 1.0 / (1.0 + d)
    for k in range(1, num_terms):
        c[k] = -torch.dot(b[1 : k + 1], c[:k].flip(0)) / (1.0 + d)
    return c


@functools.lru_cache(maxsize=256)
def _cached_coefficients(num_terms, damping, scale, kind):
    """``series_coefficients`` as a tuple of floats, remembered (an optimiser asks every step)."""
    return tuple(series_coefficients(num_terms, damping, scale, kind).tolist())


# --------------------------------------------------------------------------------------------
# The scalar picture: the polynomial filter the series applies to each eigenvalue
# --------------------------------------------------------------------------------------------


def _series_variable(h: torch.Tensor, scale: float, damping: float, kind: str) -> torch.Tensor:
    """``x = 1 − h²/V`` (damped) or ``x = 1 − (h² + λ)/V`` (quasi-damped)."""
    shift = damping if kind == "quasi-damped" else 0.0
    return 1.0 - (h * h + shift) / scale


def spectral_filter(
    h: torch.Tensor,
    num_terms: int,
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
) -> torch.Tensor:
    """The scalar ``φ_K(h) = V^(-½) Σ_{k<K} c_k (1 − h²/V)^k`` for each eigenvalue in ``h``.

    The truncated series multiplies the component of ``g`` along ``q_i`` by ``φ_K(h_i)``.
    The target is ``1/(|h| + λ)`` (damped) or ``(h² + λ)^(-½)`` (quasi-damped); the series
    converges to it if and only if ``|x| ≤ 1`` with ``x ≠ 1``, i.e. ``0 < h² ≤ 2V`` (damped),
    and diverges geometrically like ``|x|^K`` beyond ``|h| = √(2V)``. Evaluated by Horner's
    rule in float64 (or the dtype of ``h`` if wider).
    """
    integer("num_terms", num_terms, 1)
    scale = real("scale", scale, 0.0, low_open=True)
    damping = real("damping", damping, 0.0)
    h = torch.as_tensor(h)
    dtype = torch.promote_types(h.dtype, torch.float64)
    x = _series_variable(h.to(dtype), scale, damping, choice("kind", kind, KINDS))
    c = series_coefficients(num_terms, damping, scale, kind).to(dtype=dtype, device=h.device)
    total = torch.zeros_like(x)
    for ck in c.flip(0):
        total = total * x + ck
    return total / math.sqrt(scale)


def filter_target(h: torch.Tensor, damping: float = 0.0, kind: str = "damped") -> torch.Tensor:
    """The function the series approximates: ``1/(|h| + λ)`` or, quasi-damped, ``(h² + λ)^(-½)``."""
    damping = real("damping", damping, 0.0)
    h = torch.as_tensor(h).to(torch.promote_types(torch.as_tensor(h).dtype, torch.float64))
    if choice("kind", kind, KINDS) == "quasi-damped":
        return (h * h + damping).rsqrt()
    return 1.0 / (h.abs() + damping)


# --------------------------------------------------------------------------------------------
# Wynn's vector ε-algorithm
# --------------------------------------------------------------------------------------------


def wynn_epsilon(
    partial_sums: Sequence[torch.Tensor], order: int, sablonniere: bool = False
) -> torch.Tensor:
    """Wynn's vector ε-algorithm of order ``r`` on the last ``2r + 1`` partial sums.

    With ``S_0, …, S_{2r}`` the last ``2r + 1`` items (re-indexed from 0),

        ε_{−1}^{(m)} = 0,   ε_0^{(m)} = S_m,
        ε_s^{(m)} = ε_{s−2}^{(m+1)} + σ_s · (ε_{s−1}^{(m+1)} − ε_{s−1}^{(m)})⁻¹,

    with the Samelson inverse ``w⁻¹ = w/(wᵀw)``; the result is ``ε_{2r}^{(0)}``. ``σ_s = 1``
    is the plain algorithm (as in the published runs); ``sablonniere=True`` uses
    ``σ_s = ⌊s/2⌋ + 1``, Sablonnière's modification for logarithmically convergent sequences.
    Order 0 copies the last partial sum (inputs stay unchanged); order 1 is exact for ``S + a qⁿ``.

    The result is not finite when two neighbouring entries of a column coincide (the
    sequence has already converged); :func:`sfn_series` then falls back to the plain sum.
    """
    order = _check_epsilon_table(len(partial_sums), order, sablonniere)
    column = [s.clone() for s in partial_sums[len(partial_sums) - (2 * order + 1) :]]
    scratch = [torch.empty_like(column[0]) for _ in range(2 * order + 1)]
    return _epsilon_table(column, scratch, order, sablonniere)


def _check_epsilon_table(num_sums, order, sablonniere):
    """Validate the arguments of the ε-algorithm; returns ``order``."""
    order = integer("order", order, 0)
    if not isinstance(sablonniere, bool):
        raise TypeError(f"sablonniere must be a bool, got {sablonniere!r}")
    if num_sums < 2 * order + 1:
        raise ValueError(f"order={order} needs at least 2*order+1 = {2 * order + 1} partial "
                         f"sums, got {num_sums}")
    return order


def _epsilon_table(column, scratch, order, sablonniere):
    """``ε_{2r}^{(0)}`` of :func:`wynn_epsilon` from the ``2r + 1`` vectors ``column`` (``ε_0``),
    in place: ``ε_s^{(m)}`` overwrites ``ε_{s−2}^{(m)}``, whose last reader it is (odd columns
    in ``2r`` of the ``2r + 1`` vectors ``scratch``, even ones in ``column``, whose last entry is
    kept). An entry is ``w`` by a subtraction, ``wᵀw``, then ``ε_{s−2} + σ_s w/(wᵀw)``: for
    ``s = 1`` (``ε_{−1} = 0``) ``w/(wᵀw) + 0.0``; for ``σ_s = 1`` one ``addcdiv``; else a division,
    a product with ``σ_s`` and a sum: the formula's roundings, without a temporary."""
    *odd, difference = scratch
    before, current = None, column  # ε_{−1} = 0, ε_0
    for s in range(1, 2 * order + 1):
        sigma = (s // 2 + 1) if sablonniere else 1
        target = odd if s % 2 else column
        for m in range(len(current) - 1):
            torch.sub(current[m + 1], current[m], out=difference)
            squared_norm = torch.dot(difference, difference)
            if before is None:  # 0 + w/(wᵀw), σ_1 = 1 (+ 0.0 turns −0 into +0, as 0 + x does)
                torch.div(difference, squared_norm, out=target[m]).add_(0.0)
            elif sigma == 1:
                torch.addcdiv(before[m + 1], difference, squared_norm, out=target[m])
            else:
                torch.div(difference, squared_norm, out=difference).mul_(sigma)
                torch.add(before[m + 1], difference, out=target[m])
        before, current = current, target[: len(current) - 1]
    return current[0]


# --------------------------------------------------------------------------------------------
# The series on an operator
# --------------------------------------------------------------------------------------------


@dataclass
class SeriesResult:
    """The direction of :func:`sfn_series` and what was seen while summing it.

    ``term_norms[k] = ‖v_k‖`` and ``partial_sum_norms[j] = ‖V^(-½) S_j‖``. When every
    ``h² ≤ 2V`` the terms can only shrink, ``‖v_k‖ ≤ ‖v_{k−1}‖``, because ``|1 − h²/V| ≤ 1``;
    a growing term therefore proves an eigenvalue with ``h² > 2V``, whose component grows
    geometrically in every later term and partial sum: ``diverging`` is then set.
    ``square_of_grad`` is ``H²g``, the first product pair (``None`` when ``K = 1``); the
    ``lower_bound`` scale rule reads ``‖H²g‖/‖g‖`` from it. ``moments`` are
    ``ν_0, …, ν_{2K−2}``, at most up to ``ν_{2M}`` with ``M =`` :data:`MAX_RITZ_DIMENSION`,
    where ``ν_s = gᵀ X^s g`` (float64; module docstring), and
    ``ritz_values`` the Ritz values of ``H²`` they give (:func:`ritz_values`, ascending; empty
    for ``K = 1``).
    """

    direction: torch.Tensor
    num_hvps: int
    term_norms: list[float] = field(default_factory=list)
    partial_sum_norms: list[float] = field(default_factory=list)
    diverging: bool = False
    acceleration_failed: bool = False
    square_of_grad: torch.Tensor | None = None
    moments: list[float] = field(default_factory=list)
    ritz_values: torch.Tensor | None = None


#: the largest Krylov dimension of :func:`ritz_values`; Hankel matrices of moments are far too
#: ill-conditioned beyond it in float64, and :func:`sfn_series` collects no more moments
MAX_RITZ_DIMENSION = 16


def ritz_values(
    moments: Sequence[float],
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Rayleigh–Ritz estimates of the eigenvalues of ``H²`` from the series' moments.

    ``moments`` are ``ν_s = gᵀ X^s g`` for ``s = 0, 1, …`` with ``X = I − H²/V``
    (quasi-damped: ``X = I − (H² + λI)/V``), as :func:`sfn_series` collects them. On the
    Krylov space spanned by ``v_i = X^i g``, ``i < m``, the Gram matrix and the matrix of
    ``X`` are Hankel matrices of moments,

        G_ij = v_iᵀ v_j = ν_{i+j},        A_ij = v_iᵀ X v_j = ν_{i+j+1},

    so the Ritz values ``ξ`` of ``X`` solve ``A y = ξ G y`` and those of ``H²`` are
    ``V(1 − ξ)`` (minus ``λ``, quasi-damped): the eigenvalues of ``H²`` compressed to
    ``span{g, H²g, …, H^{2(m−1)}g}``. They lie within ``[λ_min(H²), λ_max(H²)]``, and the
    largest is the Lanczos estimate of ``λ_max(H²)``, from below.

    ``m`` is as large as the moments allow (``2m ≤`` their number, at most
    :data:`MAX_RITZ_DIMENSION`) while the basis stays numerically independent: Hankel matrices
    of moments grow ill-conditioned quickly with ``m``, so ``m`` stops before the first ``v_i``
    whose part outside the earlier ones (a pivot of the Cholesky factor of the normalised
    ``G``, squared) is below ``√ε`` of ``dtype``, the precision the vectors were computed in.
    Returns the Ritz values of ``H²`` in ascending order (float64; empty if ``g = 0`` or there
    are fewer than two moments).
    """
    scale = real("scale", scale, 0.0, low_open=True)
    damping = real("damping", damping, 0.0)
    shift = damping if choice("kind", kind, KINDS) == "quasi-damped" else 0.0
    nu = torch.as_tensor(list(moments), dtype=torch.float64)
    size = min(len(nu) // 2, MAX_RITZ_DIMENSION)
    if size == 0 or not nu[0] > 0 or not torch.isfinite(nu).all():
        return torch.empty(0, dtype=torch.float64)
    index = torch.arange(size)
    gram, product = nu[index[:, None] + index], nu[index[:, None] + index + 1]
    tolerance = math.sqrt(torch.finfo(dtype).eps)
    for m in range(size, 0, -1):  # the largest m whose basis is well-conditioned
        inverse_norms = gram.diagonal()[:m].rsqrt()
        normalised = gram[:m, :m] * inverse_norms[:, None] * inverse_norms
        factor, info = torch.linalg.cholesky_ex(normalised)
        if info.item() == 0 and factor.diagonal().square().min() > tolerance:
            break
    scaled = product[:m, :m] * inverse_norms[:, None] * inverse_norms
    half = torch.linalg.solve_triangular(factor, scaled, upper=False)
    compressed = torch.linalg.solve_triangular(factor, half.T, upper=False)
    xi = torch.linalg.eigvalsh(0.5 * (compressed + compressed.T))
    return (scale * (1.0 - xi) - shift).flip(0)


#: relative growth of a series term above which it counts as growing (rounding is far below)
GROWTH_TOLERANCE = 1e-6


def sfn_series(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    grad: torch.Tensor,
    num_terms: int,
    scale: float,
    damping: float = 0.0,
    acceleration_order: int = 0,
    sablonniere: bool = False,
    kind: str = "damped",
    square_of_grad: torch.Tensor | None = None,
    stop_if_diverging: bool = False,
    workspace: Workspace | None = None,
) -> SeriesResult:
    """Sum the series for ``Δ ≈ (|H| + λI)⁻¹ g`` and return it with diagnostics.

    The recurrence (two Hessian-vector products per term; ``K = num_terms``)::

        v_0 = g,   v_k = v_{k−1} − H(H v_{k−1})/V                          (damped)
                   v_k = (1 − λ/V) v_{k−1} − H(H v_{k−1})/V                 (quasi-damped)
        S_j = Σ_{k≤j} c_k v_k,   Δ = V^(-½) S_{K−1}

    With ``acceleration_order = r ≥ 1``, ``Δ = V^(-½) ε_{2r}`` from :func:`wynn_epsilon` on
    ``S_{K−2r−1}, …, S_{K−1}`` (needs ``K ≥ 2r + 1``). If the ε-table breaks down (a zero
    difference: the sums have already converged) the plain ``S_{K−1}`` is used and
    ``acceleration_failed`` is set.

    ``square_of_grad``, when given, is ``H(Hg)`` already computed by the caller; it is used
    as the first product pair (and counted), so the total stays ``2(K − 1)`` products.

    **Buffers.** Every vector operation writes into a preallocated flat vector (two for the
    terms, a ring of ``2r + 1`` for the partial sums, ``2r − 1`` more for the ε-table; two
    float64 ones for the moments of a narrower dtype): the operations of the formulas in
    their order, so the bits of allocating every result. A :class:`~sfn_teach.hvp.Workspace`
    as ``workspace`` keeps them from call to call (an optimiser's does); ``direction`` then
    lives in it, until the next call. ``hvp`` may write a result over the one before the last
    (each is read before the next call but one; ``square_of_grad`` is kept as a copy). The loop
    never waits for a value: norms and moments stay on the device, so a GPU gets the products
    back to back.

    ``stop_if_diverging=True`` is the exception: it checks each term as it comes (one host
    synchronisation per term: ``‖v_k‖ > (1 + GROWTH_TOLERANCE)‖v_{k−1}‖`` in ``g``'s dtype),
    since whether to spend the next two products depends on it, and stops at the first that
    grows: ``diverging`` is set, ``direction`` is the partial sum so far (not to be used), and
    ``num_hvps``, the moments and ``ritz_values`` cover the terms computed (no product wasted).
    """
    num_terms = integer("num_terms", num_terms, 1)
    scale = real("scale", scale, 0.0, low_open=True)
    damping = real("damping", damping, 0.0)
    acceleration_order = integer("acceleration_order", acceleration_order, 0)
    kind = choice("kind", kind, KINDS)
    if not isinstance(grad, torch.Tensor) or grad.dim() != 1:
        raise ValueError("grad must be a 1-D (flat) tensor")
    if num_terms < 2 * acceleration_order + 1:
        raise ValueError(
            f"num_terms must be >= 2*acceleration_order+1 = {2 * acceleration_order + 1} "
            f"(Wynn's ε-algorithm of order {acceleration_order} needs that many partial sums), "
            f"got num_terms={num_terms}"
        )
    coefficients = _cached_coefficients(num_terms, damping, scale, kind)
    keep_factor = 1.0 - damping / scale if kind == "quasi-damped" else 1.0
    window_size = 2 * acceleration_order + 1
    space = Workspace() if workspace is None else workspace
    terms = space.vectors("series terms", 2, grad)
    sums = space.vectors("series partial sums", window_size, grad)  # S_k in sums[k % (2r+1)]
    narrow = grad.dtype != torch.float64  # the moments ν_s = gᵀXˢg are accumulated in float64
    wides = space.vectors("series moments", 2, grad, torch.float64) if narrow else None

    def wide(k, vector):
        return wides[k % 2].copy_(vector) if narrow else vector

    norm = torch.linalg.vector_norm
    norms = grad.new_empty((2, num_terms))  # ‖v_k‖ and ‖S_k‖, read once at the end
    moments = grad.new_empty(2 * min(num_terms - 1, MAX_RITZ_DIMENSION) + 1, dtype=torch.float64)
    term, partial_sum = grad, torch.mul(grad, coefficients[0], out=sums[0])
    norm(term, out=norms[0, 0])
    norm(partial_sum, out=norms[1, 0])
    previous = wide(0, term)
    torch.dot(previous, previous, out=moments[0])
    computed = 1
    for k in range(1, num_terms):
        square = square_of_grad if k == 1 and square_of_grad is not None else hvp(hvp(term))
        if k == 1 and square is not square_of_grad:  # kept as a copy: hvp may reuse its memory
            square_of_grad = space.vectors("series H²g", 1, grad)[0].copy_(square)
        after = terms[k % 2]
        if keep_factor != 1.0:
            term = torch.mul(term, keep_factor, out=after)
        term = torch.add(term, square, alpha=-1.0 / scale, out=after)  # v_k = v_{k−1} − H²v_{k−1}/V
        partial_sum = torch.add(  # S_k = S_{k−1} + c_k v_k
            partial_sum, term, alpha=coefficients[k], out=sums[k % window_size]
        )
        norm(term, out=norms[0, k])
        norm(partial_sum, out=norms[1, k])
        if k <= MAX_RITZ_DIMENSION:
            current = wide(k, term)
            torch.dot(previous, current, out=moments[2 * k - 1])  # ν_{2k−1}
            torch.dot(current, current, out=moments[2 * k])  # ν_{2k}
            previous = current
        computed = k + 1
        if stop_if_diverging and norms[0, k] > (1 + GROWTH_TOLERANCE) * norms[0, k - 1]:
            break

    root_scale = math.sqrt(scale)
    term_norms, sum_norms = norms[:, :computed].tolist()
    moments = moments[: 2 * min(computed - 1, MAX_RITZ_DIMENSION) + 1].tolist()
    result = SeriesResult(
        direction=partial_sum,
        num_hvps=2 * (computed - 1),
        term_norms=term_norms,
        partial_sum_norms=[n / root_scale for n in sum_norms],
        diverging=any(
            later > (1 + GROWTH_TOLERANCE) * earlier
            for earlier, later in zip(term_norms, term_norms[1:])
        ),
        square_of_grad=square_of_grad,
        moments=moments,
        ritz_values=ritz_values(moments, scale, damping, kind, grad.dtype),
    )
    if acceleration_order > 0 and not result.diverging:
        window = [sums[k % window_size] for k in range(max(computed - window_size, 0), computed)]
        _check_epsilon_table(len(window), acceleration_order, sablonniere)
        scratch = terms + space.vectors("epsilon table", 2 * acceleration_order - 1, grad)
        accelerated = _epsilon_table(window, scratch, acceleration_order, sablonniere)
        if all_finite(accelerated):  # (the ε-table overwrote every partial sum but S_{K−1})
            result.direction = accelerated
        else:
            result.acceleration_failed = True
    # Δ = V^(-½) S_{K−1} (or ε_{2r}) in place of the partial sum it is made of
    result.direction = torch.div(result.direction, root_scale, out=result.direction)
    return result


def sfn_direction(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    grad: torch.Tensor,
    num_terms: int,
    scale: float,
    damping: float = 0.0,
    acceleration_order: int = 0,
    sablonniere: bool = False,
    kind: str = "damped",
    diagnostics: dict | None = None,
) -> torch.Tensor:
    """``Δ ≈ (|H| + λI)⁻¹ g`` by ``K`` terms of the series, from ``hvp(v) = H v`` alone.

    ``Δ = V^(-½) Σ_{k<K} c_k v_k`` with ``v_0 = g`` and ``v_k = (I − H²/V) v_{k−1}``, using
    ``2(K − 1)`` calls of ``hvp``; optionally accelerated by Wynn's ε-algorithm of order
    ``r = acceleration_order`` (needs ``K ≥ 2r + 1``). See :func:`sfn_series` for the exact
    recurrence of each ``kind``.

    Pass a dict as ``diagnostics`` to get back ``num_hvps``, ``term_norms``,
    ``partial_sum_norms``, ``diverging`` and ``acceleration_failed`` (see
    :class:`SeriesResult`); the return value does not change.
    """
    result = sfn_series(hvp, grad, num_terms, scale, damping, acceleration_order, sablonniere, kind)
    if diagnostics is not None:
        diagnostics.update(
            num_hvps=result.num_hvps, term_norms=result.term_norms,
            partial_sum_norms=result.partial_sum_norms,
            diverging=result.diverging,
            acceleration_failed=result.acceleration_failed,
        )
    return result.direction


# --------------------------------------------------------------------------------------------
# Exact references by eigendecomposition
# --------------------------------------------------------------------------------------------


def exact_sfn_direction(
    hessian: torch.Tensor, grad: torch.Tensor, damping: float = 0.0, kind: str = "damped"
) -> torch.Tensor:
    """The exact damped saddle-free Newton direction ``(|H| + λI)⁻¹ g``, by eigendecomposition.

    ``H = Q diag(h) Qᵀ`` (``torch.linalg.eigh``), so ``(|H| + λI)⁻¹ g = Q diag(1/(|h| + λ)) Qᵀ g``;
    quasi-damped: ``Q diag((h² + λ)^(-½)) Qᵀ g``. With ``λ = 0`` and a singular ``H`` the
    direction is infinite along the null space (the result then holds ``inf``/``nan``).
    """
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"hessian must be a square matrix, got shape {tuple(hessian.shape)}")
    if grad.shape != (hessian.shape[0],):
        raise ValueError(f"grad must have shape ({hessian.shape[0]},) to match the hessian, "
                         f"got {tuple(grad.shape)}")
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
    weights = filter_target(eigenvalues, damping, kind).to(grad.dtype)
    return eigenvectors @ (weights * (eigenvectors.T @ grad))
