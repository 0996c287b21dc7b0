"""The figures hold the artists they promise, and the numbers behind them are exact."""

import math

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.quiver import Quiver

from sfn_teach import plots
from sfn_teach.series import sfn_direction, spectral_filter
from sfn_teach.toys import TOYS, run_trajectory, series_partial_sum_points

matplotlib.use("Agg")
torch.set_num_threads(1)

PAPER_START = (-0.75, -0.75)


def legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def random_hessian(n, eigenvalues, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    grad = torch.randn(n, generator=gen, dtype=torch.float64)
    return q @ torch.diag(eigenvalues) @ q.T, grad, q


# ---------------------------------------------------------------------------------------------
# Toys and trajectories
# ---------------------------------------------------------------------------------------------


def test_plot_toy_draws_contours_critical_points_trajectories_and_legend():
    toy = TOYS["double_well"]
    trajectories = [
        run_trajectory(toy, toy.start, "gd", 5),
        run_trajectory(toy, toy.start, "newton", 5),
    ]
    fig, ax = plots.plot_toy(toy, trajectories)
    assert sum(isinstance(c, ContourSet) for c in ax.collections) == 2  # filled and lines
    lines = [line for line in ax.lines if line.get_label() in ("gradient descent", "Newton")]
    assert len(lines) == 2
    for line, trajectory in zip(lines, trajectories):
        np.testing.assert_array_equal(line.get_xdata(), trajectory.points[:, 0])
        np.testing.assert_array_equal(line.get_ydata(), trajectory.points[:, 1])
    assert lines[0].get_color() == plots.OPTIMIZER_COLORS["gd"]
    texts = legend_texts(ax)
    assert {"minimum", "saddle", "gradient descent", "Newton", "start"} <= set(texts)
    assert ax.get_xlabel() == "x" and ax.get_ylabel() == "y" and toy.name in ax.get_title()
    assert ax.get_xlim() == toy.box[0] and ax.get_ylim() == toy.box[1]
    markers = [c for c in ax.collections if isinstance(c, PathCollection)]
    minima = [c for c in markers if c.get_label() == "minimum"][0]
    np.testing.assert_array_equal(minima.get_offsets(), [(-1.0, 0.0), (1.0, 0.0)])
    assert fig is ax.figure


def test_stopped_trajectories_say_so_in_the_legend():
    trajectory = run_trajectory("rosenbrock", (-1.5, 2.5), "gd", 50, lr=0.1)
    assert trajectory.losses[-1] > trajectory.losses[0]  # blew up: a real failure
    _, ax = plots.plot_toy("rosenbrock", [trajectory])
    assert any(text.endswith(f"[diverged after {trajectory.num_steps} steps]")
               for text in legend_texts(ax))


def test_a_run_to_minus_infinity_is_labelled_unbounded_below_not_diverged():
    escaping = run_trajectory("paper", PAPER_START, "exact_sfn", 40)
    assert escaping.stopped.startswith("diverged") and escaping.losses[-1] < -1e10
    reason = plots.stop_reason(escaping)
    assert reason == f"unbounded below: f → −∞ after {escaping.num_steps} steps"
    for _, ax in (plots.plot_toy("paper", [escaping]), plots.plot_losses([escaping])):
        assert f"exact SFN [{reason}]" in legend_texts(ax)
    assert plots.stop_reason(run_trajectory("paper", PAPER_START, "exact_sfn", 3)) is None


def overlaps(a, b) -> bool:
    return a.width > 0 and b.width > 0 and a.overlaps(b)


def test_legends_sit_below_the_axes_and_labels_clear_the_ticks():
    trajectories = [run_trajectory("paper", PAPER_START, key, 30) for key in ("gd", "exact_sfn")]
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    ax_toy, ax_loss = fig.subplots(1, 2)
    plots.plot_toy("paper", trajectories, ax=ax_toy)
    plots.plot_losses(trajectories, ax=ax_loss)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in (ax_toy, ax_loss):
        legend = ax.get_legend().get_window_extent(renderer)
        assert legend.y1 < ax.get_window_extent(renderer).y0  # below: covers no marker
        label = ax.yaxis.label.get_window_extent(renderer)
        ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
        assert ticks and not any(overlaps(label, tick) for tick in ticks)
    # the start star is drawn under the paths, so a first step beside it stays visible
    start = [c for c in ax_toy.collections if c.get_label() == "start"][0]
    assert start.get_zorder() < min(line.get_zorder() for line in ax_toy.lines)


def test_contour_plots_have_a_colour_bar_of_f():
    fig, ax = plots.plot_toy("himmelblau")
    bars = [other for other in fig.axes if other is not ax]
    assert len(bars) == 1 and bars[0].get_ylabel() == "f(x, y)"
    _, ax = plots.plot_toy("himmelblau", colorbar=False)
    assert len(ax.figure.axes) == 1


def test_repeated_optimizers_get_distinct_colours():
    trajectories = [run_trajectory("paper", PAPER_START, "series_sfn", 2, num_terms=k)
                    for k in (2, 5, 9)]
    _, ax = plots.plot_toy("paper", trajectories, legend=False)
    colours = [line.get_color() for line in ax.lines]
    assert len(set(colours)) == 3 and colours[0] == plots.OPTIMIZER_COLORS["series_sfn"]


def test_contour_levels_are_symmetric_for_a_saddle_and_log_spaced_for_a_basin():
    saddle = plots.contour_levels(np.array([-3.0, 0.5, 2.0]), 5)
    np.testing.assert_allclose(saddle, [-3.0, -0.75, 0.0, 0.75, 3.0])
    basin = plots.contour_levels(np.array([1.0, 101.0]), 3)
    np.testing.assert_allclose(basin, [1.01, 2.0, 101.0])
    assert np.all(np.diff(plots.contour_levels(plots.toy_grid(TOYS["himmelblau"])[2])) > 0)


def test_toy_grid_evaluates_f_on_the_box():
    x, y, z = plots.toy_grid(TOYS["paper"], 11)
    assert x.shape == y.shape == z.shape == (11, 11)
    assert (x[0, 0], y[0, 0], x[-1, -1], y[-1, -1]) == (-2.0, -2.0, 2.0, 2.0)
    np.testing.assert_allclose(z, 2 * x**2 + 2 * x * y - y**2, rtol=1e-15)


def test_plot_losses_plots_every_loss_with_a_fitting_scale():
    diverging = run_trajectory("paper", PAPER_START, "exact_sfn", 8)
    fig, ax = plots.plot_losses([diverging])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), diverging.losses)
    assert ax.get_yscale() == "symlog"
    assert ax.get_xlabel() == "step t" and "loss" in ax.get_ylabel() and ax.get_title()
    assert legend_texts(ax) == ["exact SFN"]
    converging = run_trajectory("himmelblau", (0.3, 2.5), "exact_sfn", 8)
    assert plots.plot_losses([converging])[1].get_yscale() == "log"
    assert plots.loss_scale([np.array([0.5, -0.2])]) == "linear"


