"""What the interactive panels share: control styles, messages, the damping control, PNGs
of matplotlib figures, and a box that leaves a static image of its figure in the output.

Used by :mod:`sfn_teach.widgets` (the explorers), :mod:`sfn_teach.benchmark_panel` and the
notebooks' own small panels, so that every panel looks and fails alike.

**Callbacks take turns** (:func:`one_at_a_time`). JupyterLab (4.4 and later) can deliver each
widget's messages on a kernel *subshell* of its own, and every subshell runs in its own thread:
the callbacks of two sliders can then run at the same time. Neither matplotlib nor torch.func
(whose forward-mode levels are global to the process: two Hessians computed at once failed with
"Trying to access a forward AD level with an invalid index") is safe for that, so every panel's
callback holds one lock.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import threading

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

CALLBACK_LOCK = threading.RLock()
"""Held by every callback wrapped in :func:`one_at_a_time` (re-entrant: a callback that sets
another control's value runs that control's callback in the same thread)."""


def one_at_a_time(callback):
    """``callback`` holding :data:`CALLBACK_LOCK`: widget callbacks that JupyterLab delivers on
    different threads run one after the other, never at the same time."""

    @functools.wraps(callback)
    def serialized(*args, **kwargs):
        with CALLBACK_LOCK:
            return callback(*args, **kwargs)

    return serialized


#: style of a control whose change starts work (a training run): the value is sent on release
SLIDER = dict(continuous_update=False, style={"description_width": "initial"})
#: style of a control that a panel follows while it moves (the value is sent while dragged)
FOLLOWED = dict(SLIDER, continuous_update=True)


def canvas_png(canvas: FigureCanvasAgg) -> bytes:
    """The Agg ``canvas`` as it was last drawn, as PNG (fast compression: ~10 ms, not ~17)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


def figure_png(figure: Figure) -> bytes:
    """``figure`` drawn by Agg, as PNG."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas_png(canvas)


def error_html(text: str) -> str:
    """``text`` as a red error line for an ``HTML`` widget (escaped)."""
    return f'<span style="color:#b00020">❌ {html.escape(text)}</span>'


def warning_html(text: str) -> str:
    """``text`` as an amber warning line for an ``HTML`` widget (escaped)."""
    return f'<span style="color:#8a5a00">⚠️ {html.escape(text)}</span>'


def check_damping(damping: float):
    """Refuse a damping ``λ`` that is not a finite number ≥ 0 (ValueError)."""
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(
            f"λ must be a finite number ≥ 0 (damping adds λ to every |h|), got {damping:g}"
        )


def check_order(num_terms: int, order: int):
    """Refuse a Wynn order ``r`` with ``K < 2r + 1`` (ValueError that says what to change)."""
    if num_terms < 2 * order + 1:
        raise ValueError(
            f"r = {order} needs K ≥ 2r + 1 = {2 * order + 1} (Wynn's ε-algorithm of order r "
            f"uses the last 2r + 1 partial sums), got K = {num_terms}: raise K or lower r"
        )


class PanelBox(widgets.VBox):
    """A panel's top-level box: live in JupyterLab, a PNG of its figure elsewhere.

    Its display data hold the widget's view and, as ``image/png``, ``static_png()`` (the
    figure when the box was displayed; a callable returning PNG bytes), which HTML exports
    without the widgets' state (``scripts/render.sh``) and repository viewers show where no
    kernel runs.
    """

    def __init__(self, children, static_png):
        super().__init__(children)
        self._static_png = static_png

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        bundle["image/png"] = base64.b64encode(self._static_png()).decode("ascii")
        return bundle


class DampingControl:
    """The damping ``λ ≥ 0`` as a log-slider, a "λ = 0" box and a text box, which always agree.

    ``text`` holds the value in force (:attr:`value`); the slider and the box write into it,
    and every value in force is shown by all three: the box is ticked exactly when λ = 0, and
    the slider then is disabled and shows no number (a log-slider has no 0); otherwise the
    slider shows λ, its range (``[1e-6, 10]`` at first) growing to reach a typed value.
    Unticking the box brings back the slider's value. Observers of ``text`` see every change,
    the slider's while it is dragged.
    A typed negative value stays in ``text``, where the panel refuses it with a message; the
    slider and the box keep showing the last good value, which is still what is drawn.
    """

    def __init__(self, value: float = 0.0):
        self.slider = widgets.FloatLogSlider(
            value=1e-3, base=10, min=-6, max=1, description="λ", readout_format=".1e",
            **FOLLOWED,
        )
        self.zero = widgets.Checkbox(description="λ = 0", indent=False)
        self.text = widgets.FloatText(value=value, description="λ (type)", **SLIDER)
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

    @one_at_a_time
    def _from_slider(self, change):
        if not self._syncing:
            self.text.value = change["new"]

    @one_at_a_time
    def _from_zero(self, change):
        if not self._syncing:
            self.text.value = 0.0 if change["new"] else self.slider.value

    @one_at_a_time
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

