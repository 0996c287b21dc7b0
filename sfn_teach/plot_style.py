"""What every figure of the course shares: the colours, a new figure, tick labels, arguments.

Used by :mod:`sfn_teach.plots` (toys, trajectories, losses), :mod:`sfn_teach.series_plots`
(the series' filter and its convergence) and the live panels of :mod:`sfn_teach.widgets`,
so that an optimiser or a critical point looks the same in each.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib import ticker, transforms
from matplotlib.figure import Figure

#: one colour per optimiser, the same in every figure
OPTIMIZER_COLORS = {
    "gd": "tab:blue",
    "momentum": "tab:cyan",
    "adam": "tab:olive",
    "newton": "tab:red",
    "exact_sfn": "tab:green",
    "series_sfn": "tab:purple",
}

#: colours for a second run of the same optimiser (none of them is an optimiser's)
EXTRA_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:gray", "black")

#: marker and colour of each kind of critical point
CRITICAL_STYLES = {
    "minimum": dict(marker="o", color="tab:green"),
    "maximum": dict(marker="^", color="tab:red"),
    "saddle": dict(marker="X", color="black"),
    "monkey saddle": dict(marker="*", color="black"),
}

NEGATIVE_CURVATURE_COLOR, POSITIVE_CURVATURE_COLOR = "tab:red", "tab:blue"

#: the colour map of the contour plots (blue low, red high), drawn at :data:`CONTOUR_ALPHA`
CONTOUR_CMAP, CONTOUR_ALPHA = "RdBu_r", 0.35


def figure_and_axes(ax, figsize=(5.5, 4.5)):
    """``(ax.figure, ax)``, or a new figure (constrained layout, not registered with pyplot)
    with one axes of size ``figsize``."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def as_int_list(name: str, values) -> list[int]:
    """``values`` (an int or a non-empty sequence of ints ≥ 1) as a list; a ValueError names a
    bad value, a TypeError a bad container."""
    values = [values] if isinstance(values, int) and not isinstance(values, bool) else values
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be an int or a non-empty sequence of ints, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return list(values)


def plain_numbers(axis, digits: int = 6):
    """Plain tick labels (``1e+06``, ``-100``) with at most ``digits`` significant digits on
    ``axis``: cheaper to draw than mathtext, same meaning."""
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:.{digits}g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def legend_below(ax, columns: int | None = None):
    """``ax``'s legend under its x label (centred, no frame), where it covers no curve and no
    marker; constrained layout makes room for it. ``columns`` defaults to two, or one when a
    label is longer than 32 characters (a run's stop reason), so the legend never grows wider
    than the axes' figure can give."""
    if columns is None:
        labels = ax.get_legend_handles_labels()[1]
        columns = 1 if any(len(label) > 32 for label in labels) else 2
    below = ax.transAxes + transforms.ScaledTranslation(0, -32 / 72, ax.figure.dpi_scale_trans)
    return ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, 0),
                     bbox_transform=below, ncol=columns, frameon=False)


def label_contour_colorbar(bar):
    """Label the colour bar ``bar`` of a toy's filled contours: ``f(x, y)``, a tick at every
    fourth level, small plain numbers of three digits."""
    bar.set_label("f(x, y)", fontsize="small")
    bar.set_ticks(bar.mappable.levels[::4])
    bar.ax.tick_params(labelsize="x-small")
    plain_numbers(bar.ax.yaxis, digits=3)