# ---------------------------------------------------------------------------------------------
# Eigen-directions
# ---------------------------------------------------------------------------------------------


def test_eigen_directions_are_arrows_along_the_eigenvectors_scaled_by_curvature():
    fig, ax = plots.plot_eigen_directions("paper", PAPER_START, length=1.0)
    quivers = [c for c in ax.collections if isinstance(c, Quiver)]
    assert len(quivers) == 2
    low, high = 1 - math.sqrt(13), 1 + math.sqrt(13)  # eigenvalues of [[4, 2], [2, −2]]
    negative, positive = quivers
    for quiver, h, colour in ((negative, low, plots.NEGATIVE_CURVATURE_COLOR),
                              (positive, high, plots.POSITIVE_CURVATURE_COLOR)):
        np.testing.assert_allclose(quiver.X, [PAPER_START[0]] * 2)
        arrow = np.array([quiver.U[0], quiver.V[0]])
        np.testing.assert_allclose(np.linalg.norm(arrow), abs(h) / high, rtol=1e-12)
        hessian = np.array([[4.0, 2.0], [2.0, -2.0]])
        np.testing.assert_allclose(hessian @ arrow, h * arrow, atol=1e-12)  # an eigenvector
        np.testing.assert_allclose([quiver.U[1], quiver.V[1]], -arrow)  # and its opposite
        assert matplotlib.colors.same_color(quiver.get_facecolor()[0], colour)
    assert [text.get_text() for text in ax.texts] == [f"h₁ = {low:.3g}", f"h₂ = {high:.3g}"]
    for text, quiver in zip(ax.texts, quivers):  # each label at the head pointing right
        head = np.array(PAPER_START) + [quiver.U[0], quiver.V[0]]
        np.testing.assert_allclose(text.xy, head)
        assert quiver.U[0] >= 0
    assert "eigen-directions" in ax.get_title() and ax.get_legend() is not None


