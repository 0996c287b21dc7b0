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
# # 03 · A series of Hessian-vector products for $|H|^{-1}g$
#
# Notebook 02 needed the eigendecomposition of $H$ to take a saddle-free Newton step. For a
# network we only have products $v \mapsto Hv$ (notebook 01). This notebook derives the series
# of Oldewage, Clarke and Hernández-Lobato (2024) that turns those products into
# $(|H| + \lambda I)^{-1} g$, and looks at it the way that explains everything about it: as a
# polynomial *filter* applied to each eigenvalue.
#
# **Learning objectives.** After this notebook you can
#
# 1. derive the series $|H|^{-1} = V^{-1/2} \sum_k a_k (I - H^2/V)^k$ from the binomial series
#    of $(1 - x)^{-1/2}$, and compute it with $2(K-1)$ Hessian-vector products;
# 2. state and demonstrate its convergence condition $h^2 \le 2V$ for every eigenvalue;
# 3. add damping with coefficients that stay accurate for every $\lambda$, and explain why
#    the obvious recurrence does not;
# 4. read the truncated series as a spectral filter $\varphi_K(h)$, and explain why
#    directions of small curvature converge slowly (truncation acts as damping);
# 5. accelerate the series with Wynn's ε-algorithm and measure the gain;
# 6. run the resulting optimiser, `SeriesSFN`, on the 2-D toys.

# %% tags=["parameters"]
import os

FAST = os.environ.get("SFN_TEACH_FAST") == "1"
SEED = 0
MATRIX_SIZE = 100  # the random Hessian of section 6
MAX_TERMS = 60 if FAST else 200  # longest series in the convergence plots
SLOW_TERMS = (5, 10, 100, 1000) if FAST else (5, 10, 100, 1000, 3000)  # section 5
TOY_STEPS = 10 if FAST else 30

# %%
import sfn_teach.cpu  # first, before torch starts: how its CPU threads wait

import math
from fractions import Fraction

import matplotlib.pyplot as plt
import mpmath
import numpy as np
import torch

from sfn_teach import exercises, plots, toys
from sfn_teach.series import (
    exact_sfn_direction,
    series_coefficients,
    sfn_direction,
    spectral_filter,
)
from sfn_teach.widgets import FilterExplorer, SaddleExplorer

# %matplotlib inline
plt.rcParams["figure.constrained_layout.use"] = True  # labels and legends never overlap
print(sfn_teach.cpu.status())  # what sfn-teach will compute with
torch.set_default_dtype(torch.float64)
generator = torch.Generator().manual_seed(SEED)


