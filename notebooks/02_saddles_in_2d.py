# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Saddles in two dimensions
#
# Newton's method is the fastest way to a *critical point* — any critical point. Near a
# saddle that is exactly the wrong thing. This notebook shows why, on functions of two
# variables where you can see everything, and how replacing $H$ by $|H|$ fixes it.
#
# **Learning objectives.** After this notebook you can
#
# 1. run gradient descent, Newton and saddle-free Newton on 2-D test functions and read
#    their trajectories on a contour plot;
# 2. explain, in the eigenbasis of $H$, why a Newton step flips the sign of the
#    negative-curvature components and therefore moves *towards* a saddle;
# 3. explain why $-(|H| + \lambda I)^{-1} g$ keeps every component pointing downhill, and
#    what the damping $\lambda$ does where $H$ is nearly singular;
# 4. reproduce the first figure of Oldewage, Clarke and Hernández-Lobato (2024), with the
#    partial sums of their series converging to the saddle-free Newton step.

# %% tags=["parameters"]
import os

FAST = os.environ.get("SFN_TEACH_FAST") == "1"
STEPS = 10 if FAST else 30  # optimisation steps per trajectory
SERIES_TERMS = 12 if FAST else 30  # terms of the series in the paper's figure (V = 25)

# %%
import sfn_teach.cpu  # first, before torch starts: how its CPU threads wait

import matplotlib.pyplot as plt
import numpy as np
import torch

from sfn_teach import exercises, plots, toys
from sfn_teach.widgets import SaddleExplorer

# %matplotlib inline
plt.rcParams["figure.constrained_layout.use"] = True  # labels and legends never overlap
print(sfn_teach.cpu.status())  # what sfn-teach will compute with
torch.set_default_dtype(torch.float64)

# %% [markdown]
# ## 1. Three optimisers at a saddle
#
# The paper's toy is the quadratic $f(x, y) = 2x^2 + 2xy - y^2$ with the constant Hessian
# $H = \begin{pmatrix} 4 & 2 \\ 2 & -2 \end{pmatrix}$, eigenvalues $1 \pm \sqrt{13}$: a saddle
# at the origin, unbounded below along the negative-curvature direction. From
# $\theta_0 = (-0.75, -0.75)$ we run
#
# * **gradient descent**, $\theta \leftarrow \theta - \alpha g$ with $\alpha = 0.1$;
# * **Newton**, $\theta \leftarrow \theta - H^{-1} g$;
# * **exact saddle-free Newton (SFN)**, $\theta \leftarrow \theta - |H|^{-1} g$, with
#   $|H| = \sum_i |h_i|\, q_i q_i^\top$.

# %%
paper = toys.TOYS["paper"]
start = paper.start
runs = [
    toys.run_trajectory(paper, start, "gd", STEPS, lr=0.1),
    toys.run_trajectory(paper, start, "newton", STEPS),
    toys.run_trajectory(paper, start, "exact_sfn", STEPS),
]
fig, (ax_contour, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.3))
plots.plot_toy(paper, runs, ax=ax_contour)
plots.plot_losses(runs, ax=ax_loss)
plt.show()
for run in runs:
    print(f"{run.label:>18}: after {run.num_steps} steps at {np.round(run.final_point, 4)}, "
          f"f = {run.final_loss:.4g}")

# %% [markdown]
# Newton lands **exactly on the saddle** after one step and stays there: its loss is stuck at
# 0. Gradient descent escapes, slowly. Saddle-free Newton escapes fast and its loss falls
# without bound (the function is unbounded below along the negative-curvature direction).

# %% [markdown]
# ## 2. Why Newton walks into the saddle: the step in the eigenbasis
#
# Write the position in the eigenbasis of $H$: $\theta = \sum_i c_i q_i$. For a quadratic with
# its critical point at the origin, $g = H\theta = \sum_i h_i c_i\, q_i$, and
#
# $$-H^{-1} g = -\sum_i \frac{h_i c_i}{h_i}\, q_i = -\sum_i c_i q_i
#   \qquad\Longrightarrow\qquad \theta - H^{-1}g = 0 .$$
#
# Newton divides each gradient component by its eigenvalue. Where $h_i < 0$ the saddle is a
# *maximum* along $q_i$: the gradient's component $h_i c_i$ points uphill, towards the saddle,
# and $-g$ points downhill, away from it. Dividing by the negative $h_i$ flips the sign back,
# so Newton's step goes towards the saddle. The saddle-free step divides by $|h_i|$ instead,
#
# $$-|H|^{-1} g = -\sum_i \operatorname{sign}(h_i)\, c_i\, q_i ,$$
#
# which moves to the minimum along every positive direction and *doubles the distance* along
# every negative one — downhill in both. Here is that computation, checked against the
# optimisers' first steps.

