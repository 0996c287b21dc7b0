"""Interactive panels (ipywidgets 8) for the notebooks: a saddle explorer and a filter explorer.

Each panel is a class exposing

- ``widget``: the top-level box to display (``display(panel.widget)``, or just ``panel``);
- its controls as attributes (set ``panel.num_terms.value = 20`` in code and it redraws, as
  a slider dragged in the browser would);
- ``figures``: two bqplot figures side by side (``figure_box``; :mod:`sfn_teach.live_plot`),
  drawn by the browser: a change sends only the new data of the curves (a few kilobytes),
  so the panels follow a slider while it is dragged (``continuous_update=True``);
- ``readout``: an ``HTML`` widget whose ``value`` is a short text about the figure (final
  points and losses, or the filter's largest error);
- ``message``: an ``HTML`` widget with validation messages, empty when all is well;
- ``update()``: recompute and redraw from the current control values;
- ``static_png()``: the figure as it is now, drawn by matplotlib (:mod:`sfn_teach.plots`).
  Displaying a panel puts this PNG into the cell's output next to the widget, so an
  executed notebook shows the figure where no kernel runs (a repository viewer, HTML).

No exception escapes a callback: bad input (a negative λ typed into the box, ``K < 2r + 1``)
shows a message in ``message`` and keeps the last good figure; the panel keeps working.

The parts every panel shares (control styles, messages, :class:`DampingControl`, the box
that carries the static PNG) are in :mod:`sfn_teach.widget_parts`; :class:`DampingControl`
and :class:`~sfn_teach.live_plot.LivePlot` are re-exported here. Nothing in the library
imports this module; notebooks do.
"""

from __future__ import annotations

import contextlib
import html

import bqplot
import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from .live_plot import (
    CRITICAL_MARKERS,
    LOSS_AXES,
    LivePlot,
    add_critical_points,
    colorbar_png,
    contour_png,
    css_color,
    show_critical_points,
    shown_loss,
)
from .plot_style import CRITICAL_STYLES, OPTIMIZER_COLORS
from .plots import (
    convergence_limit,
    filter_curve,
    filter_error_curve,
    loss_scale,
    max_filter_error,
    plot_filter_error,
    plot_losses,
    plot_spectral_filter,
    plot_toy,
    stop_reason,
)
from .series import KINDS
from .toys import OPTIMIZERS, TOYS, get_toy, run_trajectories, series_scale_limit
from .widget_parts import (
    FOLLOWED,
    SLIDER,
    DampingControl,
    PanelBox,
    check_damping,
    check_order,
    error_html,
    figure_png,
    one_at_a_time,
    warning_html,
)

__all__ = ["FIRST_ORDER", "DampingControl", "FilterExplorer", "LivePlot", "SaddleExplorer"]

#: the optimisers that use the learning-rate control (the curvature ones step with α = 1 and
#: use the damping λ)
FIRST_ORDER = ("gd", "momentum", "adam")