def random_symmetric(eigenvalues):
    """Q diag(h) Qᵀ with a random orthogonal Q: a Hessian whose spectrum we choose."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


# %% [markdown]
# ## 1. The binomial series of $(1 - x)^{-1/2}$
#
# Newton's generalised binomial theorem gives, for $|x| < 1$,
#
# $$(1 - x)^{-1/2} = \sum_{k\ge 0} a_k x^k, \qquad a_k = \binom{2k}{k}\frac{1}{4^k}
#   = a_{k-1}\,\frac{2k-1}{2k}, \qquad a_0 = 1 .$$
#
# The coefficients $1, \tfrac12, \tfrac38, \tfrac5{16}, \dots$ decay only like
# $1/\sqrt{\pi k}$: near $x = 1$ the series converges slowly, and at $x = 1$ it diverges.

# %%
a = series_coefficients(8)
print("a_k =", [f"{float(mpmath.binomial(2 * k, k) / 4**k):.4f}" for k in range(8)])
print("lib =", [f"{value:.4f}" for value in a.tolist()])

x = np.linspace(-0.999, 0.95, 400)
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.plot(x, (1 - x) ** -0.5, "k", lw=2.5, label="$(1-x)^{-1/2}$")
for terms in (1, 2, 4, 10, 40):
    coefficients = series_coefficients(terms).numpy()
    ax.plot(x, np.polynomial.polynomial.polyval(x, coefficients), label=f"{terms} terms")
ax.set(xlabel="x", ylabel="value", ylim=(0, 5), title="Partial sums of the binomial series")
ax.legend()
plt.show()

# %% [markdown]
# ## 2. From $|H| = (H^2)^{1/2}$ to a series of products
#
# For an eigenvalue $h$ write $\frac{1}{|h|} = (h^2)^{-1/2} = V^{-1/2}\,(1 - x)^{-1/2}$ with
# $x = 1 - h^2/V$, for some **scale** $V > 0$. Since every eigenvalue of $H$ gets the same
# polynomial, the matrix version holds with $X = I - H^2/V$:
#
# $$|H|^{-1} g = V^{-1/2} \sum_{k\ge0} a_k X^k g = V^{-1/2} \sum_k a_k v_k,
#   \qquad v_0 = g,\quad v_k = v_{k-1} - \frac{H(Hv_{k-1})}{V} .$$
#
# Each term costs **two** Hessian-vector products; $K$ terms cost $2(K-1)$. Below is the
# series written out in a few lines, checked against the library's `sfn_direction`.

# %%
def series_by_hand(hvp, g, num_terms, scale):
    """Δ_K = V^(-½) Σ_{k<K} a_k v_k with v_0 = g, v_k = v_{k−1} − H(Hv_{k−1})/V."""
    a_k, v, total = 1.0, g, g.clone()
    for k in range(1, num_terms):
        v = v - hvp(hvp(v)) / scale
        a_k *= (2 * k - 1) / (2 * k)
        total = total + a_k * v
    return total / math.sqrt(scale)


H = random_symmetric([-3.0, -1.5, -1.0, 1.0, 2.0, 4.0])
g = torch.randn(6, generator=generator)
V = 16.0  # = λ_max(H)², so every h² ≤ V < 2V
exact = exact_sfn_direction(H, g)
for terms in (5, 20, 80):
    mine = series_by_hand(lambda v: H @ v, g, terms, V)
    torch.testing.assert_close(mine, sfn_direction(lambda v: H @ v, g, num_terms=terms, scale=V))
    error = float((mine - exact).norm() / exact.norm())
    print(f"{terms:3d} terms ({2 * (terms - 1):3d} HVPs): relative error to |H|⁻¹g = {error:.2e}")

# %% [markdown]
# ## 3. The convergence condition $h^2 \le 2V$
#
# The power series in $x$ converges for $|x| \le 1$, $x \ne 1$. With $x = 1 - h^2/V$ that is
# $0 < h^2 \le 2V$ for every eigenvalue. Choose $V$ too small and the component along the
# largest $|h|$ is multiplied by $|1 - h^2/V| > 1$ at every term: the series diverges
# geometrically. The library reports it: the terms $\|v_k\|$ can only shrink when all
# $h^2 \le 2V$, so a growing term proves divergence.

# %%
fig, ax = plt.subplots(figsize=(6, 3.8))
for scale in (16.0, 8.0, 7.0):
    info = {}
    sfn_direction(lambda v: H @ v, g, num_terms=40, scale=scale, diagnostics=info)
    verdict = "diverging" if info["diverging"] else "converging"
    ax.semilogy(info["partial_sum_norms"],
                label=f"V = {scale:g} ($\\sqrt{{2V}}$ = {math.sqrt(2 * scale):.2f}): {verdict}")
ax.axhline(float(exact.norm()), color="k", ls=":", label="‖|H|⁻¹g‖")
ax.set(xlabel="term k", ylabel="‖V^(-1/2) S_k‖", title="max |h| = 4: the series needs 2V ≥ 16")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The paper's optimiser estimates $V$ cheaply from the first term,
# $V_t = \max(V_{t-1}, \|H^2 g\|/\|g\|)$, which is only a *lower* bound of
# $\lambda_{\max}(H^2)$ — it can be too small, and then the optimiser reports a divergence.
# `SeriesSFN(scale_rule="power")` instead estimates $\max|h|$ by power iteration.

# %% [markdown]
# ## 4. Damping, and coefficients that stay accurate
#
# With damping $\lambda$ the target is $(|h| + \lambda)^{-1}$. With $d = \lambda/\sqrt V$:
#
# $$\frac{1}{|h| + \lambda} = V^{-1/2}\, \frac{1}{\sqrt{1 - x} + d} = V^{-1/2} \sum_k c_k x^k .$$
#
# The $c_k$ are the Taylor coefficients of $1/(\sqrt{1-x} + d)$. Writing
# $\sqrt{1 - x} = \sum_j b_j x^j$ ($b_0 = 1$, $b_j < 0$ for $j \ge 1$), **power-series
# division** gives
#
# $$c_0 = \frac{1}{1+d}, \qquad c_k = -\frac{1}{1+d}\sum_{j=1}^{k} b_j\, c_{k-j},$$
#
# a sum of positive terms, accurate to a few ulps. The reference code uses the equivalent
# recurrence $c_k = -(c_{k-1} + b_k)/(d^2 - 1)$, which divides by $d^2 - 1$: singular at
# $\lambda^2 = V$, and it amplifies rounding by about $|d^2-1|^{-k}$. Compare both with the
# exact coefficients, computed in rational arithmetic (Python's `fractions`: no rounding at
# all, so the truth does not inherit the recurrence's amplification):

# %%
def reference_recurrence(num_terms, d):
    """The reference code's c_k = −(c_{k−1} + b_k)/(d² − 1), in float64."""
    b = [1.0]
    for j in range(1, num_terms):
        b.append(b[-1] * (j - 1.5) / j)
    c = [1 / (1 + d)]
    for k in range(1, num_terms):
        c.append(-(c[-1] + b[k]) / (d * d - 1))
    return np.array(c)