# %%
theta0 = torch.tensor(start)
H = toys.hessian(paper, theta0)
g = toys.gradient(paper, theta0)
h, Q = torch.linalg.eigh(H)
c = Q.T @ theta0  # coordinates of θ₀ in the eigenbasis
gradient_components = Q.T @ g  # = h * c for this quadratic
newton_components = -gradient_components / h  # the Newton step in the eigenbasis
sfn_components = -gradient_components / h.abs()  # the saddle-free Newton step

torch.testing.assert_close(theta0 + Q @ newton_components, torch.tensor(runs[1].points[1]))
torch.testing.assert_close(theta0 + Q @ sfn_components, torch.tensor(runs[2].points[1]))
headers = [f"q{i} (h = {float(h[i - 1]):.2f})" for i in (1, 2)]
print(f"{'':>26}{headers[0]:>16}{headers[1]:>16}")
for name, values in [("position c", c), ("gradient h·c", gradient_components),
                     ("Newton step −g/h", newton_components),
                     ("SFN step −g/|h|", sfn_components)]:
    print(f"{name:>26}{values[0]:16.3f}{values[1]:16.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.4))
labels = ["position $c_i$", "gradient $h_i c_i$", "Newton step", "SFN step"]
width = 0.38
for i, color in enumerate(["tab:red", "tab:blue"]):
    values = [c[i], gradient_components[i], newton_components[i], sfn_components[i]]
    ax.bar(np.arange(4) + (i - 0.5) * width, values, width, color=color,
           label=f"along $q_{i + 1}$ ($h_{i + 1}$ = {h[i]:.2f})")
ax.axhline(0, color="k", lw=0.8)
ax.set_xticks(range(4), labels)
ax.set(ylabel="component", title="The first step in the eigenbasis of H")
ax.legend()
plt.show()

# %% [markdown]
# Along $q_1$ (negative curvature, red) the Newton step is $-c_1$: it undoes the position,
# back to the saddle. The SFN step is $+c_1$: it doubles it.

# %% [markdown]
# ## 3. The paper's figure: the series converges to the saddle-free step
#
# The method of this course does not diagonalise $H$. It approximates $|H|^{-1}g$ by a
# truncated series of Hessian-vector products (notebook 03 derives it):
#
# $$\Delta_K = V^{-1/2} \sum_{k<K} a_k v_k,\qquad v_0 = g,\quad
#   v_k = \Big(I - \tfrac{H^2}{V}\Big) v_{k-1},\qquad a_k = \binom{2k}{k}\Big/4^k .$$
#
# Each extra term is a better approximation. The figure reproduces the paper's: gradient
# descent ($\alpha = 0.1$), Newton, exact SFN, and the points $\theta_0 - \Delta_K$ reached by
# one step with $K = 1, 2, \dots$ terms at $V = 25$, which converge to the exact SFN step
# (ringed).

# %%
fig, ax = plots.plot_paper_toy_figure(steps=5, num_terms=SERIES_TERMS, scale=25.0, lr=0.1)
fig

# %%
partial = toys.series_partial_sum_points(paper, start, 200, scale=25.0)
exact_step = toys.exact_step_point(paper, start)
distance = np.linalg.norm(partial - exact_step, axis=1)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.semilogy(np.arange(1, 201), distance)
ax.set(xlabel="number of terms K", ylabel="‖θ₀ − Δ_K − (θ₀ − |H|⁻¹g)‖",
       title="Partial sums converge geometrically (V = 25)")
plt.show()
print(f"distance to the exact step: K = 10: {distance[9]:.2e}, K = 200: {distance[199]:.2e}")

# %% [markdown]
# The rate is $|1 - h^2/V|$ per term for each eigenvalue: here $h^2 \in \{6.8, 21.2\}$ and
# $V = 25$, so the slow component shrinks by $1 - 6.8/25 \approx 0.73$ per term.

# %% [markdown]
# ## 4. More landscapes
#
# A saddle between two minima ($x^4/4 - x^2/2 + y^2/2$), started right above the saddle; the
# monkey saddle ($x^3 - 3xy^2$), where $H = 0$ at the origin; Rosenbrock's valley, which has
# no saddle but whose Hessian is indefinite on part of the plane; and Himmelblau's function.
# Saddle-free Newton takes full steps ($\alpha = 1$) with a little damping, $\lambda = 0.1$;
# Newton gets the same damping.

# %%
landscapes = ["double_well", "monkey", "rosenbrock", "himmelblau"]
ends = {}
fig, axes = plt.subplots(2, 2, figsize=(11, 9.5))
for key, ax in zip(landscapes, axes.flat):
    toy = toys.TOYS[key]
    trajectories = [
        toys.run_trajectory(toy, toy.start, "gd", STEPS, lr=toy.lr),
        toys.run_trajectory(toy, toy.start, "newton", STEPS, damping=0.1),
        toys.run_trajectory(toy, toy.start, "exact_sfn", STEPS, damping=0.1),
    ]
    plots.plot_toy(toy, trajectories, ax=ax, legend=key == "double_well")
    ax.set_title(f"{toy.name}: ${toy.formula}$", fontsize=9)
    if key == "himmelblau":  # Newton's jump onto the saddle is short: point at where it ends
        end = trajectories[1].points[-1]
        ax.annotate(f"Newton ends on the saddle ({end[0]:.2f}, {end[1]:.2f})", end,
                    xytext=(-4.8, 4.3), color=plots.OPTIMIZER_COLORS["newton"], fontsize=8,
                    arrowprops=dict(arrowstyle="->", color=plots.OPTIMIZER_COLORS["newton"]))
    summary = ", ".join(f"{t.label}: f = {t.final_loss:.3g}" for t in trajectories)
    print(f"{key:>12}  {summary}")
    ends[key] = {t.optimizer: t.points[-1] for t in trajectories}
plt.show()


def near(point, target, tolerance=0.05):
    return float(np.linalg.norm(np.asarray(point) - np.asarray(target))) < tolerance


saddle_of_himmelblau = next(c.point for c in toys.TOYS["himmelblau"].critical_points
                            if c.kind == "saddle" and near(c.point, (0.09, 2.88), 0.1))
assert near(ends["double_well"]["newton"], (0, 0)) and near(ends["double_well"]["exact_sfn"], (1, 0))
assert near(ends["himmelblau"]["newton"], saddle_of_himmelblau)
assert near(ends["himmelblau"]["exact_sfn"], (3, 2)) and near(ends["rosenbrock"]["exact_sfn"], (1, 1))
assert near(ends["monkey"]["newton"], (0, 0)) and toys.TOYS["monkey"].f(
    torch.as_tensor(ends["monkey"]["exact_sfn"])) < -100

# %% [markdown]
# Read the four panels as one lesson. On the **double well**, started right above the saddle,
# Newton walks onto the saddle and stays there ($f = 0$), saddle-free Newton leaves it for the
# minimum at $(1, 0)$, and gradient descent is still on its way after these steps: near a
# saddle the gradient is small. On the **monkey saddle** Newton again converges to the saddle,
# while saddle-free Newton and gradient descent run off towards $f \to -\infty$ — the
# function is unbounded below, so leaving is the right thing to do. **Rosenbrock** has no
# saddle: both Newton and saddle-free Newton reach the minimum $(1, 1)$ while gradient descent
# crawls along the valley. On **Himmelblau's function** Newton's first step lands next to the
# saddle at $(0.09, 2.88)$ and it stays there ($f \approx 68$), while saddle-free Newton
# reaches the minimum at $(3, 2)$ and gradient descent heads there more slowly. The assertions
# above check these endings.

# %% [markdown]
# ## 5. Damping: when $|h|$ is tiny
#
# Saddle-free Newton divides by $|h_i|$. Where an eigenvalue passes through zero while the
# gradient does not vanish, the undamped step is huge. On the double well
# $x^4/4 - x^2/2 + y^2/2$ the curvature along $x$ is $3x^2 - 1$, zero at $x = 1/\sqrt{3}
# \approx 0.577$, where the slope is still $x^3 - x \approx -0.38$. The damped direction
# $(|H| + \lambda I)^{-1} g$ divides by $|h_i| + \lambda$ instead: for $|h_i| \gg \lambda$
# nothing changes, for $|h_i| \ll \lambda$ it becomes a gradient step with learning rate
# $1/\lambda$.
# This is Levenberg–Marquardt damping; the optimiser of this course adapts $\lambda$ as it
# goes.

# %%
double_well = toys.TOYS["double_well"]
damping_values = [0.0, 0.01, 0.1, 1.0]
damped_runs = [
    toys.run_trajectory(double_well, (0.58, 0.6), "exact_sfn", STEPS, damping=lam,
                        label=f"exact SFN, λ = {lam:g}")
    for lam in damping_values
]
fig, (ax_contour, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.3))
plots.plot_toy(double_well, damped_runs, ax=ax_contour)
plots.plot_losses(damped_runs, ax=ax_loss)
plt.show()
for lam, run in zip(damping_values, damped_runs):
    first_step = float(np.linalg.norm(run.points[1] - run.points[0]))
    print(f"λ = {lam:<5g} first step {first_step:7.3f} long, f after {run.num_steps} steps "
          f"{run.final_loss:.4f}")