# ---------------------------------------------------------------------------------------------
# The spectral filter
# ---------------------------------------------------------------------------------------------


def test_spectral_filter_figure_has_each_K_the_target_and_the_limit():
    fig, ax = plots.plot_spectral_filter([3, 30], 25.0, damping=0.1)
    labels = [line.get_label() for line in ax.lines]
    assert labels[:3] == [r"$\varphi_K$, K = 3", r"$\varphi_K$, K = 30",
                          r"target $1/(|h| + \lambda)$"]
    h = torch.as_tensor(ax.lines[1].get_xdata())
    np.testing.assert_allclose(ax.lines[1].get_ydata(), spectral_filter(h, 30, 25.0, 0.1))
    limits = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in limits) == pytest.approx([-math.sqrt(50),
                                                                           math.sqrt(50)])
    assert ax.get_xlabel() == "eigenvalue h" and ax.get_ylabel() and "V = 25" in ax.get_title()
    assert r"$|h| = \sqrt{2V}$" in legend_texts(ax)


def test_filter_on_a_spectrum_draws_the_target_each_filter_and_its_flat_level():
    eigenvalues = torch.tensor([-0.8, -1e-3, 2e-3, 0.05, 1.0], dtype=torch.float64)
    fig, ax = plots.plot_filter_on_spectrum(eigenvalues, 10, [100.0, 1.5], damping=1e-3)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    target, *rest = ax.lines
    h = torch.as_tensor(target.get_xdata())
    assert h[0] < 1e-3 < 1.0 < h[-1]
    np.testing.assert_allclose(target.get_ydata(), 1 / (h.numpy() + 1e-3))
    by_label = {line.get_label(): line for line in rest}
    solid = by_label[r"$\varphi_K$, K = 10, V = 1.5"]
    x = torch.as_tensor(solid.get_xdata())
    assert float(x.max()) <= math.sqrt(3.0)  # drawn solid only where it converges
    np.testing.assert_allclose(solid.get_ydata(), spectral_filter(x, 10, 1.5, 1e-3).abs())
    flat = [line for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[-1]
            and len(line.get_ydata()) == 2]
    assert sorted(float(line.get_ydata()[0]) for line in flat) == pytest.approx(
        sorted(2 * math.sqrt(10 / (math.pi * v)) for v in (100.0, 1.5)))
    rug = by_label["measured |h|"]
    assert sorted(rug.get_xdata()) == pytest.approx(sorted(eigenvalues.abs().tolist()))
    with pytest.raises(ValueError, match="non-zero eigenvalue"):
        plots.plot_filter_on_spectrum(torch.zeros(3), 10, [1.0])


def test_filter_error_figure_is_log_log_with_the_limit():
    fig, ax = plots.plot_filter_error(10, 8.0, h_range=(0.01, 5.0))
    assert ax.get_xscale() == ax.get_yscale() == "log"
    h = ax.lines[0].get_xdata()
    assert h[0] == pytest.approx(0.01) and h[-1] == pytest.approx(5.0)
    expected = np.abs(spectral_filter(torch.tensor(h), 10, 8.0).numpy() * h - 1)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.maximum(expected, 1e-17), rtol=1e-9,
                               atol=1e-15)
    assert ax.lines[1].get_xdata()[0] == pytest.approx(4.0)  # √(2V)
    with pytest.raises(ValueError, match="h_range"):
        plots.plot_filter_error(10, 8.0, h_range=(0.0, 1.0))


def test_filter_values_without_acceleration_are_the_spectral_filter():
    h = torch.linspace(-9, 9, 37, dtype=torch.float64)
    torch.testing.assert_close(plots.filter_values(h, 12, 25.0, 0.2),
                               spectral_filter(h, 12, 25.0, 0.2))


