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
# # 01 · Hessian-vector products
#
# Saddle-free Newton needs curvature, and curvature means the Hessian $H = \nabla^2 f(\theta)$.
# A ResNet-18 has 11 million parameters, so its Hessian would have $10^{14}$ entries: we can
# never form it. What we *can* afford is the product $Hv$ with a vector, at the cost of a
# couple of gradients. Everything in this course is built from that one operation.
#
# **Learning objectives.** After this notebook you can
#
# 1. compute the Hessian of a small function, diagonalise it, and read saddles, minima and
#    maxima from the signs of its eigenvalues;
# 2. derive Pearlmutter's trick, $Hv = \frac{\partial}{\partial r}\nabla f(\theta + r v)\big|_{r=0}$,
#    and implement it with double backward;
# 3. explain the difference between *forward-over-reverse* and *reverse-over-reverse* (double
#    backward) differentiation, and check both against a dense Hessian;
# 4. measure what a Hessian-vector product costs on a real network, as a multiple of a
#    gradient.

# %% tags=["parameters"]
import os

FAST = os.environ.get("SFN_TEACH_FAST") == "1"  # the tests run every notebook in fast mode
SEED = 0
MLP_SIZES = (784, 64, 64, 10) if FAST else (784, 256, 256, 10)  # the cost measurement's MLP
BATCH_SIZE = 64 if FAST else 256
TIMING_REPEATS = 3 if FAST else 15

# %%
import io
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from sfn_teach import exercises, plots, toys
from sfn_teach.hvp import ModelHVP, hvp
from sfn_teach.models import MLP
from sfn_teach.widget_parts import PanelBox, one_at_a_time

# %matplotlib inline
plt.rcParams["figure.constrained_layout.use"] = True  # labels and legends never overlap
torch.manual_seed(SEED)
torch.set_default_dtype(torch.float64)  # exact comparisons below; the timing uses float32

# %% [markdown]
# ## 1. The Hessian of a function of two variables
#
# Take the function of the paper's first figure, $f(x, y) = 2x^2 + 2xy - y^2$. Its gradient is
# $g = (4x + 2y,\; 2x - 2y)$ and its Hessian is constant:
#
# $$H = \begin{pmatrix} 4 & 2 \\ 2 & -2 \end{pmatrix}, \qquad
#   h_{1,2} = 1 \mp \sqrt{13} \approx -2.61,\; 4.61$$
#
# (numbered in ascending order, as `torch.linalg.eigh` returns them).
#
# `torch.func.hessian` differentiates twice; `torch.linalg.eigh` gives the eigenpairs
# $(h_i, q_i)$ with $H = \sum_i h_i q_i q_i^\top$.

# %%
paper = toys.TOYS["paper"]
point = torch.tensor([-0.75, -0.75])
H = torch.func.hessian(paper.f)(point)
eigenvalues, eigenvectors = torch.linalg.eigh(H)
print("H =\n", H)
print("eigenvalues h =", eigenvalues.numpy(), " (1 ± √13 =", 1 - 13**0.5, 1 + 13**0.5, ")")

# %% [markdown]
# One eigenvalue is positive and one negative: along $q_2$ the function curves up, along $q_1$
# it curves down. The origin, where $g = 0$, is therefore a **saddle point**. The arrows show
# the eigenvectors, scaled by $|h_i|$, red for negative curvature.

# %%
fig, ax = plots.plot_eigen_directions(paper, point)
fig

# %% [markdown]
# For a non-quadratic function the Hessian changes from point to point. Himmelblau's function
# has four minima, four saddles and a maximum; move the point with the sliders and watch the
# eigenvalues change sign as you cross from a bowl into a saddle region.

# %%
himmelblau = toys.TOYS["himmelblau"]
slider_style = dict(min=-5.0, max=5.0, step=0.1, continuous_update=False)
x_slider = widgets.FloatSlider(value=0.0, description="x", **slider_style)
y_slider = widgets.FloatSlider(value=2.5, description="y", **slider_style)
hessian_readout = widgets.HTML()
# The figure is shown as PNG bytes in an Image widget, as the explorers of the next notebooks do.
hessian_figure = widgets.Image(format="png")


