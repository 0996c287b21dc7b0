"""The widget panels, driven by setting control values in code as a browser would."""

import base64
import math

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex

from sfn_teach.plot_style import OPTIMIZER_COLORS
from sfn_teach.plots import filter_curve, filter_error_curve, max_filter_error
from sfn_teach.toys import OPTIMIZERS, TOYS, run_trajectories, run_trajectory, series_scale_limit
from sfn_teach.widgets import DampingControl, FilterExplorer, SaddleExplorer

torch.set_num_threads(1)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def explorer():
    return SaddleExplorer("paper", optimizers=("gd", "newton", "series_sfn"), steps=8,
                          num_terms=3)


def shown(panel):
    """What the browser is told to draw: every visible curve's data, by plot and name."""
    return {(index, name): (np.array(curve.x), np.array(curve.y))
            for index, plot in enumerate(panel.plots)
            for name, curve in plot.curves.items() if curve.visible}


def same_drawing(a, b) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1]) for k in a)


# ---------------------------------------------------------------------------------------------
# SaddleExplorer
# ---------------------------------------------------------------------------------------------


def test_saddle_explorer_starts_with_a_figure_and_a_readout(explorer):
    assert explorer.message.value == ""
    assert set(explorer.trajectories) == {"gd", "newton", "series_sfn"}
    for label in ("gradient descent", "Newton", "series SFN"):
        assert label in explorer.readout.value
    assert explorer.figure_box in explorer.widget.children
    assert {name for plot, name in shown(explorer) if plot == 1} == {"gd", "newton", "series_sfn"}
    assert bytes(explorer._background.image.value).startswith(PNG_SIGNATURE)


def test_the_plots_show_the_trajectories_and_losses(explorer):
    drawn = shown(explorer)
    for key, run in explorer.trajectories.items():
        np.testing.assert_array_equal(drawn[0, key][0], run.points[:, 0])
        np.testing.assert_array_equal(drawn[0, key][1], run.points[:, 1])
        np.testing.assert_array_equal(drawn[1, key][0], np.arange(len(run.losses)))
    # the paper's toy is unbounded below: the loss axis is sign(f)·log10(1 + |f|)
    assert explorer.plots[1].y_axis.label.startswith("sign(f)")
    losses = explorer.trajectories["newton"].losses
    np.testing.assert_allclose(drawn[1, "newton"][1],
                               np.sign(losses) * np.log10(1 + np.abs(losses)), rtol=1e-15)
    np.testing.assert_array_equal(drawn[0, "start"][0], [TOYS["paper"].start[0]])
    np.testing.assert_array_equal(drawn[0, "saddle"][0], [0.0])


def test_moving_K_moves_the_series_trajectory_to_the_optimizers(explorer):
    before, drawing = explorer.trajectories["series_sfn"].final_point, shown(explorer)
    gd = explorer.trajectories["gd"]
    explorer.num_terms.value = 12
    after = explorer.trajectories["series_sfn"]
    reference = run_trajectory("paper", TOYS["paper"].start, "series_sfn", 8, num_terms=12,
                               damping=0.0, scale=25.0, acceleration_order=0)
    np.testing.assert_allclose(after.points, reference.points, rtol=1e-12, atol=1e-12)
    assert not np.allclose(after.final_point, before)
    assert explorer.trajectories["gd"] is gd  # from the cache: only the series re-ran
    assert not same_drawing(shown(explorer), drawing)
    np.testing.assert_array_equal(shown(explorer)[0, "series_sfn"][1], after.points[:, 1])
    assert "K = 12" in explorer.figures[1].title
    assert f"{after.final_loss:.4g}" in explorer.readout.value


def test_the_explorer_draws_what_run_trajectories_computes_for_all_six():
    panel = SaddleExplorer("rosenbrock", optimizers=tuple(OPTIMIZERS), steps=30, num_terms=7)
    runs = run_trajectories("rosenbrock", TOYS["rosenbrock"].start, 30,
                            {key: panel._hyperparameters(key) for key in OPTIMIZERS})
    for key, run in runs.items():
        np.testing.assert_array_equal(panel.trajectories[key].points, run.points)
        np.testing.assert_array_equal(shown(panel)[0, key][0], run.points[:, 0])
    assert panel.plots[1].y_axis.label == "log₁₀ f(θ_t)"


