"""Matplotlib figures of the series: its spectral filter, the filter's error, the filter on a
measured spectrum, and how the direction converges with ``K``.

Every ``plot_*`` function draws into ``ax`` (or ``axes``) when given and otherwise makes a new
:class:`matplotlib.figure.Figure` (not registered with pyplot); it returns ``(fig, ax)`` so
that a test can inspect the artists. The notation is that of docs/method.md: ``H`` with
eigenvalues ``h``, ``K`` terms, scale ``V``, damping ``λ``, Wynn order ``r``.

The functions that compute what a figure shows are public too (:func:`filter_values`,
:func:`filter_curve`, :func:`filter_error_curve`, :func:`filter_relative_error`,
:func:`max_filter_error`, :func:`direction_convergence`), so that a notebook or a widget can
print or draw the numbers behind a picture. :mod:`sfn_teach.plots` re-exports every public
name of this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from .plot_style import as_int_list, figure_and_axes, legend_below
from .series import exact_sfn_direction, filter_target, sfn_direction, spectral_filter


def convergence_limit(scale: float) -> float:
    """``√(2V)``: the series converges for the eigenvalues with ``|h| ≤ √(2V)`` only."""
    return math.sqrt(2 * scale)


def filter_values(
    h,
    num_terms: int,
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
    acceleration_order: int = 0,
) -> torch.Tensor:
    """The multiplier the series applies per eigenvalue ``h``: ``φ_K(h)``, or its accelerated kin.

    With ``r = acceleration_order = 0`` this is the scalar polynomial
    ``φ_K(h) = V^(-½) Σ_{k<K} c_k (1 − h²/V)^k`` (:func:`~sfn_teach.series.spectral_filter`).

    Wynn's ε-algorithm is defined on vectors, not per eigenvalue: its Samelson inverse
    ``w/(wᵀw)`` mixes all components, so an "accelerated filter" only exists for a given
    spectrum and gradient. For ``r ≥ 1`` this returns the component-wise ratio ``Δ_i/g_i``
    of the accelerated series direction (:func:`~sfn_teach.series.sfn_direction`) for
    ``H = diag(h)`` and ``g = (1, …, 1)``, taking the given points ``h`` as the whole spectrum.
    Only the points with ``|h| ≤ √(2V)`` enter (a diverging component would swamp ε); the
    others are NaN.
    """
    h = torch.as_tensor(h, dtype=torch.float64)
    if acceleration_order == 0:
        return spectral_filter(h, num_terms, scale, damping, kind)
    values = torch.full_like(h, math.nan)
    inside = h.abs() <= convergence_limit(scale)
    spectrum = h[inside]
    values[inside] = sfn_direction(
        lambda v: spectrum * v, torch.ones_like(spectrum), num_terms, scale, damping,
        acceleration_order, kind=kind,
    )
    return values


def filter_relative_error(
    h,
    num_terms: int,
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
    acceleration_order: int = 0,
) -> torch.Tensor:
    """``|φ(h) − t(h)| / t(h)`` with ``t(h) = 1/(|h| + λ)`` (quasi-damped ``(h² + λ)^(-½)``).

    ``φ`` is :func:`filter_values` (the plain ``φ_K`` for ``acceleration_order = 0``).
    """
    h = torch.as_tensor(h, dtype=torch.float64)
    target = filter_target(h, damping, kind)
    values = filter_values(h, num_terms, scale, damping, kind, acceleration_order)
    return (values - target).abs() / target


def max_filter_error(
    num_terms: int,
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
    acceleration_order: int = 0,
    h_low: float | None = None,
    num_points: int = 401,
) -> float:
    """``max |φ(h) − t(h)|/t(h)`` over ``h_low ≤ |h| ≤ √(2V)`` (log-spaced points).

    ``h_low`` defaults to ``√(2V)/10``; with ``λ = 0`` it must be positive, since the target
    ``1/|h|`` is infinite at 0 while ``φ_K(0)`` is finite. See :func:`filter_relative_error`.
    """
    limit = convergence_limit(scale)
    h_low = limit / 10 if h_low is None else h_low
    if not 0 < h_low < limit:
        raise ValueError(f"h_low must be in (0, √(2V) = {limit:.6g}), got {h_low!r}")
    h = torch.logspace(math.log10(h_low), math.log10(limit), num_points, dtype=torch.float64)
    errors = filter_relative_error(h, num_terms, scale, damping, kind, acceleration_order)
    return float(errors.max())


def _limit_lines(ax, scale, both_sides):
    """Vertical lines at ``|h| = √(2V)`` (one legend entry)."""
    limit = convergence_limit(scale)
    ax.axvline(limit, color="black", ls="--", lw=1, label=r"$|h| = \sqrt{2V}$")
    if both_sides:
        ax.axvline(-limit, color="black", ls="--", lw=1)


def _filter_label(num_terms, acceleration_order):
    if acceleration_order == 0:
        return rf"$\varphi_K$, K = {num_terms}"
    return rf"$\varphi_K$ with Wynn ε, K = {num_terms}, r = {acceleration_order}"


def _target_label(damping, kind):
    if kind == "quasi-damped":
        return r"target $(h^2 + \lambda)^{-1/2}$"
    return r"target $1/(|h| + \lambda)$" if damping > 0 else r"target $1/|h|$"


def filter_curve(
    num_terms: int,
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
    h_range: tuple[float, float] | None = None,
    acceleration_order: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """What :func:`plot_spectral_filter` draws for one ``K``: ``(h, φ(h), t(h), top)``.

    801 points ``h`` over ``h_range`` (default ``±1.3 √(2V)``), the multipliers ``φ(h)`` of
    :func:`filter_values` (NaN where undefined), the target ``t(h)`` (:func:`filter_target
    <sfn_teach.series.filter_target>`) and ``top``, the largest finite ``φ`` with
    ``|h| ≤ √(2V)`` (the target there if there is none): the y range shown is
    ``[−0.15, 1.25] × top``.
    """
    limit = convergence_limit(scale)
    low, high = h_range if h_range is not None else (-1.3 * limit, 1.3 * limit)
    h = torch.linspace(low, high, 801, dtype=torch.float64)
    phi = filter_values(h, num_terms, scale, damping, kind, acceleration_order)
    shown = phi[(h.abs() <= limit) & torch.isfinite(phi)]
    top = float(shown.max()) if shown.numel() else 0.0
    top = top or float(filter_target(torch.tensor(limit), damping, kind))
    return h.numpy(), phi.numpy(), filter_target(h, damping, kind).numpy(), top


def filter_error_curve(
    num_terms: int,
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
    h_range: tuple[float, float] | None = None,
    acceleration_order: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`plot_filter_error` draws for one ``K``: ``(|h|, error)``.

    401 log-spaced ``|h|`` over ``h_range`` (default ``(10⁻³ √(2V), 1.3 √(2V))``) and the
    relative error of :func:`filter_relative_error`, floored at ``10⁻¹⁷`` for log axes.
    """
    limit = convergence_limit(scale)
    low, high = h_range if h_range is not None else (1e-3 * limit, 1.3 * limit)
    if not 0 < low < high:
        raise ValueError(f"h_range must be (low, high) with 0 < low < high, got {h_range!r}")
    h = torch.logspace(math.log10(low), math.log10(high), 401, dtype=torch.float64)
    error = filter_relative_error(h, num_terms, scale, damping, kind, acceleration_order)
    return h.numpy(), error.clamp_min(1e-17).numpy()


