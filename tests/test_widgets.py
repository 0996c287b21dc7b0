"""The widget panels, driven by setting control values in code as a browser would."""

import math

import matplotlib
import numpy as np
import pytest
import torch

from sfn_teach.plots import max_filter_error
from sfn_teach.toys import TOYS, run_trajectory, series_scale_limit
from sfn_teach.widgets import DampingControl, FilterExplorer, SaddleExplorer

matplotlib.use("Agg")
torch.set_num_threads(1)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def explorer():
    return SaddleExplorer("paper", optimizers=("gd", "newton", "series_sfn"), steps=8,
                          num_terms=3)


def png(panel):
    return bytes(panel.image.value)


def rendered(panel):
    """The pixels of the panel's canvas as last drawn."""
    return np.asarray(panel._canvas.buffer_rgba()).copy()


# ---------------------------------------------------------------------------------------------
# SaddleExplorer
# ---------------------------------------------------------------------------------------------


def test_saddle_explorer_starts_with_a_figure_and_a_readout(explorer):
    assert png(explorer).startswith(PNG_SIGNATURE)
    assert explorer.message.value == ""
    assert set(explorer.trajectories) == {"gd", "newton", "series_sfn"}
    for label in ("gradient descent", "Newton", "series SFN"):
        assert label in explorer.readout.value
    assert explorer.widget.children and explorer.image in explorer.widget.children


def test_moving_K_moves_the_series_trajectory_to_the_runners_result(explorer):
    before, image = explorer.trajectories["series_sfn"].final_point, png(explorer)
    gd = explorer.trajectories["gd"]
    explorer.num_terms.value = 12
    after = explorer.trajectories["series_sfn"]
    reference = run_trajectory("paper", TOYS["paper"].start, "series_sfn", 8, num_terms=12,
                               damping=0.0, scale=25.0, acceleration_order=0)
    np.testing.assert_array_equal(after.points, reference.points)
    assert not np.allclose(after.final_point, before)
    assert explorer.trajectories["gd"] is gd  # from the cache: only the series re-ran
    assert png(explorer) != image
    assert "K = 12" in explorer.axes[1].get_title()
    assert f"{after.final_loss:.4g}" in explorer.readout.value


def test_the_blitted_image_is_the_figure_drawn_from_scratch(explorer):
    explorer.num_terms.value = 7
    blitted = rendered(explorer)
    for artist in explorer._artists:  # a full draw puts the legend above the lines
        artist.set_zorder(10)
    explorer._canvas.draw()
    different = np.any(blitted != rendered(explorer), axis=-1)
    assert different.mean() < 1e-3


def test_typed_negative_damping_is_refused_and_the_panel_keeps_working(explorer):
    image, pixels = png(explorer), rendered(explorer)
    explorer.damping.text.value = -0.5
    assert "λ must be a finite number ≥ 0" in explorer.message.value
    assert "-0.5" in explorer.message.value
    assert png(explorer) == image
    np.testing.assert_array_equal(rendered(explorer), pixels)
    explorer.damping.text.value = 0.5
    assert explorer.message.value == ""
    assert explorer.trajectories["newton"].hyperparameters["damping"] == 0.5
    assert png(explorer) != image


def test_scale_below_the_limit_warns_but_still_runs(explorer):
    limit = series_scale_limit("paper", TOYS["paper"].start)
    explorer.scale.value = limit / 2
    assert "below max h²/2" in explorer.message.value and "diverges" in explorer.message.value
    assert explorer.trajectories["series_sfn"].hyperparameters["scale"] == limit / 2
    assert explorer.trajectories["series_sfn"].stats[0]["diverging"]
    explorer.scale.value = 2 * limit
    assert explorer.message.value == ""


def test_acceleration_order_too_large_for_K_shows_a_message(explorer):
    image = png(explorer)
    explorer.acceleration_order.value = 2  # needs K ≥ 5, K is 3
    assert "needs K ≥ 2r + 1 = 5" in explorer.message.value
    assert png(explorer) == image
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
    assert toy.name in panel.axes[0].get_title()


def test_optimiser_checkboxes_choose_the_trajectories(explorer):
    explorer.optimizers["adam"].value = True
    assert "adam" in explorer.trajectories and "Adam" in explorer.readout.value
    for box in explorer.optimizers.values():
        box.value = False
    assert explorer.readout.value == "no optimiser chosen"


def test_diverged_runs_say_so_in_the_readout():
    panel = SaddleExplorer("rosenbrock", optimizers=("gd",), steps=50)
    panel.lr.value = 0.5
    assert "diverged after" in panel.readout.value


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
    assert "λ = 0," in explorer.axes[1].get_title()


# ---------------------------------------------------------------------------------------------
# FilterExplorer
# ---------------------------------------------------------------------------------------------


def test_filter_curve_approaches_the_target_as_K_grows():
    panel = FilterExplorer(num_terms=3, scale=25.0)
    errors, images = [panel.max_error], [png(panel)]
    for terms in (10, 40, 150):
        panel.num_terms.value = terms
        assert panel.max_error == pytest.approx(max_filter_error(terms, 25.0), rel=1e-12)
        assert f"{panel.max_error:.3g}" in panel.readout.value
        errors.append(panel.max_error)
        images.append(png(panel))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.05
    assert len(set(images)) == 4
    assert panel.axes[0].lines[0].get_label().endswith("K = 150")


def test_filter_explorer_controls_reach_the_figure():
    panel = FilterExplorer(num_terms=9, scale=25.0)
    panel.scale.value = 100.0
    assert "V = 100" in panel.axes[0].get_title()
    panel.kind.value = "quasi-damped"
    assert "quasi-damped" in panel.axes[1].get_title()
    panel.acceleration_order.value = 2
    assert "r = 2" in panel.readout.value
    assert panel.max_error == pytest.approx(
        max_filter_error(9, 100.0, 0.0, "quasi-damped", acceleration_order=2), rel=1e-12
    )


def test_filter_explorer_refuses_bad_input_and_recovers():
    panel = FilterExplorer(num_terms=4)
    image = png(panel)
    panel.damping.text.value = -1.0
    assert "λ must be a finite number ≥ 0" in panel.message.value
    assert png(panel) == image
    panel.damping.text.value = 0.0
    panel.acceleration_order.value = 3
    assert "needs K ≥ 2r + 1 = 7" in panel.message.value
    panel.num_terms.value = 7
    assert panel.message.value == "" and png(panel) != image