# %%
def steps_to_minimum(run, level=-0.2499):
    return next((i for i, f in enumerate(run.losses) if f < level), None)


reached = {lam: steps_to_minimum(run) for lam, run in zip(damping_values, damped_runs)}
print("steps to f < -0.2499:", reached)
assert reached[1.0] is not None and all(n is None or n >= reached[1.0] for n in reached.values())
assert max(damped_runs[2].losses) > 10 > max(damped_runs[3].losses)

# %% [markdown]
# Without damping the first step is about 40 long — far off the plot — and the run needs
# many steps to come back; $\lambda = 0.01$ halves it. $\lambda = 0.1$ cuts the first step to
# about 3.6, but the loss still jumps to about 60 before the run settles in the minimum at
# $(1, 0)$ ($f = -0.25$). $\lambda = 1$ takes a short first step and is the fastest here:
# where the troublesome eigenvalue is nearly zero and the others are of order one, a damping
# of the size of the curvature is just right. A damping far above every $|h_i|$ would turn the
# method into gradient descent with learning rate $1/\lambda$ — slow; the optimiser of this
# course adapts $\lambda$ to the loss it sees (Levenberg–Marquardt).

# %% [markdown]
# ## 6. The saddle explorer
#
# Pick a problem and a start, tick optimisers, and move the sliders: $K$ (terms of the
# series), $\lambda$ (damping; type a value or use the log-slider; tick "λ = 0" for none),
# $V$ (the series' scale — below $\max_i h_i^2/2$ the series diverges, try it), $r$ (Wynn
# acceleration, notebook 03), the learning rate of the first-order methods and the number of
# steps. Things to try: on the paper's toy, $K = 1$ versus $K = 20$; on the double well, start
# at $(0.001, 1)$ and compare Newton with series SFN. The readout under the figures is their
# key: each run's colour, where it ended, and why it stopped early ("unbounded below" when
# $f \to -\infty$, what a minimiser should do where $f$ has no lower bound; "diverged"
# when a step blew up).