def exact_coefficients(num_terms, d):
    """c_k exactly, in rationals: d is the float's exact binary value, b_j = b_{j−1}(j − 3/2)/j."""
    d = Fraction(d)
    b = [Fraction(1)]
    for j in range(1, num_terms + 1):
        b.append(b[-1] * (j - Fraction(3, 2)) / j)
    if d == 1:  # 1/(1 + √(1−x)) = (1 − √(1−x))/x
        return np.array([float(-b[k + 1]) for k in range(num_terms)])
    c = [1 / (1 + d)]
    for k in range(1, num_terms):  # exact arithmetic: the division by d² − 1 costs nothing
        c.append(-(c[-1] + b[k]) / (d * d - 1))
    return np.array([float(value) for value in c])


ds = [0.0, 0.3, 0.6, 0.9, 0.99, 1.0, 1.5, 3.0]
stable, unstable = [], []
for d in ds:
    truth = exact_coefficients(40, d)
    ours = series_coefficients(40, damping=d, scale=1.0).numpy()
    stable.append(np.max(np.abs(ours - truth) / np.abs(truth)))
    if d != 1.0:  # the recurrence divides by d² − 1 = 0 there
        theirs = reference_recurrence(40, d)
        unstable.append(np.max(np.abs(theirs - truth) / np.abs(truth)))
positions = np.arange(len(ds))  # equally spaced, so that d = 0.99 and d = 1 stand apart
fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.semilogy(positions, np.maximum(stable, 1e-17), "o-", label="power-series division (ours)")
ax.semilogy([p for p, d in zip(positions, ds) if d != 1.0], unstable, "s--",
            label="reference recurrence")
ax.axvline(ds.index(1.0), color="tab:red", lw=0.8, ls=":", label="λ² = V: division by zero")
ax.axhline(np.finfo(np.float64).eps, color="k", lw=0.6, ls="--", label="float64 epsilon")
ax.set_xticks(positions, [f"{d:g}" for d in ds])
ax.set(xlabel="d = λ/√V (not to scale)", ylabel="max relative error of c_0..c_39",
       title="Accuracy of the damped coefficients, K = 40")
ax.legend(fontsize=8)
plt.show()
print(f"at d = 0.9: ours {stable[3]:.1e}, reference recurrence {unstable[3]:.1e}; "
      f"at d = 0.99: ours {stable[4]:.1e}, reference recurrence {unstable[4]:.1e}")
assert max(stable) < 1e-14 and unstable[4] > 1e10

# %% [markdown]
# ## 5. The series as a spectral filter
#
# Truncated after $K$ terms, the series multiplies the component of $g$ along each
# eigenvector $q_i$ by the same polynomial,
#
# $$\varphi_K(h) = V^{-1/2} \sum_{k<K} c_k \Big(1 - \frac{h^2}{V}\Big)^k ,$$
#
# so $\Delta_K = \sum_i \varphi_K(h_i)\,(q_i^\top g)\, q_i$. Everything about the series can be
# read off this one picture: the target $1/(|h| + \lambda)$; the filter approaching it as $K$
# grows; the convergence limit $|h| = \sqrt{2V}$ beyond which it blows up; and the region
# near $h = 0$ where it converges slowly.

# %%
fig, (ax_filter, ax_error) = plt.subplots(1, 2, figsize=(11.5, 4.2))
plots.plot_spectral_filter([1, 3, 10, 30], scale=25.0, damping=0.1, ax=ax_filter)
plots.plot_filter_error([1, 3, 10, 30, 100], scale=25.0, damping=0.1, ax=ax_error)
plt.show()