def plot_spectral_filter(
    num_terms: int | Sequence[int],
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
    h_range: tuple[float, float] | None = None,
    ax=None,
    acceleration_order: int = 0,
):
    """``φ_K(h) = V^(-½) Σ_{k<K} c_k (1 − h²/V)^k`` for each ``K`` against its target.

    The target is ``1/(|h| + λ)`` (quasi-damped: ``(h² + λ)^(-½)``); dashed lines mark the
    convergence limit ``|h| = √(2V)``, beyond which ``φ_K`` diverges like ``|1 − h²/V|^K``.
    ``h_range`` defaults to ``±1.3 √(2V)``; the y axis is clipped to the convergent part.
    With ``acceleration_order = r ≥ 1`` the curves are the accelerated multipliers of
    :func:`filter_values` (the plotted points taken as the spectrum; ``|h| ≤ √(2V)`` only).
    The numbers are :func:`filter_curve`'s; the legend is under the axes. Returns ``(fig, ax)``.
    """
    terms = as_int_list("num_terms", num_terms)
    fig, ax = figure_and_axes(ax)
    top = 0.0
    for count in terms:
        h, phi, target, highest = filter_curve(count, scale, damping, kind, h_range,
                                               acceleration_order)
        ax.plot(h, phi, lw=1.5, label=_filter_label(count, acceleration_order))
        top = max(top, highest)
    ax.plot(h, target, "k", lw=1, alpha=0.6, label=_target_label(damping, kind))
    _limit_lines(ax, scale, both_sides=h[0] < 0)
    ax.set_xlim(h[0], h[-1])
    ax.set_ylim(-0.15 * top, 1.25 * top)
    ax.set_xlabel("eigenvalue h")
    ax.set_ylabel("multiplier of the component along q")
    ax.set_title(f"spectral filter: V = {scale:g}, λ = {damping:g} ({kind})", fontsize="medium")
    legend_below(ax)
    return fig, ax