@one_at_a_time  # JupyterLab may run two sliders' callbacks in two threads: take turns
def show_hessian(_change=None):
    """Redraw the eigen-directions of Himmelblau's Hessian at the sliders' (x, y); show h₁, h₂."""
    x, y = x_slider.value, y_slider.value
    h = torch.linalg.eigvalsh(toys.hessian(himmelblau, (x, y)))
    kind = {2: "minimum-like (bowl)", 0: "maximum-like (cap)", 1: "saddle-like"}[int((h > 0).sum())]
    hessian_readout.value = f"<b>h₁ = {h[0]:.2f}, h₂ = {h[1]:.2f}</b> — {kind}"
    fig, _ = plots.plot_eigen_directions(himmelblau, (x, y))
    png = io.BytesIO()
    fig.savefig(png, format="png")
    hessian_figure.value = png.getvalue()


for slider in (x_slider, y_slider):
    slider.observe(show_hessian, names="value")
show_hessian()
# PanelBox: a VBox that also leaves the figure as a PNG, for viewers without a kernel
PanelBox([x_slider, y_slider, hessian_readout, hessian_figure], lambda: hessian_figure.value)

# %% [markdown]
# ## 2. Pearlmutter's trick
#
# The Hessian is the derivative of the gradient, so its product with $v$ is a *directional
# derivative of the gradient*:
#
# $$Hv = \lim_{r\to 0} \frac{\nabla f(\theta + r v) - \nabla f(\theta)}{r}
#      = \frac{\partial}{\partial r}\nabla f(\theta + r v)\Big|_{r=0}
#      = \nabla_\theta\big(\nabla f(\theta)^\top v\big).$$
#
# The last form is the one we implement: build the gradient $g(\theta)$ *with its own graph*
# (`create_graph=True`), take the scalar $g^\top v$, and differentiate it once more. This is
# called **double backward** (reverse-over-reverse). It never forms $H$: its cost is that of a
# few gradients, whatever the number of parameters (Pearlmutter, 1994).

