"""Interactive panels (ipywidgets 8) for the notebooks: a saddle explorer and a filter explorer.

Each panel is a class exposing

- ``widget``: the top-level box to display (``display(panel.widget)``, or just ``panel``);
- its controls as attributes (set ``panel.num_terms.value = 20`` in code and it redraws, as
  a slider dragged in the browser would);
- ``figure``: the current :class:`matplotlib.figure.Figure`, rendered into ``image`` (an
  ``ipywidgets.Image`` holding PNG bytes, which shows in JupyterLab and in executed
  notebooks alike);
- ``readout``: an ``HTML`` widget whose ``value`` is a short text about the figure (final
  points and losses, or the filter's largest error);
- ``message``: an ``HTML`` widget with validation messages, empty when all is well;
- ``update()``: recompute and redraw from the current control values.

No exception escapes a callback: bad input (a negative λ typed into the box, ``K < 2r + 1``)
shows a message in ``message`` and keeps the last good figure; the panel keeps working. The
sliders use ``continuous_update=False``, so a drag redraws once, on release.

Nothing in the library imports this module; notebooks do.
"""

from __future__ import annotations

import contextlib
import html
import io
import math

import ipywidgets as widgets
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from .plots import (
    OPTIMIZER_COLORS,
    convergence_limit,
    draw_toy,
    draw_trajectories,
    max_filter_error,
    plot_filter_error,
    plot_losses,
    plot_spectral_filter,
)
from .series import KINDS
from .toys import OPTIMIZERS, TOYS, get_toy, run_trajectory, series_scale_limit

#: the optimisers that use the learning-rate control (the curvature ones step with α = 1 and
#: use the damping λ)
FIRST_ORDER = ("gd", "momentum", "adam")

_SLIDER = dict(continuous_update=False, style={"description_width": "initial"})


