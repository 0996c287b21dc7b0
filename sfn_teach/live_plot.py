"""Figures drawn by the browser (bqplot) for the explorers of :mod:`sfn_teach.widgets`.

A change sends only the new data of the curves (a few kilobytes), so a panel follows a slider
while it is dragged. What does not change with the data — a toy's filled contours and their
colour bar — is drawn once by matplotlib (:mod:`sfn_teach.plots`) and sent as PNG.
"""

from __future__ import annotations

import bqplot
import ipywidgets as widgets
import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from .plot_style import CRITICAL_STYLES, label_contour_colorbar
from .plots import draw_toy
from .toys import Toy
from .widget_parts import figure_png

#: bqplot's marker for each kind of critical point (matplotlib's are in
#: :data:`~sfn_teach.plot_style.CRITICAL_STYLES`), and the symbol a key in HTML shows for it
CRITICAL_MARKERS = {"minimum": ("circle", "●"), "maximum": ("triangle-up", "▲"),
                    "saddle": ("cross", "✚"), "monkey saddle": ("diamond", "◆")}

#: the label of the loss plot's y axis for each :func:`~sfn_teach.plots.loss_scale`: a linear
#: axis of ``log₁₀ f`` for losses over several decades, of ``sign(f)·log₁₀(1 + |f|)`` for
#: losses falling without bound (as matplotlib's "symlog" with a linear part of width 1)
LOSS_AXES = {"linear": "loss f(θ_t)", "log": "log₁₀ f(θ_t)",
             "symlog": "sign(f)·log₁₀(1 + |f(θ_t)|)"}


def shown_loss(losses: np.ndarray, scale: str) -> np.ndarray:
    """The losses as the loss plot's linear y axis shows them for ``scale`` (see
    :data:`LOSS_AXES`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale == "log":
            return np.log10(losses)
        if scale == "symlog":
            return np.sign(losses) * np.log10(1 + np.abs(losses))
    return losses


def css_color(color) -> str:
    """A matplotlib colour as ``#rrggbb``, as bqplot and HTML take it."""
    return to_hex(color)


class LivePlot:
    """One bqplot figure: an x and a y scale with their axes, and curves by name.

    :meth:`curve` makes a curve (a ``bqplot.Lines`` or ``bqplot.Scatter``) once;
    :meth:`show` replaces its data, which is all a change sends to the browser. Scales
    without limits follow the data shown. The y label sits 52 px left of the axis, clear of
    tick labels up to six characters wide. There is no legend over the data: a panel's
    readout is its key.
    """

    def __init__(self, x_label: str, y_label: str, x_scale=None, y_scale=None):
        self.x = x_scale or bqplot.LinearScale()
        self.y = y_scale or bqplot.LinearScale()
        self.y_axis = bqplot.Axis(scale=self.y, side="left", label=y_label,
                                  grid_lines="none", label_offset="52px")
        self.figure = bqplot.Figure(
            axes=[bqplot.Axis(scale=self.x, side="bottom", label=x_label, grid_lines="none"),
                  self.y_axis],
            fig_margin=dict(top=40, bottom=45, left=72, right=15), animation_duration=0,
            title_style={"font-size": "13px"},
            layout=widgets.Layout(width="490px", height="380px"),
        )
        self.curves: dict[str, bqplot.Mark] = {}

    def curve(self, name: str, mark=bqplot.Lines, **style) -> bqplot.Mark:
        """Add the curve ``name`` (empty and hidden until :meth:`show`), drawn in ``style``."""
        curve = mark(x=[0.0], y=[0.0], scales={"x": self.x, "y": self.y}, visible=False,
                     **style)
        self.curves[name] = curve
        self.figure.marks = [*self.figure.marks, curve]
        return curve

    def show(self, name: str, x=None, y=None):
        """Draw the points ``(x, y)`` (non-finite ones left out) as curve ``name``; without
        data, hide it."""
        curve = self.curves[name]
        if x is None:
            curve.visible = False
            return
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        finite = np.isfinite(x) & np.isfinite(y)
        with curve.hold_sync():
            curve.x, curve.y, curve.visible = x[finite], y[finite], bool(finite.any())


def contour_png(toy: Toy, pixels: int = 480) -> bytes:
    """The toy's filled contours over exactly its box, no axes: the background of a plot."""
    figure = Figure(figsize=(pixels / 100, pixels / 100), dpi=100, layout="none")
    ax = figure.add_axes((0, 0, 1, 1))
    draw_toy(ax, toy, critical_points=False, colorbar=False)
    ax.set_axis_off()
    return figure_png(figure)


def colorbar_png(toy: Toy, height: int = 380) -> bytes:
    """The colour bar of :func:`contour_png`'s contours, ``height`` pixels tall, to stand
    beside it (the contours are drawn on a hidden axes to get exactly their colours)."""
    figure = Figure(figsize=(0.95, height / 100), dpi=100, layout="none")
    hidden = figure.add_axes((0, 0, 0.01, 0.01))
    filled = draw_toy(hidden, toy, critical_points=False, colorbar=False)
    hidden.set_visible(False)
    label_contour_colorbar(figure.colorbar(filled, cax=figure.add_axes((0.08, 0.12, 0.2, 0.78))))
    return figure_png(figure)


def add_critical_points(plot: LivePlot):
    """One hidden scatter per kind of critical point on ``plot``, in its matplotlib style."""
    for kind, style in CRITICAL_STYLES.items():
        plot.curve(kind, bqplot.Scatter, marker=CRITICAL_MARKERS[kind][0],
                   colors=[css_color(style["color"])], stroke="white", default_size=70)


def show_critical_points(plot: LivePlot, toy: Toy):
    """Show ``toy``'s critical points on the scatters of :func:`add_critical_points`."""
    for kind in CRITICAL_STYLES:
        points = np.array([c.point for c in toy.critical_points if c.kind == kind])
        plot.show(kind, *((points[:, 0], points[:, 1]) if len(points) else ()))