def test_the_sliders_follow_the_mouse(explorer):
    for slider in (explorer.num_terms, explorer.scale, explorer.acceleration_order,
                   explorer.lr, explorer.steps, explorer.damping.slider):
        assert slider.continuous_update, slider.description


def test_displaying_a_panel_leaves_a_png_of_its_figure(explorer):
    bundle = explorer.widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    image = base64.b64decode(bundle["image/png"])
    assert image.startswith(PNG_SIGNATURE) and image == explorer.static_png()
    figure = explorer._static_figure()
    ax_toy, ax_loss, colour_bar = figure.axes
    assert colour_bar.get_ylabel() == "f(x, y)"
    assert len(ax_loss.lines) == 3 and "K = 3" in ax_loss.get_title()
    np.testing.assert_array_equal(ax_toy.lines[0].get_xdata(),
                                  explorer.trajectories["gd"].points[:, 0])
    explorer.num_terms.value = 9
    assert base64.b64decode(explorer.widget._repr_mimebundle_()["image/png"]) != image


def test_typed_negative_damping_is_refused_and_the_panel_keeps_working(explorer):
    drawing = shown(explorer)
    explorer.damping.text.value = -0.5
    assert "λ must be a finite number ≥ 0" in explorer.message.value
    assert "-0.5" in explorer.message.value
    assert same_drawing(shown(explorer), drawing)
    explorer.damping.text.value = 0.5
    assert explorer.message.value == ""
    assert explorer.trajectories["newton"].hyperparameters["damping"] == 0.5
    assert not same_drawing(shown(explorer), drawing)


def test_scale_below_the_limit_warns_but_still_runs(explorer):
    limit = series_scale_limit("paper", TOYS["paper"].start)
    explorer.scale.value = limit / 2
    assert "below max h²/2" in explorer.message.value and "diverges" in explorer.message.value
    assert explorer.trajectories["series_sfn"].hyperparameters["scale"] == limit / 2
    assert explorer.trajectories["series_sfn"].stats[0]["diverging"]
    explorer.scale.value = 2 * limit
    assert explorer.message.value == ""


def test_acceleration_order_too_large_for_K_shows_a_message(explorer):
    drawing = shown(explorer)
    explorer.acceleration_order.value = 2  # needs K ≥ 5, K is 3
    assert "needs K ≥ 2r + 1 = 5" in explorer.message.value
    assert same_drawing(shown(explorer), drawing)
    explorer.num_terms.value = 5
    assert explorer.message.value == ""
    assert explorer.trajectories["series_sfn"].hyperparameters["acceleration_order"] == 2


def test_a_bad_start_becomes_a_message_not_an_exception(explorer):
    explorer.start_x.value = math.nan
    assert "start must be two finite" in explorer.message.value
    explorer.start_x.value = 0.5
    assert explorer.message.value == ""
    np.testing.assert_array_equal(explorer.trajectories["gd"].points[0], [0.5, -0.75])


def test_choosing_a_problem_resets_start_scale_and_lr():
    panel = SaddleExplorer("paper", optimizers=("gd",), steps=3)
    panel.problem.value = "rosenbrock"
    toy = TOYS["rosenbrock"]
    assert (panel.start_x.value, panel.start_y.value) == toy.start
    assert panel.scale.value == toy.scale and panel.lr.value == toy.lr
    np.testing.assert_array_equal(panel.trajectories["gd"].points[0], toy.start)
    assert panel.trajectories["gd"].hyperparameters["lr"] == toy.lr
    assert toy.name in panel.figures[0].title
    (x0, x1), _ = toy.box
    assert (panel.plots[0].x.min, panel.plots[0].x.max) == (x0, x1)
    assert list(panel._background.x) == [x0, x1]


def test_optimiser_checkboxes_choose_the_trajectories(explorer):
    explorer.optimizers["adam"].value = True
    assert "adam" in explorer.trajectories and "Adam" in explorer.readout.value
    for box in explorer.optimizers.values():
        box.value = False
    assert explorer.readout.value.startswith("no optimiser chosen")
    assert {name for _, name in shown(explorer)} == {"saddle"}  # the critical point only