def plot_filter_error(
    num_terms: int | Sequence[int],
    scale: float,
    damping: float = 0.0,
    kind: str = "damped",
    h_range: tuple[float, float] | None = None,
    ax=None,
    acceleration_order: int = 0,
):
    """The relative error ``|φ_K(h) − t(h)|/t(h)`` against ``|h|`` on log–log axes.

    ``h_range`` (of ``|h|``, both positive) defaults to ``(10⁻³ √(2V), 1.3 √(2V))``. The error
    falls like ``|1 − h²/V|^K`` inside the limit, slowest at small ``|h|`` (truncation acts as
    an implicit damping there), and explodes beyond ``|h| = √(2V)`` (dashed). With
    ``acceleration_order ≥ 1`` the error is that of :func:`filter_values`. The numbers are
    :func:`filter_error_curve`'s; the legend is under the axes. Returns ``(fig, ax)``.
    """
    terms = as_int_list("num_terms", num_terms)
    fig, ax = figure_and_axes(ax)
    for count in terms:
        h, error = filter_error_curve(count, scale, damping, kind, h_range, acceleration_order)
        ax.plot(h, error, lw=1.5, label=_filter_label(count, acceleration_order))
    _limit_lines(ax, scale, both_sides=False)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-16, 1e3)
    ax.set_xlabel("|h|")
    ax.set_ylabel("relative error of the filter")
    ax.set_title(f"filter error: V = {scale:g}, λ = {damping:g} ({kind})", fontsize="medium")
    legend_below(ax)
    return fig, ax


def plot_filter_on_spectrum(
    eigenvalues,
    num_terms: int,
    scales: Sequence[float],
    damping: float = 0.0,
    ax=None,
):
    """What the series does to a measured spectrum: ``φ_K(|h|)`` for each ``V`` in ``scales``.

    On log–log axes against ``|h|`` over the range of the measured ``eigenvalues`` (drawn as
    a rug at the bottom): the target ``1/(|h| + λ)`` of saddle-free Newton, each filter
    ``φ_K`` (dotted beyond ``√(2V)``, where it diverges), and for each ``V`` the level
    ``φ_K(0) ≈ 2√(K/(πV))`` (thin) that the filter keeps for ``|h| ≲ √(V/K)``: an eigenvalue
    there is scaled like a gradient-descent step with that learning rate. If every measured
    ``|h|`` is in that flat part the step is gradient descent in disguise. Returns ``(fig, ax)``.
    """
    magnitudes = torch.as_tensor(eigenvalues, dtype=torch.float64).abs()
    magnitudes = magnitudes[magnitudes > 0]
    if magnitudes.numel() == 0:
        raise ValueError("eigenvalues must hold at least one non-zero eigenvalue")
    low, high = float(magnitudes.min()), float(magnitudes.max())
    h = torch.logspace(math.log10(low) - 0.3, math.log10(high) + 0.3, 400, dtype=torch.float64)
    fig, ax = figure_and_axes(ax, figsize=(6.5, 4.5))
    ax.plot(h.numpy(), filter_target(h, damping).numpy(), "k", lw=1.2,
            label=_target_label(damping, "damped"))
    for index, scale in enumerate(scales):
        color = f"C{index}"
        phi = spectral_filter(h, num_terms, scale, damping).abs()
        inside = h <= convergence_limit(scale)
        ax.plot(h[inside].numpy(), phi[inside].numpy(), color=color, lw=1.8,
                label=rf"$\varphi_K$, K = {num_terms}, V = {scale:.3g}")
        if not inside.all():
            ax.plot(h[~inside].numpy(), phi[~inside].numpy(), color=color, lw=1.2, ls=":")
        ax.axhline(2 * math.sqrt(num_terms / (math.pi * scale)), color=color, lw=0.8,
                   alpha=0.6)
    ax.plot(magnitudes.numpy(), np.zeros(magnitudes.numel()), "|", color="0.3", ms=12,
            transform=ax.get_xaxis_transform(), label="measured |h|")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(float(h[0]), float(h[-1]))
    ax.set_ylim(0.3 / (high + damping), 3 / (low + damping))
    ax.set_xlabel("|h|")
    ax.set_ylabel("multiplier of the component along q")
    ax.set_title(f"the series' filter on a measured spectrum (λ = {damping:g})",
                 fontsize="medium")
    ax.legend(fontsize="x-small", loc="lower left")
    return fig, ax