class _Panel:
    """What both panels share: two live plots side by side, the series controls ``K``, ``λ``,
    ``V``, ``r``, the readout, messages, and updates that never raise."""

    def __init__(self, plots: tuple[LivePlot, LivePlot], num_terms: int, max_terms: int,
                 damping: float, scale: float, max_scale_exponent: int,
                 acceleration_order: int):
        self.plots = plots
        self.figures = tuple(plot.figure for plot in plots)
        self.figure_box = widgets.HBox(list(self.figures))
        self.readout = widgets.HTML()
        self.message = widgets.HTML()
        self._held = False
        self.num_terms = widgets.IntSlider(value=num_terms, min=1, max=max_terms,
                                           description="K", **FOLLOWED)
        self.damping = DampingControl(damping)
        self.scale = widgets.FloatLogSlider(value=scale, base=10, min=-1,
                                            max=max_scale_exponent, description="V",
                                            **FOLLOWED)
        self.acceleration_order = widgets.IntSlider(
            value=acceleration_order, min=0, max=10, description="r", **FOLLOWED
        )
        # CSS classes by which the browser tests (tests/test_browser.py) find the parts
        for part, name in [(self.num_terms, "k-slider"), (self.damping.box, "damping"),
                           (self.damping.text, "damping-text"), (self.message, "message"),
                           (self.figure_box, "figure"), (self.readout, "readout")]:
            part.add_class(f"sfn-{name}")

    def _box(self, *rows) -> PanelBox:
        box = PanelBox([*rows, self.message, self.figure_box, self.readout], self.static_png)
        box.add_class("sfn-panel")  # how the browser tests find an explorer
        return box

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _observe(self, *controls):
        for control in controls:
            control.observe(lambda _change: self.update(), names="value")

    @contextlib.contextmanager
    def hold(self):
        """Change several controls at once and redraw once, at the end of the block."""
        self._held = True
        try:
            yield self
        finally:
            self._held = False
        self.update()

    @one_at_a_time
    def update(self):
        """Recompute and redraw; any error becomes a message and the last figure stays."""
        if self._held:
            return
        try:
            warning = self._redraw()
        except Exception as error:  # noqa: BLE001 - a callback must never raise
            self.message.value = error_html(f"{type(error).__name__}: {error}")
            return
        self.message.value = warning_html(warning) if warning else ""

    def _redraw(self) -> str | None:  # pragma: no cover - abstract
        """Validate the controls, compute, then replace the curves' data and set the readout
        (nothing is drawn before everything is computed); return a warning or ``None``."""
        raise NotImplementedError

    def _static_figure(self) -> Figure:  # pragma: no cover - abstract
        """The figure as the live plots show it now, drawn by :mod:`sfn_teach.plots`."""
        raise NotImplementedError

    def static_png(self) -> bytes:
        """The figure as it is now, as PNG (matplotlib; what an exported notebook shows)."""
        return figure_png(self._static_figure())


