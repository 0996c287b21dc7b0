"""Matplotlib figures for the notebooks: toys and trajectories, losses, eigen-directions.

Every ``plot_*`` function draws into ``ax`` when given and otherwise makes a new
:class:`matplotlib.figure.Figure` (not registered with pyplot, so nothing is shown twice and
nothing leaks); it returns ``(fig, ax)`` so that a test can inspect the artists. Nothing here
calls ``plt.show``. The notation is that of docs/method.md: ``H`` with eigenvalues ``h``,
``K`` terms, scale ``V``, damping ``λ``, Wynn order ``r``.

The functions that compute what a figure shows are public too (:func:`toy_grid`,
:func:`contour_levels`, :func:`loss_scale`, :func:`stop_reason`), so that a notebook or a
widget can print the numbers behind a picture. The figures of the series (its spectral filter
and the convergence of its direction) are in :mod:`sfn_teach.series_plots`, the shared colours
and helpers in :mod:`sfn_teach.plot_style`; both are re-exported here, so
``from sfn_teach.plots import plot_spectral_filter`` keeps working.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence

import numpy as np
import torch

from .plot_style import (
    CONTOUR_ALPHA,
    CONTOUR_CMAP,
    CRITICAL_STYLES,
    EXTRA_COLORS,
    NEGATIVE_CURVATURE_COLOR,
    OPTIMIZER_COLORS,
    POSITIVE_CURVATURE_COLOR,
    figure_and_axes,
    label_contour_colorbar,
    legend_below,
    plain_numbers,
)
from .series_plots import (
    convergence_limit,
    direction_convergence,
    filter_curve,
    filter_error_curve,
    filter_relative_error,
    filter_values,
    max_filter_error,
    plot_direction_convergence,
    plot_filter_error,
    plot_filter_on_spectrum,
    plot_spectral_filter,
)
from .toys import (
    Toy,
    Trajectory,
    as_point,
    exact_step_point,
    get_toy,
    hessian,
    run_trajectory,
    series_partial_sum_points,
)

__all__ = [
    "CONTOUR_ALPHA", "CONTOUR_CMAP", "CRITICAL_STYLES", "EXTRA_COLORS",
    "NEGATIVE_CURVATURE_COLOR", "OPTIMIZER_COLORS", "POSITIVE_CURVATURE_COLOR",
    "contour_levels", "convergence_limit", "direction_convergence", "draw_toy",
    "draw_trajectories", "filter_curve", "filter_error_curve", "filter_relative_error",
    "filter_values", "loss_scale", "max_filter_error", "plot_direction_convergence",
    "plot_eigen_directions", "plot_filter_error", "plot_filter_on_spectrum", "plot_losses",
    "plot_paper_toy_figure", "plot_spectral_filter", "plot_toy", "stop_reason", "toy_grid",
]

# --------------------------------------------------------------------------------------------
# Toys and trajectories
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def toy_grid(toy: Toy, resolution: int = 121) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, Y, Z)`` with ``Z = f(X, Y)`` on a ``resolution × resolution`` grid over the box."""
    (x0, x1), (y0, y1) = toy.box
    x = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    y = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(x, y, indexing="xy"))
    with torch.no_grad():
        z = toy.f(grid)
    return grid[0].numpy(), grid[1].numpy(), z.numpy()


def contour_levels(values: np.ndarray, count: int = 21) -> np.ndarray:
    """Contour levels that show the critical points of ``f`` whatever its range.

    If ``f`` takes both signs (a saddle whose value is 0 in every toy here) the levels are
    symmetric about 0 and quadratically spaced, ``±m·t²`` for ``t`` evenly in ``[0, 1]``,
    ``m = max|f|``, so they crowd near the saddle; otherwise they are log-spaced above
    ``min f`` (a valley or a basin shows at every depth).
    """
    low, high = float(np.min(values)), float(np.max(values))
    if low < 0 < high:
        t = np.linspace(-1.0, 1.0, count)
        return max(-low, high) * np.sign(t) * t**2
    span = high - low
    return low + np.geomspace(span * 1e-4, span, count)


def draw_toy(ax, toy: Toy | str, *, levels: int = 21, critical_points: bool = True,
             colorbar: bool = True):
    """Draw the filled contours of ``f`` over ``toy.box`` (levels: :func:`contour_levels`),
    with a colour bar of ``f`` beside ``ax`` when ``colorbar``, and its critical points
    (marked by kind, under any trajectory drawn later). Returns the filled contours."""
    toy = get_toy(toy)
    x, y, z = toy_grid(toy)
    filled = ax.contourf(x, y, z, levels=contour_levels(z, levels), cmap=CONTOUR_CMAP,
                         alpha=CONTOUR_ALPHA)
    ax.contour(x, y, z, levels=filled.levels, colors="0.35", linewidths=0.5)
    if colorbar:
        label_contour_colorbar(ax.figure.colorbar(filled, ax=ax, shrink=0.9, pad=0.02))
    if critical_points:
        for kind, style in CRITICAL_STYLES.items():
            points = [c.point for c in toy.critical_points if c.kind == kind]
            if points:
                px, py = zip(*points)
                ax.scatter(px, py, s=60, zorder=2.5, edgecolor="white", label=kind, **style)
    (x0, x1), (y0, y1) = toy.box
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"{toy.name}: $f = {toy.formula}$", fontsize="medium")
    return filled