def test_diverged_runs_say_so_in_the_readout():
    panel = SaddleExplorer("rosenbrock", optimizers=("gd",), steps=50)
    panel.lr.value = 0.5
    assert "diverged after" in panel.readout.value


def test_runs_to_minus_infinity_read_unbounded_below_not_diverged():
    panel = SaddleExplorer("paper", optimizers=("exact_sfn",), steps=40)
    run = panel.trajectories["exact_sfn"]
    assert run.stopped.startswith("diverged")  # the toy runner's words: |θ| left the box
    assert f"unbounded below: f → −∞ after {run.num_steps} steps" in panel.readout.value
    assert "diverged" not in panel.readout.value


def test_the_readout_is_the_key_and_no_legend_covers_the_plots(explorer):
    for key in explorer.trajectories:
        assert to_hex(OPTIMIZER_COLORS[key]) in explorer.readout.value
    assert "start" in explorer.readout.value and "saddle" in explorer.readout.value
    for figure in explorer.figures:
        assert not any(mark.display_legend for mark in figure.marks)
    # the start is drawn before (under) the paths, half transparent
    marks = explorer.figures[0].marks
    start = explorer.plots[0].curves["start"]
    assert marks.index(start) < min(marks.index(explorer.plots[0].curves[key])
                                    for key in OPTIMIZERS)
    assert start.opacities == [0.6]


def test_the_contours_have_a_colour_bar_that_follows_the_problem(explorer):
    bar = explorer._colorbar
    assert bar in explorer.figure_box.children
    before = bytes(bar.value)
    assert before.startswith(PNG_SIGNATURE)
    explorer.problem.value = "himmelblau"
    assert bytes(bar.value).startswith(PNG_SIGNATURE) and bytes(bar.value) != before


def shown_damping(control: DampingControl) -> float:
    """The λ a person reads off the control: 0 where the box is ticked, else the slider's."""
    off = control.slider.disabled and not control.slider.readout
    assert control.zero.value == off, "the slider must be off (no number) exactly when λ = 0"
    return 0.0 if control.zero.value else control.slider.value


@pytest.mark.parametrize("initial", [0.0, 0.25, 100.0])
def test_damping_control_shows_the_value_in_force_after_every_change(initial):
    control = DampingControl(initial)
    assert shown_damping(control) == pytest.approx(control.value) and control.value == initial
    changes = [
        (control.zero, False), (control.slider, 0.1), (control.zero, True),
        (control.slider, 0.02),  # moved while "λ = 0" was ticked: the slider's value is used
        (control.text, 2.0), (control.text, 0.0), (control.zero, False),
        (control.text, 250.0), (control.text, 1e-9),  # beyond the slider's first range
    ]
    for widget, value in changes:
        widget.value = value
        assert shown_damping(control) == pytest.approx(control.value), (
            f"after {widget.description} = {value} the control shows "
            f"{shown_damping(control)} but λ = {control.value}"
        )
    assert control.value == 1e-9 and control.zero.value is False
    control.zero.value = True
    control.zero.value = False
    assert control.value == pytest.approx(1e-9), "unticking λ = 0 brings the slider's λ back"


def test_a_refused_damping_leaves_the_last_good_one_shown():
    control = DampingControl(0.5)
    control.text.value = -1.0  # refused by the panels, which keep drawing with λ = 0.5
    assert control.value == -1.0 and shown_damping(control) == pytest.approx(0.5)


def test_the_saddle_explorer_shows_the_damping_it_uses(explorer):
    def used():
        return explorer.trajectories["newton"].hyperparameters["damping"]

    control = explorer.damping
    assert shown_damping(control) == used() == 0.0
    control.slider.value = 0.01
    assert shown_damping(control) == pytest.approx(used()) == pytest.approx(0.01)
    control.zero.value = True
    assert shown_damping(control) == used() == 0.0
    assert "λ = 0," in explorer.figures[1].title


# ---------------------------------------------------------------------------------------------
# FilterExplorer
# ---------------------------------------------------------------------------------------------