class SaddleExplorer(_Panel):
    """Optimisers on a 2-D toy: trajectories over the contours, and the loss against the step.

    Controls: ``problem`` (a key of :data:`~sfn_teach.toys.TOYS`), ``start_x``, ``start_y``
    (``θ_0``), ``optimizers`` (a dict of checkboxes, one per key of
    :data:`~sfn_teach.toys.OPTIMIZERS`), ``num_terms`` (``K``, 1–50), ``damping``
    (:class:`DampingControl`, ``λ``, used by Newton, exact and series SFN: ``(H + λI)⁻¹g``,
    ``(|H| + λI)⁻¹g``), ``scale`` (``V``, log-slider 0.1–10⁶), ``acceleration_order``
    (``r``, needs ``K ≥ 2r + 1``), ``lr`` (``α`` of gradient descent, momentum and Adam; the
    curvature optimisers step with ``α = 1``) and ``steps`` (≤ 200).

    Choosing a problem resets the start, ``V`` and ``lr`` to the toy's defaults. With ``V``
    below ``max h²/2`` at the start the series diverges (``|1 − h²/V| > 1`` for the steepest
    eigenvalue): ``message`` warns, and the run shows the divergence. The trajectories come
    from :func:`~sfn_teach.toys.run_trajectories` (closed forms, the real optimisers'
    trajectories to rounding) and are cached by their inputs: moving ``K`` re-runs the
    series optimiser only.

    After each update ``trajectories`` maps each ticked optimiser to its
    :class:`~sfn_teach.toys.Trajectory`. The left plot draws the trajectories over the toy's
    contours (an image, with its colour bar beside it), its critical points and the start;
    the right one the loss against the step, titled by the settings. The readout is the
    key to both: each run's colour, final point and loss, and why it stopped early
    (:func:`~sfn_teach.plots.stop_reason`), then the markers.
    """

    def __init__(
        self,
        problem: str = "paper",
        optimizers=("gd", "newton", "exact_sfn", "series_sfn"),
        num_terms: int = 10,
        damping: float = 0.0,
        acceleration_order: int = 0,
        steps: int = 20,
    ):
        toy = get_toy(problem)
        plots = (LivePlot("x", "y"), LivePlot("step t", LOSS_AXES["linear"]))
        super().__init__(plots, num_terms, 50, damping, toy.scale, 6, acceleration_order)
        self.problem = widgets.Dropdown(
            options=[(t.name, key) for key, t in TOYS.items()], value=toy.key,
            description="problem",
        )
        self.start_x = widgets.FloatText(value=toy.start[0], description="x₀", **SLIDER)
        self.start_y = widgets.FloatText(value=toy.start[1], description="y₀", **SLIDER)
        self.optimizers = {
            key: widgets.Checkbox(value=key in optimizers, description=spec.label, indent=False)
            for key, spec in OPTIMIZERS.items()
        }
        self.lr = widgets.FloatLogSlider(value=toy.lr, base=10, min=-4, max=0,
                                         description="lr (GD, momentum, Adam)", **FOLLOWED)
        self.steps = widgets.IntSlider(value=steps, min=1, max=200, description="steps",
                                       **FOLLOWED)
        self._add_curves()
        self._colorbar = widgets.Image(format="png")
        self.figure_box.children = (self.figures[0], self._colorbar, self.figures[1])
        self.widget = self._box(
            widgets.HBox([self.problem, self.start_x, self.start_y]),
            widgets.HBox(list(self.optimizers.values())),
            widgets.HBox([self.num_terms, self.acceleration_order, self.scale]),
            self.damping.box,
            widgets.HBox([self.lr, self.steps]),
        )
        self._cache: dict = {}
        self._drawn_problem = None
        self.problem.observe(self._on_problem, names="value")
        self._observe(
            self.start_x, self.start_y, self.num_terms, self.damping.text, self.scale,
            self.acceleration_order, self.lr, self.steps, *self.optimizers.values(),
        )
        self.update()

    def _add_curves(self):
        """The background, one scatter per kind of critical point, the start (under the
        paths, half transparent, so a first step beside it stays visible), and one line per
        optimiser on each plot. No legend covers the plots: the readout is the key."""
        toy_plot, loss_plot = self.plots
        self._background = bqplot.Image(image=widgets.Image(format="png"),
                                        scales={"x": toy_plot.x, "y": toy_plot.y})
        toy_plot.figure.marks = [self._background]
        add_critical_points(toy_plot)
        toy_plot.curve("start", bqplot.Scatter, marker="diamond", colors=["gold"],
                       stroke="black", default_size=110, opacities=[0.6])
        for key in OPTIMIZERS:
            style = dict(colors=[css_color(OPTIMIZER_COLORS[key])], stroke_width=1.5)
            toy_plot.curve(key, marker="circle", marker_size=12, **style)
            loss_plot.curve(key, **style)

    def _on_problem(self, change):
        toy = TOYS[change["new"]]
        with self.hold():
            self.start_x.value, self.start_y.value = toy.start
            self.scale.value = toy.scale
            self.lr.value = toy.lr

    def _hyperparameters(self, optimizer: str) -> dict:
        if optimizer in FIRST_ORDER:
            return dict(lr=self.lr.value)
        if optimizer == "series_sfn":
            return dict(
                num_terms=self.num_terms.value, damping=self.damping.value,
                scale=self.scale.value, acceleration_order=self.acceleration_order.value,
            )
        return dict(damping=self.damping.value)

    def _settings(self) -> str:
        return (f"K = {self.num_terms.value}, r = {self.acceleration_order.value}, "
                f"V = {self.scale.value:.3g}, λ = {self.damping.value:.3g}, "
                f"lr = {self.lr.value:.3g}")

    def _check(self):
        """Refuse what the optimisers would refuse, with a message a student can act on."""
        check_damping(self.damping.value)
        if self.optimizers["series_sfn"].value:
            check_order(self.num_terms.value, self.acceleration_order.value)

    def _run(self, chosen, start):
        """The runs of the ``chosen`` optimisers: from the cache where their inputs did not
        change, the others together in one :func:`~sfn_teach.toys.run_trajectories`."""
        keys = {key: (self.problem.value, start, key, self.steps.value,
                      tuple(sorted(self._hyperparameters(key).items()))) for key in chosen}
        missing = [key for key in chosen if keys[key] not in self._cache]
        if missing:
            runs = run_trajectories(self.problem.value, start, self.steps.value,
                                    {key: self._hyperparameters(key) for key in missing})
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache.update({keys[key]: runs[key] for key in missing})
        return {key: self._cache[keys[key]] for key in chosen}

    def _redraw(self):
        self._check()
        start = (self.start_x.value, self.start_y.value)
        chosen = [key for key, box in self.optimizers.items() if box.value]
        self.trajectories = self._run(chosen, start)
        warning = self._scale_warning(start) if "series_sfn" in chosen else None
        toy_plot, loss_plot = self.plots
        if self._drawn_problem != self.problem.value:
            self._draw_problem()
        scale = loss_scale([t.losses for t in self.trajectories.values()])
        loss_plot.y_axis.label = LOSS_AXES[scale]
        for key in OPTIMIZERS:
            run = self.trajectories.get(key)
            toy_plot.show(key, *((run.points[:, 0], run.points[:, 1]) if run else ()))
            loss_plot.show(key, *((np.arange(len(run.losses)), shown_loss(run.losses, scale))
                                  if run else ()))
        toy_plot.show("start", *([[x] for x in start] if chosen else ()))
        loss_plot.figure.title = self._settings()
        self.readout.value = "<br>".join(
            [self._key_line(key, run) for key, run in self.trajectories.items()]
            or ["no optimiser chosen"]
        ) + "<br>" + self._marker_key
        return warning

    @staticmethod
    def _key_line(key, run) -> str:
        """The readout's line for one run: its colour (the key to both plots), label, final
        point and loss, and why it stopped early (:func:`~sfn_teach.plots.stop_reason`)."""
        reason = stop_reason(run)
        return (f'<span style="color:{css_color(OPTIMIZER_COLORS[key])}">━●</span> '
                f"<b>{html.escape(run.label)}</b>: θ = ({run.final_point[0]:.4g}, "
                f"{run.final_point[1]:.4g}), f = {run.final_loss:.4g}"
                + (f" — {html.escape(reason)}" if reason else ""))

    def _draw_problem(self):
        """What changes only with the problem: the contours (an image), the axes' ranges,
        the critical points and the title."""
        toy, (toy_plot, _) = get_toy(self.problem.value), self.plots
        (x0, x1), (y0, y1) = toy.box
        with self._background.hold_sync():
            self._background.image.value = contour_png(toy)
            self._background.x, self._background.y = [x0, x1], [y0, y1]
        toy_plot.x.min, toy_plot.x.max, toy_plot.y.min, toy_plot.y.max = x0, x1, y0, y1
        show_critical_points(toy_plot, toy)
        self._colorbar.value = colorbar_png(toy)
        kinds = dict.fromkeys(c.kind for c in toy.critical_points)
        self._marker_key = "<small>" + " · ".join(
            ['<span style="color:#b8860b">◆</span> start']
            + [f'<span style="color:{css_color(CRITICAL_STYLES[kind]["color"])}">'
               f"{CRITICAL_MARKERS[kind][1]}</span> {kind}" for kind in kinds]
        ) + "</small>"
        toy_plot.figure.title = f"{toy.name}: f = {toy.formula}"
        self._drawn_problem = toy.key

    def _static_figure(self) -> Figure:
        figure = Figure(figsize=(11, 5.8), layout="constrained")
        ax_toy, ax_loss = figure.subplots(1, 2)
        runs = list(self.trajectories.values())
        plot_toy(self.problem.value, runs, ax_toy)
        plot_losses(runs, ax_loss)
        ax_loss.set_title(self._settings(), fontsize="small")
        return figure

    def _scale_warning(self, start) -> str | None:
        limit = series_scale_limit(self.problem.value, start)
        if self.scale.value >= limit:
            return None
        return (
            f"V = {self.scale.value:.3g} is below max h²/2 = {limit:.3g} at the start: the "
            f"series diverges there (|1 − h²/V| > 1 for the steepest eigenvalue, so its terms "
            f"grow with K). It runs anyway, so you can watch it; raise V above {limit:.3g} "
            "to make it converge."
        )