# %%
def hvp_by_double_backward(f, x, v):
    """Hv = ∇(∇f(x)ᵀv): a gradient with its graph kept, then one more backward pass."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    (hv,) = torch.autograd.grad(g @ v, x)
    return hv


v = torch.tensor([1.0, -0.5])
print("double backward:", hvp_by_double_backward(paper.f, point, v).numpy())
print("dense H @ v:    ", (H @ v).numpy())
torch.testing.assert_close(hvp_by_double_backward(paper.f, point, v), hvp(paper.f, point, v))

# %% [markdown]
# The first form, a finite difference, is how *not* to compute it: with step $\varepsilon$ the
# central difference $\frac{\nabla f(\theta+\varepsilon v) - \nabla f(\theta-\varepsilon v)}
# {2\varepsilon}$ has a truncation error $O(\varepsilon^2)$ (from the third derivatives) and a
# rounding error $O(\epsilon_{\text{mach}}/\varepsilon)$. They balance at
# $\varepsilon \approx \epsilon_{\text{mach}}^{1/3} \approx 6\cdot10^{-6}$, where the error is
# about $\epsilon_{\text{mach}}^{2/3} \approx 10^{-11}$: a central difference keeps about
# two thirds of the 16 digits of float64 at best (a forward difference, with its $O(\varepsilon)$
# truncation, only half). Automatic differentiation is exact to rounding. On Himmelblau's
# function (quartic, so the third derivatives do not vanish):

# %%
theta = torch.tensor([0.3, 2.5])
u = torch.tensor([0.6, 0.8])
exact = hvp(himmelblau.f, theta, u)
grad = torch.func.grad(himmelblau.f)
steps = np.logspace(-12, -1, 45)
errors = [
    float(((grad(theta + e * u) - grad(theta - e * u)) / (2 * e) - exact).norm() / exact.norm())
    for e in steps
]
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.loglog(steps, errors, "o-", ms=3, label="central finite difference")
ax.axhline(float(np.finfo(np.float64).eps), color="k", ls=":", label="float64 machine epsilon")
ax.set(xlabel="step ε", ylabel="relative error of Hv", title="Finite differences vs exact HVP")
ax.legend()
plt.show()
best, best_step = min(errors), steps[int(np.argmin(errors))]
exact_error = float((hvp(himmelblau.f, theta, u, backend="double-backward") - exact).norm()
                    / exact.norm())
print(f"best finite difference: {best:.1e} at ε = {best_step:.0e}; "
      f"double backward against forward-over-reverse: {exact_error:.1e}")
assert 1e-13 < best < 1e-9 and exact_error < 1e-14

# %% [markdown]
# ## 3. Two ways to differentiate twice
#
# Double backward differentiates the *reverse-mode* gradient in reverse mode again. The other
# way is **forward-over-reverse**: push the tangent $v$ forward (forward-mode AD, a JVP)
# through the computation of the gradient, $Hv = \mathrm{jvp}(\nabla f, \theta, v)$. In
# `torch.func` that is one line, `jvp(grad(f), (θ,), (v,))`. The library offers both as
# backends of `sfn_teach.hvp.hvp`; they agree to rounding.

# %%
for backend in ("forward-over-reverse", "double-backward"):
    print(f"{backend:>22}: {hvp(himmelblau.f, theta, u, backend=backend).numpy()}")

# %% [markdown]
# The real test is a network. `ModelHVP` is the operator $v \mapsto Hv$ of a loss
# $f(\theta) = \ell(\text{model}(X;\theta), y)$ on one batch, where $\theta$ are *all* the
# parameters, flattened into one vector. We compare its products with the dense Hessian of a
# small MLP, computed by `torch.autograd.functional.hessian` — which itself needs one HVP per
# column, here a few hundred.

# %%
small_mlp = MLP(sizes=(8, 12, 3), activation="tanh").double()
inputs, targets = torch.randn(40, 8), torch.randint(0, 3, (40,))
loss_fn = torch.nn.functional.cross_entropy
names = [name for name, _ in small_mlp.named_parameters()]
shapes = [p.shape for p in small_mlp.parameters()]
sizes = [p.numel() for p in small_mlp.parameters()]


def loss_of_flat(flat):
    """The loss as a function of the flattened parameter vector θ."""
    pieces = [piece.view(shape) for piece, shape in zip(torch.split(flat, sizes), shapes)]
    outputs = torch.func.functional_call(small_mlp, dict(zip(names, pieces)), (inputs,))
    return loss_fn(outputs, targets)


flat_parameters = torch.cat([p.detach().reshape(-1) for p in small_mlp.parameters()])
dense = torch.autograd.functional.hessian(loss_of_flat, flat_parameters)
direction = torch.randn(flat_parameters.numel())
for backend in ("double-backward", "forward-over-reverse", "linearize"):
    operator = ModelHVP(small_mlp, loss_fn, inputs, targets, backend=backend)
    error = (operator.matvec(direction) - dense @ direction).norm() / (dense @ direction).norm()
    print(f"{backend:>22}: relative error to the dense Hessian {float(error):.1e}")
print(f"{flat_parameters.numel()} parameters, a {dense.shape[0]}×{dense.shape[1]} Hessian")

# %% [markdown]
# While we hold the dense Hessian, look at its spectrum. Even this tiny network at its random
# initialisation has **negative eigenvalues**: the loss surface curves down in some directions.
# Newton's method would be attracted towards such directions' saddles — the subject of the
# next notebook.

# %%
spectrum = torch.linalg.eigvalsh(dense).numpy()
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.hist(spectrum, bins=60, color="tab:blue")
ax.set_yscale("log")
ax.axvline(0, color="tab:red", lw=1)
ax.set(xlabel="eigenvalue h", ylabel="count", title="Hessian spectrum of a small tanh MLP")
plt.show()
print(f"{(spectrum < -1e-8).sum()} of {spectrum.size} eigenvalues are negative; "
      f"h ranges from {spectrum.min():.3g} to {spectrum.max():.3g}")

# %% [markdown]
# ## 4. What does a Hessian-vector product cost?
#
# We time, on an MLP of sizes `MLP_SIZES` with a batch of `BATCH_SIZE` random inputs, in
# float32 on this machine's CPU (medians of several repeats, the variants interleaved):
#
# * one **gradient** (forward + backward): the unit of cost;
# * one HVP **from scratch** by each backend (forward, backward and the extra pass);
# * the **marginal** HVP by double backward when the graph of $g$ is kept and reused — what
#   the series pays per product, since all $2(K-1)$ products of a step share one batch.
#
# The repository's `bench/hvp_cost.py` measures the same on ResNet-18; the README quotes it.

# %%
torch.set_default_dtype(torch.float32)
mlp = MLP(sizes=MLP_SIZES, activation="relu")
x_batch, y_batch = torch.randn(BATCH_SIZE, MLP_SIZES[0]), torch.randint(0, 10, (BATCH_SIZE,))
vector = torch.randn(sum(p.numel() for p in mlp.parameters()))


def gradient_once():
    mlp.zero_grad()
    loss_fn(mlp(x_batch), y_batch).backward()


def hvp_from_scratch(backend):
    return lambda: ModelHVP(mlp, loss_fn, x_batch, y_batch, backend=backend).matvec(vector)


retained = ModelHVP(mlp, loss_fn, x_batch, y_batch, backend="double-backward")
variants = {
    "gradient": gradient_once,
    "HVP, double backward, from scratch": hvp_from_scratch("double-backward"),
    "HVP, forward-over-reverse, from scratch": hvp_from_scratch("forward-over-reverse"),
    "HVP, double backward, marginal (graph reused)": lambda: retained.matvec(vector),
}
times = {name: [] for name in variants}
for run in variants.values():  # warm-up
    run()
for _ in range(TIMING_REPEATS):
    for name, run in variants.items():
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)
medians = {name: float(np.median(t)) for name, t in times.items()}
ratios = {name: medians[name] / medians["gradient"] for name in variants}
for name, ratio in ratios.items():
    print(f"{name:>46}: {1e3 * medians[name]:7.2f} ms = {ratio:4.2f} gradients")

fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.barh(list(ratios)[::-1], list(ratios.values())[::-1], color="tab:blue")
ax.axvline(1.0, color="k", lw=0.8)
ax.set(xlabel="cost in gradients (median)", title=f"Cost of an HVP, MLP {MLP_SIZES}, CPU")
plt.show()

# %% [markdown]
# Read the numbers the cell printed: a from-scratch HVP costs a few gradients (a forward pass,
# a backward pass that keeps its graph, and one more backward), and a marginal one, on the
# kept graph, between one and two gradients (one backward pass through the graph of $g$, which
# is about as long as the forward and backward passes together; ResNet-18 on a CPU needs 2–3,
# `bench/hvp_cost.py`). The numbers depend on the machine, the threads and the
# model, and jump around on a busy shared machine — that is why we take medians. A saddle-free
# Newton step with $K$ terms costs one gradient plus $2(K-1)$ marginal HVPs: with $K = 5$ and a
# marginal HVP of 2 gradients, 17 gradients. Notebook 03 shows why a handful of terms can
# still pay off.

# %% [markdown]
# ## Exercises
#
# Each exercise has a check that tells you whether your answer is right, without giving it
# away. Replace the `...` and run the cell.
#
# **Exercise 1.** Implement Pearlmutter's trick yourself: a function `my_hvp(f, x, v)` that
# returns $Hv$ for a scalar function `f` of a 1-D tensor `x`, *without* forming $H$.

# %%
def my_hvp(f, x, v):
    ...  # your code here


exercises.check_hvp(my_hvp)

# %% [markdown]
# **Exercise 2.** At the point $(0.1, 2.9)$ of Himmelblau's function, what are the signs of
# the two eigenvalues of the Hessian, smallest first? Answer with a pair like `("+", "+")`
# — reason from the contour plot above, then check.

# %%
my_signs = ...  # e.g. ("-", "+")
exercises.check_eigenvalue_signs("himmelblau", (0.1, 2.9), my_signs)

# %% [markdown]
# **Exercise 3.** Now the other way round: implement `my_jvp_hvp(f, x, v)` by
# forward-over-reverse, as the jvp of the gradient function, using `torch.func.jvp` and
# `torch.func.grad`.

# %%
def my_jvp_hvp(f, x, v):
    ...  # your code here


exercises.check_hvp(my_jvp_hvp)

# %% [markdown]
# ## Summary
#
# * The Hessian's eigenvalues classify a critical point: all positive — a minimum; mixed
#   signs — a saddle. Networks have negative eigenvalues even at initialisation.
# * $Hv = \nabla(\nabla f^\top v)$ costs a few gradients and never forms $H$ (Pearlmutter).
#   Double backward and forward-over-reverse give the same product.
# * Keeping the graph of the gradient makes each further product cheaper: that is how the
#   series of the next notebooks takes its $2(K-1)$ products per step.
# * Finite differences are not a substitute: a central difference keeps at best about two
#   thirds of the digits (a forward difference half), and only at the right step.
#
# Next: **02 · Saddles in 2-D** — why Newton's method walks into saddles and how
# $|H|^{-1}$ fixes it.