def _png(canvas: FigureCanvasAgg) -> bytes:
    """The canvas as it was last drawn, as PNG (fast compression: ~10 ms, not ~17 ms)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def _error_html(text: str) -> str:
    return f'<span style="color:#b00020">❌ {html.escape(text)}</span>'


def _warning_html(text: str) -> str:
    return f'<span style="color:#8a5a00">⚠️ {html.escape(text)}</span>'


def _check_damping(damping: float):
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(
            f"λ must be a finite number ≥ 0 (damping adds λ to every |h|), got {damping:g}"
        )


def _check_order(num_terms: int, order: int):
    if num_terms < 2 * order + 1:
        raise ValueError(
            f"r = {order} needs K ≥ 2r + 1 = {2 * order + 1} (Wynn's ε-algorithm of order r "
            f"uses the last 2r + 1 partial sums), got K = {num_terms}: raise K or lower r"
        )


def _remove_lines(ax):
    """Remove the lines of ``ax`` and forget their data limits.

    Cheaper than ``ax.clear()``, which throws away the tick objects: building them again
    took most of a redraw.
    """
    for line in list(ax.lines):
        line.remove()
    ax.relim()


#: titles at a fixed height: matplotlib otherwise measures every tick label to place them
_FAST_TITLES = {"axes.titley": 1.0}


class DampingControl:
    """The damping ``λ ≥ 0`` as a log-slider, a "λ = 0" box and a text box, which always agree.

    ``text`` holds the value in force (:attr:`value`); the slider and the box write into it,
    and every value in force is shown by all three: the box is ticked exactly when λ = 0, and
    the slider then is disabled and shows no number (a log-slider has no 0); otherwise the
    slider shows λ, its range (``[1e-6, 10]`` at first) growing to reach a typed value.
    Unticking the box brings back the slider's value. Observers of ``text`` see every change.
    A typed negative value stays in ``text``, where the panel refuses it with a message; the
    slider and the box keep showing the last good value, which is still what is drawn.
    """

    def __init__(self, value: float = 0.0):
        self.slider = widgets.FloatLogSlider(
            value=1e-3, base=10, min=-6, max=1, description="λ", readout_format=".1e",
            **_SLIDER,
        )
        self.zero = widgets.Checkbox(description="λ = 0", indent=False)
        self.text = widgets.FloatText(value=value, description="λ (type)", **_SLIDER)
        self.box = widgets.HBox([self.slider, self.zero, self.text])
        self._syncing = False
        self._show(value)
        self.slider.observe(self._from_slider, names="value")
        self.zero.observe(self._from_zero, names="value")
        self.text.observe(lambda change: self._show(change["new"]), names="value")

    @property
    def value(self) -> float:
        """The damping ``λ`` in force (whatever was typed, possibly invalid)."""
        return self.text.value

    def _from_slider(self, change):
        if not self._syncing:
            self.text.value = change["new"]

    def _from_zero(self, change):
        if not self._syncing:
            self.text.value = 0.0 if change["new"] else self.slider.value

    def _show(self, value: float):
        """Make the box and the slider show ``value`` (a refused value leaves them as they are)."""
        if not (math.isfinite(value) and value >= 0):
            return
        self._syncing = True
        try:
            self.zero.value = value == 0
            self.slider.disabled = value == 0
            self.slider.readout = value > 0
            if value > 0:
                exponent = math.log10(value)
                self.slider.min = min(self.slider.min, math.floor(exponent))
                self.slider.max = max(self.slider.max, math.ceil(exponent))
                self.slider.value = value
        finally:
            self._syncing = False


class _Panel:
    """What both panels share: a two-panel figure shown as an image, the series controls
    ``K``, ``λ``, ``V``, ``r``, the readout, messages, and updates that never raise."""

    def __init__(self, dpi: int, num_terms: int, max_terms: int, damping: float, scale: float,
                 max_scale_exponent: int, acceleration_order: int):
        self.figure = Figure(figsize=(10, 4.2), dpi=dpi)
        self.figure.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.92, wspace=0.25)
        self.axes = self.figure.subplots(1, 2)
        self._canvas = FigureCanvasAgg(self.figure)
        self.image = widgets.Image(format="png")
        self.readout = widgets.HTML()
        self.message = widgets.HTML()
        self._held = False
        self.num_terms = widgets.IntSlider(value=num_terms, min=1, max=max_terms,
                                           description="K", **_SLIDER)
        self.damping = DampingControl(damping)
        self.scale = widgets.FloatLogSlider(value=scale, base=10, min=-1,
                                            max=max_scale_exponent, description="V", **_SLIDER)
        self.acceleration_order = widgets.IntSlider(
            value=acceleration_order, min=0, max=10, description="r", **_SLIDER
        )
        # CSS classes by which the browser tests (tests/test_browser.py) find the parts
        for part, name in [(self.num_terms, "k-slider"), (self.damping.box, "damping"),
                           (self.damping.text, "damping-text"), (self.message, "message"),
                           (self.image, "figure"), (self.readout, "readout")]:
            part.add_class(f"sfn-{name}")

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

    def update(self):
        """Recompute and redraw; any error becomes a message and the last figure stays."""
        if self._held:
            return
        try:
            with matplotlib.rc_context(_FAST_TITLES):
                warning = self._redraw()
        except Exception as error:  # noqa: BLE001 - a callback must never raise
            self.message.value = _error_html(f"{type(error).__name__}: {error}")
            return
        self._render()
        self.image.value = _png(self._canvas)
        self.message.value = _warning_html(warning) if warning else ""

    def _redraw(self) -> str | None:  # pragma: no cover - abstract
        """Validate the controls, draw into ``figure``, set the readout; return a warning."""
        raise NotImplementedError

    def _render(self):
        """Draw ``figure`` onto the canvas (all of it; a panel may redraw only what changed)."""
        self._canvas.draw()


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
    eigenvalue): ``message`` warns, and the run shows the divergence. Trajectories are
    cached by their inputs: moving ``K`` re-runs the series optimiser only.

    After each update ``trajectories`` maps each ticked optimiser to its
    :class:`~sfn_teach.toys.Trajectory`; the readout lists their final points and losses.
    The left panel's legend names the optimisers; the right panel's title the settings.
    """

    def __init__(
        self,
        problem: str = "paper",
        optimizers=("gd", "newton", "exact_sfn", "series_sfn"),
        num_terms: int = 10,
        damping: float = 0.0,
        acceleration_order: int = 0,
        steps: int = 20,
        dpi: int = 72,
    ):
        toy = get_toy(problem)
        super().__init__(dpi, num_terms, 50, damping, toy.scale, 6, acceleration_order)
        self.problem = widgets.Dropdown(
            options=[(t.name, key) for key, t in TOYS.items()], value=toy.key,
            description="problem",
        )
        self.start_x = widgets.FloatText(value=toy.start[0], description="x₀", **_SLIDER)
        self.start_y = widgets.FloatText(value=toy.start[1], description="y₀", **_SLIDER)
        self.optimizers = {
            key: widgets.Checkbox(value=key in optimizers, description=spec.label, indent=False)
            for key, spec in OPTIMIZERS.items()
        }
        self.lr = widgets.FloatLogSlider(value=toy.lr, base=10, min=-4, max=0,
                                         description="lr (GD, momentum, Adam)", **_SLIDER)
        self.steps = widgets.IntSlider(value=steps, min=1, max=200, description="steps",
                                       **_SLIDER)
        self.widget = widgets.VBox([
            widgets.HBox([self.problem, self.start_x, self.start_y]),
            widgets.HBox(list(self.optimizers.values())),
            widgets.HBox([self.num_terms, self.acceleration_order, self.scale]),
            self.damping.box,
            widgets.HBox([self.lr, self.steps]),
            self.message,
            self.image,
            self.readout,
        ])
        self.widget.add_class("sfn-panel")
        self._cache: dict = {}
        self._background, self._background_key, self._artists = None, None, []
        self.problem.observe(self._on_problem, names="value")
        self._observe(
            self.start_x, self.start_y, self.num_terms, self.damping.text, self.scale,
            self.acceleration_order, self.lr, self.steps, *self.optimizers.values(),
        )
        self.update()

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
        _check_damping(self.damping.value)
        if self.optimizers["series_sfn"].value:
            _check_order(self.num_terms.value, self.acceleration_order.value)

    def _trajectory(self, optimizer: str, start: tuple[float, float]):
        """The run of one optimiser, from the cache when its inputs did not change."""
        hyperparameters = self._hyperparameters(optimizer)
        key = (self.problem.value, start, optimizer, self.steps.value,
               tuple(sorted(hyperparameters.items())))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = run_trajectory(
                self.problem.value, start, optimizer, self.steps.value,
                label=OPTIMIZERS[optimizer].label, **hyperparameters,
            )
        return self._cache[key]

    def _redraw(self):
        self._check()
        start = (self.start_x.value, self.start_y.value)
        chosen = [key for key, box in self.optimizers.items() if box.value]
        trajectories = [self._trajectory(key, start) for key in chosen]
        self.trajectories = dict(zip(chosen, trajectories))
        ax_toy, ax_loss = self.axes
        if self._background_key != (self.problem.value, tuple(chosen)):
            self._draw_background(chosen)
        for artist in self._artists:
            artist.remove()
        self._artists = draw_trajectories(ax_toy, trajectories)
        _remove_lines(ax_loss)
        plot_losses(trajectories, ax_loss, legend=False)
        ax_loss.set_title(self._settings(), fontsize="small")
        self.readout.value = "<br>".join(
            f"<b>{html.escape(t.label)}</b>: θ = ({t.final_point[0]:.4g}, "
            f"{t.final_point[1]:.4g}), f = {t.final_loss:.4g}"
            + (f" — {html.escape(t.stopped.split(':')[0])}" if t.stopped else "")
            for t in trajectories
        ) or "no optimiser chosen"
        return self._scale_warning(start) if "series_sfn" in chosen else None

    def _draw_background(self, chosen):
        """Draw what stays while only the trajectories change, and keep it as pixels.

        The contours, critical points, axes and a legend of the chosen optimisers (by their
        colours) take most of the drawing time; they change only with the problem or the
        choice of optimisers. The loss panel is hidden meanwhile: it is redrawn every time.
        """
        ax_toy, ax_loss = self.axes
        ax_toy.clear()
        self._artists = []
        draw_toy(ax_toy, self.problem.value)
        handles = ax_toy.get_legend_handles_labels()[0] + [
            Line2D([], [], color=OPTIMIZER_COLORS[key], marker="o", ms=3,
                   label=OPTIMIZERS[key].label)
            for key in chosen
        ] + [Line2D([], [], marker="*", ms=10, color="gold", mec="black", ls="", label="start")]
        ax_toy.legend(handles=handles, fontsize="x-small", loc="upper right", framealpha=0.8)
        ax_loss.set_visible(False)
        self._canvas.draw()
        ax_loss.set_visible(True)
        self._background = self._canvas.copy_from_bbox(self.figure.bbox)
        self._background_key = (self.problem.value, tuple(chosen))

    def _render(self):
        """Restore the background, then draw the trajectories and the whole loss panel."""
        self._canvas.restore_region(self._background)
        for artist in self._artists:
            self.axes[0].draw_artist(artist)
        self.axes[1].draw(self._canvas.get_renderer())

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
    the number ``max_error``.

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
        dpi: int = 72,
    ):
        super().__init__(dpi, num_terms, 200, damping, scale, 4, acceleration_order)
        self.kind = widgets.Dropdown(options=KINDS, value=kind, description="kind")
        self.widget = widgets.VBox([
            widgets.HBox([self.num_terms, self.acceleration_order, self.scale, self.kind]),
            self.damping.box,
            self.message,
            self.image,
            self.readout,
        ])
        self.widget.add_class("sfn-panel")
        self._observe(self.num_terms, self.damping.text, self.scale, self.acceleration_order,
                      self.kind)
        self.update()

    def _redraw(self):
        terms, order = self.num_terms.value, self.acceleration_order.value
        damping, scale, kind = self.damping.value, self.scale.value, self.kind.value
        _check_damping(damping)
        _check_order(terms, order)
        self.max_error = max_filter_error(terms, scale, damping, kind, order)
        for ax in self.axes:
            _remove_lines(ax)
        plot_spectral_filter(terms, scale, damping, kind, ax=self.axes[0],
                             acceleration_order=order)
        plot_filter_error(terms, scale, damping, kind, ax=self.axes[1], acceleration_order=order)
        limit = convergence_limit(scale)
        self.readout.value = (
            f"K = {terms}, r = {order}: max relative error over {limit / 10:.3g} ≤ |h| ≤ "
            f"√(2V) = {limit:.3g}: <b>{self.max_error:.3g}</b>"
        )
        return None