# %%
explorer = SaddleExplorer(problem="paper", steps=STEPS)
explorer.widget

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** On $f = x^2 - y^2$ (the toy `"saddle"`), where does one undamped Newton step
# from $(1, 0.5)$ land? Work it out by hand in the eigenbasis, then check.

# %%
my_newton_point = ...  # (x, y)
exercises.check_newton_step("saddle", (1.0, 0.5), my_newton_point)

# %% [markdown]
# **Exercise 2.** And one undamped saddle-free Newton step from the same point?

# %%
my_sfn_point = ...  # (x, y)
exercises.check_sfn_step("saddle", (1.0, 0.5), my_sfn_point)

# %% [markdown]
# **Exercise 3.** On the double well $x^4/4 - x^2/2 + y^2/2$, what are the signs of the
# eigenvalues of $H$ (smallest first) at $(0.3, 0)$? Where does a Newton step from there land —
# near the saddle or near a minimum? (Then try $(0.5, 0)$, where the curvature has the same
# signs: why does Newton land somewhere else?)

# %%
my_signs = ...  # e.g. ("-", "+")
exercises.check_eigenvalue_signs("double_well", (0.3, 0.0), my_signs)

# %% [markdown]
# ## Summary
#
# * Newton's step $-H^{-1}g$ divides each eigen-component of the gradient by $h_i$; along
#   negative curvature that flips its sign, so Newton is attracted to saddles (on a quadratic
#   saddle it lands on it in one step).
# * Saddle-free Newton's step $-|H|^{-1}g$ divides by $|h_i|$: the same rescaling, always
#   downhill. Damping, $(|H| + \lambda I)^{-1}$, keeps it finite where $|h_i| \to 0$.
# * The series of the next notebook gets $|H|^{-1}g$ without any eigendecomposition, and its
#   partial sums converge to the exact step when every $h^2 \le 2V$.
#
# Next: **03 · The series for the absolute inverse**.