# %% [markdown]
# Near $h = 0$ the relative error falls only slowly. With $\lambda = 0$ the filter at
# $h = 0$ is $V^{-1/2}\sum_{k<K} a_k \approx 2\sqrt{K/(\pi V)}$: finite, whereas the target
# $1/|h|$ is infinite. The truncation acts as an **implicit damping**
# $\lambda_{\text{eff}} \approx \tfrac12\sqrt{\pi V/K}$, shrinking only like $K^{-1/2}$. On a
# Hessian with eigenvalues spread evenly down to $10^{-3}$ (and $V = 100$) the undamped
# direction is still far from $|H|^{-1}g$ after thousands of terms. Damping makes the target
# finite, so the relative error does fall — still slowly: the optimiser lives with an
# approximate direction, and the truncation is part of its damping.

# %%
spectrum = torch.linspace(1e-3, 10.0, 50) * torch.where(torch.arange(50) % 2 == 0, 1.0, -1.0)
H_wide = random_symmetric(spectrum)
g_wide = torch.randn(50, generator=generator)
V_wide = float(spectrum.abs().max() ** 2)
print(f"{'K':>6} {'rel. error, λ = 0':>20} {'rel. error, λ = 1':>20} {'implicit λ':>12}")
slow = {}
for terms in SLOW_TERMS:
    errors = []
    for damping in (0.0, 1.0):
        target = exact_sfn_direction(H_wide, g_wide, damping)
        approx = sfn_direction(lambda v: H_wide @ v, g_wide, terms, V_wide, damping)
        errors.append(float((approx - target).norm() / target.norm()))
    implicit = 1 / float(spectral_filter(torch.tensor([0.0]), terms, V_wide))
    print(f"{terms:>6} {errors[0]:>20.3f} {errors[1]:>20.3f} {implicit:>12.3f}")
    slow[terms] = errors
assert slow[SLOW_TERMS[-1]][0] > 0.9 and slow[10][1] > 0.3  # the lesson below

# %% [markdown]
# The lesson of this table: **a handful of terms is not exact SFN.** Without damping, even
# thousands of terms leave the direction almost entirely wrong (a relative error above 0.9):
# the components along the tiny eigenvalues, which $1/|h|$ weighs most, are exactly those the
# truncated series cannot resolve. With $\lambda = 1$ the error falls, but at $K = 10$ — the
# range an optimiser can afford, 18 Hessian-vector products per step — it is still about
# half. What an optimiser with $K = 5$–$10$ computes is a *damped* saddle-free direction
# whose damping is at least the implicit one in the last column: SFN for the large
# eigenvalues, gradient descent for the small ones (notebook 04 measures what that means on a
# network).

# %% [markdown]
# Drag the sliders: $K$, $\lambda$, $V$ and the acceleration order $r$ (section 6), and the
# kind (`quasi-damped` targets $(h^2 + \lambda)^{-1/2}$ instead). The readout is the largest
# relative error for $\sqrt{2V}/10 \le |h| \le \sqrt{2V}$.

# %%
filter_explorer = FilterExplorer(num_terms=5, scale=25.0, damping=0.1)
filter_explorer.widget

# %% [markdown]
# ## 6. Wynn's ε-algorithm
#
# The partial sums $S_0, S_1, \dots$ converge slowly when some $|h|$ is small. Wynn's vector
# ε-algorithm extrapolates a sequence from its last $2r+1$ terms: with
# $\varepsilon_{-1}^{(m)} = 0$, $\varepsilon_0^{(m)} = S_m$ and the Samelson inverse
# $w^{-1} = w / (w^\top w)$,
#
# $$\varepsilon_{s}^{(m)} = \varepsilon_{s-2}^{(m+1)} + \sigma_s \big(\varepsilon_{s-1}^{(m+1)}
#   - \varepsilon_{s-1}^{(m)}\big)^{-1},$$
#
# and $\varepsilon_{2r}$ is the accelerated sum. $\sigma_s = 1$ is the plain algorithm (the
# published runs); $\sigma_s = \lfloor s/2\rfloor + 1$ is Sablonnière's modification for
# logarithmically convergent sequences. Order 1 sums any sequence $S + a q^n$ exactly. It costs
# no extra Hessian-vector products. Here it is on a random $100 \times 100$ indefinite
# Hessian with $V = \lambda_{\max}^2$:

# %%
magnitudes = torch.logspace(-1, 1, MATRIX_SIZE)
signs = torch.where(torch.rand(MATRIX_SIZE, generator=generator) < 0.5, -1.0, 1.0)
H_big = random_symmetric(magnitudes * signs)
g_big = torch.randn(MATRIX_SIZE, generator=generator)
terms_list = list(range(5, MAX_TERMS + 1, 5))
fig, axes = plots.plot_direction_convergence(
    H_big, g_big, terms_list, scale=100.0, damping=0.01, orders=(0, 1, 2),
    sablonniere=(False, True),
)
fig