def _colors(trajectories):
    """Each trajectory's colour: its optimiser's the first time, then :data:`EXTRA_COLORS`."""
    extra, seen, colors = itertools.cycle(EXTRA_COLORS), set(), []
    for trajectory in trajectories:
        first = trajectory.optimizer in OPTIMIZER_COLORS and trajectory.optimizer not in seen
        colors.append(OPTIMIZER_COLORS[trajectory.optimizer] if first else next(extra))
        seen.add(trajectory.optimizer)
    return colors


def stop_reason(trajectory: Trajectory) -> str | None:
    """Why the run ended early, in a few words: ``None`` if it ran all its steps.

    A run that left the box because ``f`` falls without bound, its last loss the lowest and
    below 0, did what a minimiser should: ``"unbounded below: f → −∞ after n steps"``. A run
    stopped for any other reason keeps the toy runner's words (``"diverged after n steps"``
    for a loss or point that blew up, ``"stopped after n steps"`` for skipped steps).
    """
    if trajectory.stopped is None:
        return None
    words = trajectory.stopped.split(":")[0]
    losses = np.asarray(trajectory.losses, dtype=float)
    if words.startswith("diverged") and losses[-1] < 0 and losses[-1] == losses.min():
        return re.sub(r"^diverged", "unbounded below: f → −∞", words)
    return words


def _legend_label(trajectory: Trajectory) -> str:
    """The label, with :func:`stop_reason` in brackets when the run stopped early."""
    reason = stop_reason(trajectory)
    return trajectory.label if reason is None else f"{trajectory.label} [{reason}]"


def draw_trajectories(ax, trajectories: Sequence[Trajectory]) -> list:
    """Draw each trajectory ``θ_0, θ_1, …`` as a line with markers, and the starts as stars.

    The stars are half transparent and drawn under the lines, so a first step that lands
    close to the start stays visible. Returns the artists added.
    """
    artists = []
    for trajectory, color in zip(trajectories, _colors(trajectories)):
        (line,) = ax.plot(
            trajectory.points[:, 0], trajectory.points[:, 1], "-o", ms=3, lw=1.5,
            color=color, label=_legend_label(trajectory), zorder=3,
        )
        artists.append(line)
    starts = {tuple(t.points[0]) for t in trajectories}
    if starts:
        sx, sy = zip(*starts)
        artists.append(
            ax.scatter(sx, sy, marker="*", s=150, facecolor=(1.0, 0.84, 0.0, 0.6),
                       edgecolor="black", linewidth=0.8, zorder=2.8, label="start")
        )
    return artists


def plot_toy(
    toy: Toy | str,
    trajectories: Sequence[Trajectory] = (),
    ax=None,
    *,
    levels: int = 21,
    critical_points: bool = True,
    legend: bool = True,
    colorbar: bool = True,
):
    """Contours of ``f`` over the toy's box, its critical points and the ``trajectories``.

    Contour levels: :func:`contour_levels`. Critical points are marked by kind (minimum,
    maximum, saddle, monkey saddle); each trajectory is a line through ``θ_0, …, θ_n`` in its
    optimiser's colour, starts are gold stars; a colour bar gives ``f`` and the legend is
    under the axes (:func:`~sfn_teach.plot_style.legend_below`). Returns ``(fig, ax)``.
    """
    fig, ax = figure_and_axes(ax)
    draw_toy(ax, toy, levels=levels, critical_points=critical_points, colorbar=colorbar)
    draw_trajectories(ax, trajectories)
    if legend:
        legend_below(ax)
    return fig, ax


def loss_scale(losses: Sequence[np.ndarray]) -> str:
    """``"symlog"`` if a loss is negative and some ``|f| > 10``; ``"log"`` if none is negative
    and the positive ones span more than two decades (exact zeros are then left out of the
    plot); else ``"linear"``."""
    values = np.concatenate([np.asarray(v, dtype=float).ravel() for v in losses] or [[0.0]])
    positive = values[values > 0]
    if values.min() < 0:
        return "symlog" if np.abs(values).max() > 10 else "linear"
    if positive.size and positive.max() > 100 * positive.min():
        return "log"
    return "linear"


def plot_losses(trajectories: Sequence[Trajectory], ax=None, *, legend: bool = True):
    """The loss ``f(θ_t)`` against the step ``t`` for each trajectory.

    The y axis is symlog when losses go negative and large (saddles unbounded below), log
    when they are positive over several decades (:func:`loss_scale`). Returns ``(fig, ax)``.
    """
    fig, ax = figure_and_axes(ax)
    for trajectory, color in zip(trajectories, _colors(trajectories)):
        ax.plot(trajectory.losses, color=color, lw=1.5, label=_legend_label(trajectory))
    scale = loss_scale([t.losses for t in trajectories])
    if ax.get_yscale() != scale:  # (setting the scale anew would rebuild the ticks)
        ax.set_yscale(scale, **({"linthresh": 1.0} if scale == "symlog" else {}))
        if scale == "symlog":
            plain_numbers(ax.yaxis)
    ax.set_xlabel("step t")
    ax.set_ylabel(r"loss $f(\theta_t)$")
    ax.set_title("loss against step", fontsize="medium")
    if legend and trajectories:
        legend_below(ax)
    return fig, ax