class FilterExplorer(_Panel):
    """The spectral filter ``φ_K(h)`` against its target ``1/(|h| + λ)``, and its error.

    Controls: ``num_terms`` (``K``, 1–200), ``damping`` (:class:`DampingControl`, ``λ``),
    ``scale`` (``V``, log-slider 0.1–10⁴), ``acceleration_order`` (``r``, needs
    ``K ≥ 2r + 1``) and ``kind`` (``"damped"``: target ``1/(|h| + λ)``; ``"quasi-damped"``:
    ``(h² + λ)^(-½)``). The readout gives the largest relative error over
    ``√(2V)/10 ≤ |h| ≤ √(2V)`` (:func:`~sfn_teach.plots.max_filter_error`), also kept as
    the number ``max_error``, and then the key to the curves (no legend covers them). The
    curves are :func:`~sfn_teach.plots.filter_curve`'s and
    :func:`~sfn_teach.plots.filter_error_curve`'s; dashed lines mark ``|h| = √(2V)``.

    The scalar filter ``φ_K`` has no Wynn acceleration (the ε-algorithm works on vectors):
    for ``r ≥ 1`` the curves are the accelerated series on ``H = diag(h)``, ``g = 1``, with
    the plotted points as the spectrum (:func:`~sfn_teach.plots.filter_values`).
    """

    def __init__(
        self,
        num_terms: int = 5,
        scale: float = 25.0,
        damping: float = 0.0,
        acceleration_order: int = 0,
        kind: str = "damped",
    ):
        plots = (LivePlot("eigenvalue h", "multiplier of the component along q"),
                 LivePlot("|h|", "relative error of the filter", bqplot.LogScale(),
                          bqplot.LogScale(min=1e-16, max=1e3)))
        super().__init__(plots, num_terms, 200, damping, scale, 4, acceleration_order)
        self.kind = widgets.Dropdown(options=KINDS, value=kind, description="kind")
        for plot in plots:
            plot.curve("filter", colors=[css_color("tab:blue")], stroke_width=1.5)
            plot.curve("limit", colors=["black"], stroke_width=1, line_style="dashed")
        plots[0].curve("target", colors=["#555555"], stroke_width=1)
        plots[0].curve("-limit", colors=["black"], stroke_width=1, line_style="dashed")
        self.widget = self._box(
            widgets.HBox([self.num_terms, self.acceleration_order, self.scale, self.kind]),
            self.damping.box,
        )
        self._observe(self.num_terms, self.damping.text, self.scale, self.acceleration_order,
                      self.kind)
        self.update()

    def _settings(self):
        return (self.num_terms.value, self.scale.value, self.damping.value, self.kind.value)

    def _redraw(self):
        (terms, scale, damping, kind), order = self._settings(), self.acceleration_order.value
        check_damping(damping)
        check_order(terms, order)
        max_error = max_filter_error(terms, scale, damping, kind, order)
        h, phi, target, top = filter_curve(terms, scale, damping, kind,
                                           acceleration_order=order)
        magnitude, error = filter_error_curve(terms, scale, damping, kind,
                                              acceleration_order=order)
        self.max_error = max_error
        filter_plot, error_plot = self.plots
        limit = convergence_limit(scale)
        filter_plot.x.min, filter_plot.x.max = float(h[0]), float(h[-1])
        filter_plot.y.min, filter_plot.y.max = -0.15 * top, 1.25 * top
        filter_plot.show("filter", h, phi)
        filter_plot.show("target", h, np.clip(target, None, 10 * top))
        error_plot.x.min, error_plot.x.max = float(magnitude[0]), float(magnitude[-1])
        error_plot.show("filter", magnitude, error)
        for plot, sign, low, high in [(filter_plot, 1, -0.15 * top, 1.25 * top),
                                      (filter_plot, -1, -0.15 * top, 1.25 * top),
                                      (error_plot, 1, 1e-16, 1e3)]:
            plot.show("limit" if sign > 0 else "-limit", [sign * limit] * 2, [low, high])
        filter_plot.figure.title = f"spectral filter: V = {scale:g}, λ = {damping:g} ({kind})"
        error_plot.figure.title = f"filter error: V = {scale:g}, λ = {damping:g} ({kind})"
        filter_name = "φ_K" if order == 0 else f"φ_K with Wynn ε, r = {order}"
        self.readout.value = (
            f"K = {terms}, r = {order}: max relative error over {limit / 10:.3g} ≤ |h| ≤ "
            f"√(2V) = {limit:.3g}: <b>{max_error:.3g}</b><br><small>"
            f'<span style="color:{css_color("tab:blue")}">━</span> {filter_name}, K = {terms} · '
            f'<span style="color:#555555">━</span> target · ╌ |h| = √(2V)</small>'
        )
        return None

    def _static_figure(self) -> Figure:
        (terms, scale, damping, kind), order = self._settings(), self.acceleration_order.value
        figure = Figure(figsize=(10, 4.2), layout="constrained")
        ax_filter, ax_error = figure.subplots(1, 2)
        plot_spectral_filter(terms, scale, damping, kind, ax=ax_filter, acceleration_order=order)
        plot_filter_error(terms, scale, damping, kind, ax=ax_error, acceleration_order=order)
        return figure