# %%
cosines = {}
for order, sablonniere in [(0, False), (2, False), (2, True)]:
    direction = sfn_direction(lambda v: H_big @ v, g_big, 20, 100.0, 0.01,
                              acceleration_order=order, sablonniere=sablonniere)
    target = exact_sfn_direction(H_big, g_big, 0.01)
    cosines[(order, sablonniere)] = float(direction @ target / (direction.norm() * target.norm()))
print("cosine similarity to the exact direction at K = 20:")
for (order, sablonniere), value in cosines.items():
    name = "no acceleration" if order == 0 else f"r = {order}" + (", Sablonnière" if
                                                                   sablonniere else ", plain")
    print(f"  {name:>22}: {value:.4f}")

# %% [markdown]
# ## 7. The optimiser on the toys
#
# `SeriesSFN` puts it together: at each step the gradient, the series with $K$ terms (and
# optional acceleration), damping, and the update $\theta \leftarrow \theta - \alpha\Delta$.
# On the paper's toy with $V = 25$, a handful of terms already escapes the saddle like exact
# SFN; one term is just gradient descent with step $1/(\sqrt V + \lambda)$.

# %%
paper = toys.TOYS["paper"]
series_runs = [
    toys.run_trajectory(paper, paper.start, "series_sfn", TOY_STEPS, num_terms=k, scale=25.0,
                        damping=0.0, label=f"series SFN, K = {k}")
    for k in (1, 3, 10)
] + [toys.run_trajectory(paper, paper.start, "exact_sfn", TOY_STEPS)]
fig, (ax_contour, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.3))
plots.plot_toy(paper, series_runs, ax=ax_contour)
plots.plot_losses(series_runs, ax=ax_loss)
plt.show()

# %% [markdown]
# Now the explorer with series SFN and exact SFN side by side. Move $K$ and $\lambda$; set
# $V$ below the limit the panel tells you and watch the series diverge.

# %%
series_explorer = SaddleExplorer(problem="double_well", optimizers=("exact_sfn", "series_sfn"),
                                 num_terms=5, damping=0.1, steps=TOY_STEPS)
series_explorer.widget

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** Write `my_coefficients(num_terms, d)` returning the damped coefficients
# $c_0, \dots, c_{K-1}$ of $1/(\sqrt{1-x} + d)$ as a tensor, by power-series division. It must
# work for $d = 1$.

# %%
def my_coefficients(num_terms, d):
    ...  # your code here


exercises.check_coefficients(my_coefficients)

# %% [markdown]
# **Exercise 2.** For $V = 25$, up to which $|h|$ does the series converge?

# %%
my_limit = ...
exercises.check_filter_limit(25.0, my_limit)

# %% [markdown]
# **Exercise 3.** Write the damped series `my_series(hvp, grad, num_terms, scale, damping)`
# (no acceleration), using your coefficients or the library's `series_coefficients`.

# %%
def my_series(hvp, grad, num_terms, scale, damping):
    ...  # your code here


exercises.check_series_direction(my_series)

# %% [markdown]
# **Exercise 4 (harder).** Implement Wynn's vector ε-algorithm, `my_wynn(partial_sums, order)`,
# on the last $2r + 1$ partial sums, with the Samelson inverse.

# %%
def my_wynn(partial_sums, order):
    ...  # your code here


exercises.check_wynn(my_wynn)

# %% [markdown]
# ## Summary
#
# * $|H|^{-1} = (H^2)^{-1/2} = V^{-1/2}\sum_k a_k (I - H^2/V)^k$: only products with $H$, two
#   per term; it converges to the exact saddle-free direction iff every $h^2 \le 2V$.
# * Damping $\lambda$ enters through the coefficients of $1/(\sqrt{1-x} + \lambda/\sqrt V)$;
#   power-series division computes them accurately for every $\lambda$ (the obvious
#   recurrence fails near $\lambda^2 = V$).
# * The truncated series is a polynomial filter $\varphi_K(h)$ on the spectrum: accurate for
#   mid-sized $|h|$, exploding beyond $\sqrt{2V}$, and slow near $h = 0$, where truncation
#   acts as an implicit damping $\approx \tfrac12\sqrt{\pi V/K}$.
# * Wynn's ε-algorithm extrapolates the partial sums for free (no extra products).
#
# Next: **04 · Series SFN on a small network** — the same comparison on a real network whose
# exact Hessian we can still compute.