def plot_eigen_directions(toy: Toy | str, point, ax=None, *, length: float | None = None):
    """The eigenvectors ``q_i`` of ``H = ∇²f(point)`` as double arrows ``point ± s_i q_i``.

    ``s_i = length · |h_i| / max_j |h_j|`` (``length`` defaults to a quarter of the box's
    smaller side), red for negative curvature ``h_i < 0`` (where ``f`` curves down and
    Newton's step flips sign), blue for ``h_i ≥ 0``; each arrow is labelled with ``h_i``
    (numbered in ``eigh``'s ascending order) beyond its right-hand head.
    Without ``ax`` the toy's contours are drawn first. Returns ``(fig, ax)``.
    """
    toy = get_toy(toy)
    theta = as_point(point)
    if ax is None:
        fig, ax = plot_toy(toy, legend=False)
    else:
        fig = ax.figure
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian(toy, theta))
    if length is None:
        (x0, x1), (y0, y1) = toy.box
        length = min(x1 - x0, y1 - y0) / 4
    largest = float(eigenvalues.abs().max()) or 1.0
    for index, (h, q) in enumerate(zip(eigenvalues.tolist(), eigenvectors.T), start=1):
        negative = h < 0
        color = NEGATIVE_CURVATURE_COLOR if negative else POSITIVE_CURVATURE_COLOR
        arrow = (length * abs(h) / largest * q).numpy()
        arrow = -arrow if (arrow[0], arrow[1]) < (0, 0) else arrow  # the label's end: rightwards
        name = f"h{'₁₂'[index - 1] if index <= 2 else index}"
        ax.quiver(
            [theta[0], theta[0]], [theta[1], theta[1]], [arrow[0], -arrow[0]],
            [arrow[1], -arrow[1]], color=color, angles="xy", scale_units="xy", scale=1,
            width=0.008, zorder=6,
            label=f"{'negative' if negative else 'positive'} curvature, {name} = {h:.3g}",
        )
        tip = theta.numpy() + arrow
        ax.annotate(  # beyond the arrow's head, on the side it points to: never under an arrow
            f"{name} = {h:.3g}", tip, xytext=(4, 4 if arrow[1] >= 0 else -4),
            textcoords="offset points", ha="left", va="bottom" if arrow[1] >= 0 else "top",
            color=color, fontsize="small", zorder=7, clip_on=True,
            bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8),
        )
    ax.scatter([theta[0]], [theta[1]], color="black", s=20, zorder=7)
    ax.set_title(
        f"eigen-directions of H at ({float(theta[0]):.3g}, {float(theta[1]):.3g})",
        fontsize="medium",
    )
    legend_below(ax)
    return fig, ax


def plot_paper_toy_figure(
    steps: int = 5, num_terms: int = 20, scale: float = 25.0, lr: float = 0.1, ax=None
):
    """The paper's toy figure (docs/method.md §7): ``f = 2x² + 2xy − y²`` from ``(−0.75, −0.75)``.

    Gradient descent (``α = lr``), Newton and exact SFN for ``steps`` steps each, and the
    one-step partial sums ``θ_0 − V^(-½) S_j``, ``j < K = num_terms``, of the undamped series
    at ``V = scale`` (:func:`~sfn_teach.toys.series_partial_sum_points`) converging to the
    exact SFN step ``θ_0 − |H|⁻¹g`` (a ring). Newton lands on the saddle; SFN moves away.
    Returns ``(fig, ax)``.
    """
    toy = get_toy("paper")
    trajectories = [
        run_trajectory(toy, toy.start, "gd", steps, lr=lr),
        run_trajectory(toy, toy.start, "newton", steps),
        run_trajectory(toy, toy.start, "exact_sfn", steps),
    ]
    fig, ax = plot_toy(toy, trajectories, ax, legend=False)
    sums = series_partial_sum_points(toy, toy.start, num_terms, scale)
    ax.plot(
        sums[:, 0], sums[:, 1], ":s", ms=3, color=OPTIMIZER_COLORS["series_sfn"],
        label=f"series partial sums, V = {scale:g}, K ≤ {num_terms}",
    )
    exact = exact_step_point(toy, toy.start)
    ax.scatter(
        [exact[0]], [exact[1]], s=140, facecolor="none", edgecolor="black", lw=1.5, zorder=6,
        label="one exact SFN step",
    )
    ax.set_title("the paper's toy: Newton is attracted to the saddle, SFN is not",
                 fontsize="medium")
    legend_below(ax)
    return fig, ax