# --------------------------------------------------------------------------------------------
# Convergence of the direction
# --------------------------------------------------------------------------------------------


def direction_convergence(
    hessian: torch.Tensor,
    grad: torch.Tensor,
    num_terms_list: Sequence[int],
    scale: float,
    damping: float = 0.0,
    order: int = 0,
    sablonniere: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity and relative error of ``Δ_K`` to ``Δ* = (|H| + λI)⁻¹ g`` for each ``K``.

    ``Δ_K`` is :func:`~sfn_teach.series.sfn_direction` with products ``Hv = H @ v`` on the dense
    symmetric ``hessian``, accelerated by Wynn's ε of order ``r = order``; ``Δ*`` is
    :func:`~sfn_teach.series.exact_sfn_direction`. Returns ``(cos ∠(Δ_K, Δ*), ‖Δ_K − Δ*‖/‖Δ*‖)``
    as two arrays, NaN where ``K < 2r + 1``.
    """
    exact = exact_sfn_direction(hessian, grad, damping)
    cosines, errors = [], []
    for count in as_int_list("num_terms_list", list(num_terms_list)):
        if count < 2 * order + 1:
            cosines.append(math.nan)
            errors.append(math.nan)
            continue
        direction = sfn_direction(
            lambda v: hessian @ v, grad, count, scale, damping, order, sablonniere
        )
        cosines.append(float(direction @ exact / (direction.norm() * exact.norm())))
        errors.append(float((direction - exact).norm() / exact.norm()))
    return np.array(cosines), np.array(errors)


def _variant_label(order, sablonniere):
    if order == 0:
        return "plain partial sums (r = 0)"
    return f"Wynn ε{' (Sablonnière)' if sablonniere else ''}, r = {order}"


def plot_direction_convergence(
    hessian: torch.Tensor,
    grad: torch.Tensor,
    num_terms_list: Sequence[int],
    scale: float,
    damping: float = 0.0,
    orders: Sequence[int] = (0, 2),
    sablonniere: Sequence[bool] = (False,),
    axes=None,
):
    """Two panels against ``K``: cosine similarity and relative error of ``Δ_K`` to ``Δ*``.

    One curve per Wynn order ``r`` in ``orders`` (``r = 0``: no acceleration) and, for
    ``r ≥ 1``, per weighting in ``sablonniere`` (``False``: plain ``σ_s = 1``; ``True``:
    Sablonnière's ``σ_s = ⌊s/2⌋ + 1``). See :func:`direction_convergence`. ``axes`` is a
    pair of axes or ``None``. Returns ``(fig, (ax_cosine, ax_error))``.
    """
    if axes is None:
        fig = Figure(figsize=(10, 4), layout="constrained")
        axes = fig.subplots(1, 2)
    fig, (ax_cos, ax_err) = axes[0].figure, axes
    terms = np.array(as_int_list("num_terms_list", list(num_terms_list)))
    variants = [(0, False)] if 0 in orders else []
    variants += [(r, flag) for r in orders if r > 0 for flag in sablonniere]
    for order, flag in variants:
        cosines, errors = direction_convergence(
            hessian, grad, terms.tolist(), scale, damping, order, flag
        )
        label = _variant_label(order, flag)
        ax_cos.plot(terms, cosines, "-o", ms=3, label=label)
        ax_err.plot(terms, np.maximum(errors, 1e-17), "-o", ms=3, label=label)
    ax_cos.set_xlabel("number of terms K")
    ax_cos.set_ylabel(r"cosine similarity to $(|H| + \lambda I)^{-1} g$")
    ax_cos.set_title("direction: cosine similarity", fontsize="medium")
    ax_err.set_yscale("log")
    ax_err.set_xlabel("number of terms K")
    ax_err.set_ylabel("relative error")
    ax_err.set_title("direction: relative error", fontsize="medium")
    for ax in (ax_cos, ax_err):
        ax.legend(fontsize="x-small")
    return fig, (ax_cos, ax_err)