def test_accelerated_filter_is_the_series_on_a_diagonal_hessian():
    h = torch.linspace(-8, 8, 33, dtype=torch.float64)  # √(2V) = √50 ≈ 7.07
    values = plots.filter_values(h, 9, 25.0, 0.0, acceleration_order=2)
    inside = h.abs() <= math.sqrt(50)
    assert torch.isnan(values[~inside]).all()
    hessian = torch.diag(h[inside])
    expected = sfn_direction(lambda v: hessian @ v, torch.ones(int(inside.sum()),
                             dtype=torch.float64), 9, 25.0, 0.0, 2)
    torch.testing.assert_close(values[inside], expected, rtol=1e-12, atol=1e-14)


def test_max_filter_error_is_exact_and_falls_with_K():
    # On [√(2V)/10, √(2V)] for λ = 0: error(h) = |φ_K(h)·h − 1|.
    h = torch.logspace(math.log10(math.sqrt(50) / 10), math.log10(math.sqrt(50)), 401,
                       dtype=torch.float64)
    expected = float((spectral_filter(h, 20, 25.0) * h - 1).abs().max())
    assert plots.max_filter_error(20, 25.0) == pytest.approx(expected, rel=1e-12)
    errors = [plots.max_filter_error(k, 25.0) for k in (2, 5, 20, 80)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.1
    with pytest.raises(ValueError, match="h_low"):
        plots.max_filter_error(5, 25.0, h_low=0.0)


# ---------------------------------------------------------------------------------------------
# Convergence of the direction
# ---------------------------------------------------------------------------------------------


def test_direction_convergence_against_the_eigen_reference():
    eigenvalues = torch.tensor([-3.0, -0.5, 0.2, 1.0, 2.5], dtype=torch.float64)
    hessian, grad, q = random_hessian(5, eigenvalues)
    scale = 9.0
    cosines, errors = plots.direction_convergence(hessian, grad, [1, 6, 40], scale, 0.1)
    exact = q @ ((q.T @ grad) / (eigenvalues.abs() + 0.1))
    for i, k in enumerate([1, 6, 40]):
        series = q @ (spectral_filter(eigenvalues, k, scale, 0.1) * (q.T @ grad))
        assert errors[i] == pytest.approx(float((series - exact).norm() / exact.norm()), rel=1e-9)
        cosine = float(series @ exact / (series.norm() * exact.norm()))
        assert cosines[i] == pytest.approx(cosine, rel=1e-9)
    assert errors[2] < errors[1] < errors[0]
    accelerated = plots.direction_convergence(hessian, grad, [3, 5, 40], scale, 0.1, order=2)[1]
    assert math.isnan(accelerated[0]) and accelerated[2] < errors[2]


def test_direction_convergence_figure_has_two_panels_and_a_curve_per_variant():
    eigenvalues = torch.linspace(-2, 3, 8, dtype=torch.float64)
    hessian, grad, _ = random_hessian(8, eigenvalues, seed=1)
    fig, (ax_cos, ax_err) = plots.plot_direction_convergence(
        hessian, grad, [5, 10, 20], 9.0, orders=(0, 1), sablonniere=(False, True)
    )
    labels = ["plain partial sums (r = 0)", "Wynn ε, r = 1", "Wynn ε (Sablonnière), r = 1"]
    assert [line.get_label() for line in ax_cos.lines] == labels
    assert [line.get_label() for line in ax_err.lines] == labels
    assert ax_err.get_yscale() == "log" and ax_cos.get_xlabel() == "number of terms K"
    assert ax_cos.get_title() and ax_err.get_title() and ax_cos.get_legend()
    np.testing.assert_array_equal(ax_cos.lines[0].get_xdata(), [5, 10, 20])


# ---------------------------------------------------------------------------------------------
# The paper's toy figure
# ---------------------------------------------------------------------------------------------


def test_paper_toy_figure_shows_the_methods_and_the_partial_sums():
    fig, ax = plots.plot_paper_toy_figure(steps=3, num_terms=15)
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["gradient descent (lr=0.1)", "Newton", "exact SFN",
                      "series partial sums, V = 25, K ≤ 15"]
    newton = ax.lines[1]
    assert (newton.get_xdata()[1], newton.get_ydata()[1]) == pytest.approx((0.0, 0.0), abs=1e-12)
    sums = series_partial_sum_points("paper", PAPER_START, 15, 25.0)
    np.testing.assert_array_equal(ax.lines[3].get_xdata(), sums[:, 0])
    assert "one exact SFN step" in legend_texts(ax) and "Newton" in ax.get_title()