def test_filter_curve_approaches_the_target_as_K_grows():
    panel = FilterExplorer(num_terms=3, scale=25.0)
    errors = [panel.max_error]
    for terms in (10, 40, 150):
        panel.num_terms.value = terms
        assert panel.max_error == pytest.approx(max_filter_error(terms, 25.0), rel=1e-12)
        assert f"{panel.max_error:.3g}" in panel.readout.value
        errors.append(panel.max_error)
        h, phi, _, _ = filter_curve(terms, 25.0)
        np.testing.assert_array_equal(shown(panel)[0, "filter"][1], phi)
        magnitude, error = filter_error_curve(terms, 25.0)
        np.testing.assert_array_equal(shown(panel)[1, "filter"][1], error)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.05
    assert "φ_K, K = 150" in panel.readout.value  # the key: no legend over the curves
    assert not any(mark.display_legend for figure in panel.figures for mark in figure.marks)
    np.testing.assert_array_equal(shown(panel)[0, "limit"][0], [math.sqrt(50)] * 2)


def test_filter_explorer_controls_reach_the_figure():
    panel = FilterExplorer(num_terms=9, scale=25.0)
    panel.scale.value = 100.0
    assert "V = 100" in panel.figures[0].title
    panel.kind.value = "quasi-damped"
    assert "quasi-damped" in panel.figures[1].title
    panel.acceleration_order.value = 2
    assert "r = 2" in panel.readout.value
    assert panel.max_error == pytest.approx(
        max_filter_error(9, 100.0, 0.0, "quasi-damped", acceleration_order=2), rel=1e-12
    )


def test_filter_explorer_refuses_bad_input_and_recovers():
    panel = FilterExplorer(num_terms=4)
    drawing = shown(panel)
    panel.damping.text.value = -1.0
    assert "λ must be a finite number ≥ 0" in panel.message.value
    assert same_drawing(shown(panel), drawing)
    panel.damping.text.value = 0.0
    panel.acceleration_order.value = 3
    assert "needs K ≥ 2r + 1 = 7" in panel.message.value
    panel.num_terms.value = 7
    assert panel.message.value == "" and not same_drawing(shown(panel), drawing)


def test_filter_explorer_leaves_a_png_of_its_figure():
    panel = FilterExplorer(num_terms=6, scale=16.0)
    image = base64.b64decode(panel.widget._repr_mimebundle_()["image/png"])
    assert image.startswith(PNG_SIGNATURE)
    ax_filter, ax_error = panel._static_figure().axes
    np.testing.assert_array_equal(ax_filter.lines[0].get_ydata(), filter_curve(6, 16.0)[1])
    assert "V = 16" in ax_error.get_title()


def test_panels_draw_without_warnings_where_the_notebooks_turn_on_constrained_layout():
    import warnings

    import matplotlib

    with matplotlib.rc_context({"figure.constrained_layout.use": True}), \
            warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        panel = SaddleExplorer("himmelblau", optimizers=("gd",), steps=3)
        panel.problem.value = "paper"
        assert panel.static_png().startswith(PNG_SIGNATURE)


def test_callbacks_from_two_threads_take_turns():
    """JupyterLab may deliver two controls' messages on two kernel subshells, i.e. two threads.
    torch.func's forward-mode levels are global: two Hessians at once fail ("no level exists" /
    "invalid index"). Callbacks wrapped in one_at_a_time, the explorers' update among them,
    never overlap, and the explorer shows no error however the threads interleave."""
    import threading
    import time

    from sfn_teach.landscapes import hessian
    from sfn_teach.widget_parts import one_at_a_time

    inside, overlaps, errors = [0], [], []

    @one_at_a_time
    def callback(i):
        inside[0] += 1
        overlaps.append(inside[0] > 1)
        hessian("himmelblau", (0.01 * i, 1.0))
        time.sleep(0.0005)
        inside[0] -= 1

    explorer = SaddleExplorer(problem="himmelblau", steps=20)
    explorer.message.observe(lambda change: "Error" in change["new"]
                             and errors.append(change["new"]), names="value")

    def work(offset):
        try:
            for i in range(60):
                callback(i)
                if i % 6 == 0:
                    explorer.start_x.value = -1.0 + 0.05 * i + offset
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(offset,)) for offset in (0.0, 0.01)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not any(overlaps) and not errors, errors[:3]
