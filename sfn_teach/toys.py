"""Two-dimensional test functions and a runner for optimisation trajectories on them.

A :class:`Toy` is a function ``f(θ)`` of ``θ = (x, y)`` with what a figure needs: a LaTeX
formula, a plotting box, its critical points (``∇f = 0``) labelled by the signs of the
eigenvalues ``h_1 ≤ h_2`` of the Hessian ``H = ∇²f`` there (minimum: both positive; maximum:
both negative; saddle: one of each; monkey saddle: ``H = 0`` with a cubic that falls away in
three directions), a default start, and a default scale ``V`` for the series.

:func:`run_trajectory` runs any optimiser of the library or of ``torch.optim`` from a start,
in float64, and returns the points ``θ_0, …, θ_n``, the losses ``f(θ_t)`` and the per-step
statistics. A step that diverges stops the run with a reason instead of raising, so a student
who drags a slider too far sees "diverged after n steps".

:func:`series_partial_sum_points` gives the points ``θ_0 − V^(-½) S_j`` that the partial sums
of the series reach in one step from ``θ_0`` (the paper's toy figure): they converge to the
exact saddle-free Newton step ``θ_0 − (|H| + λI)⁻¹ g`` when every ``h² ≤ 2V``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .optim import ExactSFN, Newton, NonFiniteStepError, SeriesSFN
from .series import exact_sfn_direction, series_coefficients, sfn_direction

CRITICAL_KINDS = ("minimum", "maximum", "saddle", "monkey saddle")

#: a run stops (as diverged) once ``‖θ‖`` exceeds this
DIVERGENCE_RADIUS = 1e6


# --------------------------------------------------------------------------------------------
# The toys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalPoint:
    """A point where ``∇f = 0``, and its ``kind`` (one of :data:`CRITICAL_KINDS`)."""

    point: tuple[float, float]
    kind: str

    def __post_init__(self):
        if self.kind not in CRITICAL_KINDS:
            raise ValueError(f"kind must be one of {CRITICAL_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Toy:
    """A 2-D test function ``f(θ)``, ``θ = (x, y)``, and what is known about it.

    Attributes:
        key: its name in :data:`TOYS`.
        name: a human-readable name.
        formula: ``f`` in LaTeX (without dollar signs).
        f: the torch function of a length-2 tensor ``xy`` (any float dtype) returning a scalar.
        derivatives: ``(x, y) ↦ (f, (∂f/∂x, ∂f/∂y), (∂²f/∂x², ∂²f/∂x∂y, ∂²f/∂y²))`` by hand, on
            Python floats: what :func:`run_trajectories` steps with (no autograd graph).
        box: the plotting box ``((x_min, x_max), (y_min, y_max))``.
        critical_points: every critical point in the box, with its kind.
        start: the default start ``θ_0``.
        scale: a default ``V`` for the series, at least ``max h²/2`` over the box's interesting
            part (the start and the critical points), so that the series converges there.
        lr: a learning rate ``α`` with which gradient descent from ``start`` is stable
            (``α < 2/h_max`` near the start).

    Calling the toy calls ``f``: ``toy(xy) == toy.f(xy)``.
    """

    key: str
    name: str
    formula: str
    f: Callable[[torch.Tensor], torch.Tensor]
    derivatives: Callable[[float, float], tuple]
    box: tuple[tuple[float, float], tuple[float, float]]
    critical_points: tuple[CriticalPoint, ...]
    start: tuple[float, float]
    scale: float
    lr: float

    def __call__(self, xy: torch.Tensor) -> torch.Tensor:
        return self.f(xy)


def _paper(xy):
    x, y = xy[0], xy[1]
    return 2 * x**2 + 2 * x * y - y**2


def _paper_derivatives(x, y):
    return 2 * x**2 + 2 * x * y - y**2, (4 * x + 2 * y, 2 * x - 2 * y), (4.0, 2.0, -2.0)


def _saddle(xy):
    x, y = xy[0], xy[1]
    return x**2 - y**2


def _saddle_derivatives(x, y):
    return x**2 - y**2, (2 * x, -2 * y), (2.0, 0.0, -2.0)


def _monkey(xy):
    x, y = xy[0], xy[1]
    return x**3 - 3 * x * y**2


def _monkey_derivatives(x, y):
    return x**3 - 3 * x * y**2, (3 * x**2 - 3 * y**2, -6 * x * y), (6 * x, -6 * y, -6 * x)


def _double_well(xy):
    x, y = xy[0], xy[1]
    return x**4 / 4 - x**2 / 2 + y**2 / 2


def _double_well_derivatives(x, y):
    return x**4 / 4 - x**2 / 2 + y**2 / 2, (x**3 - x, y), (3 * x**2 - 1, 0.0, 1.0)


#: Rosenbrock's parameters: ``b = 10`` instead of the classic 100, so that gradient descent
#: makes visible progress in 100 steps (the curvature across the valley is ~10× smaller)
ROSENBROCK_A, ROSENBROCK_B = 1.0, 10.0


def _rosenbrock(xy):
    x, y = xy[0], xy[1]
    return (ROSENBROCK_A - x) ** 2 + ROSENBROCK_B * (y - x**2) ** 2


def _rosenbrock_derivatives(x, y):
    a, b, valley = ROSENBROCK_A, ROSENBROCK_B, y - x**2
    return (
        (a - x) ** 2 + b * valley**2,
        (-2 * (a - x) - 4 * b * x * valley, 2 * b * valley),
        (2 - 4 * b * valley + 8 * b * x**2, -4 * b * x, 2 * b),
    )


def _himmelblau(xy):
    x, y = xy[0], xy[1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _himmelblau_derivatives(x, y):
    u, w = x**2 + y - 11, x + y**2 - 7
    return (
        u**2 + w**2,
        (4 * x * u + 2 * w, 2 * u + 4 * y * w),
        (12 * x**2 + 4 * y - 42, 4 * x + 4 * y, 4 * x + 12 * y**2 - 26),
    )


def _points(kind, *points):
    return tuple(CriticalPoint(point, kind) for point in points)


_TOY_LIST = (
    Toy(
        key="paper", name="the paper's toy saddle", formula=r"2x^2 + 2xy - y^2", f=_paper,
        derivatives=_paper_derivatives,
        box=((-2.0, 2.0), (-2.0, 2.0)), critical_points=_points("saddle", (0.0, 0.0)),
        start=(-0.75, -0.75), scale=25.0, lr=0.1,
    ),
    Toy(
        key="saddle", name="a quadratic saddle", formula=r"x^2 - y^2", f=_saddle,
        derivatives=_saddle_derivatives,
        box=((-1.5, 1.5), (-1.5, 1.5)), critical_points=_points("saddle", (0.0, 0.0)),
        start=(1.0, 0.05), scale=4.0, lr=0.1,
    ),
    Toy(
        key="monkey", name="the monkey saddle", formula=r"x^3 - 3xy^2", f=_monkey,
        derivatives=_monkey_derivatives,
        box=((-1.5, 1.5), (-1.5, 1.5)), critical_points=_points("monkey saddle", (0.0, 0.0)),
        start=(0.8, 0.05), scale=50.0, lr=0.1,
    ),
    Toy(
        key="double_well", name="a saddle between two minima",
        formula=r"\frac{x^4}{4} - \frac{x^2}{2} + \frac{y^2}{2}", f=_double_well,
        derivatives=_double_well_derivatives,
        box=((-2.0, 2.0), (-1.5, 1.5)),
        critical_points=_points("minimum", (-1.0, 0.0), (1.0, 0.0))
        + _points("saddle", (0.0, 0.0)),
        start=(0.02, 1.2), scale=25.0, lr=0.1,
    ),
    Toy(
        key="rosenbrock", name=f"Rosenbrock's valley (a = {ROSENBROCK_A:g}, b = {ROSENBROCK_B:g})",
        formula=rf"({ROSENBROCK_A:g} - x)^2 + {ROSENBROCK_B:g}\,(y - x^2)^2", f=_rosenbrock,
        derivatives=_rosenbrock_derivatives,
        box=((-2.0, 2.0), (-1.0, 3.0)),
        critical_points=_points("minimum", (ROSENBROCK_A, ROSENBROCK_A**2)),
        start=(-1.5, 2.5), scale=25000.0, lr=0.005,
    ),
    Toy(
        key="himmelblau", name="Himmelblau's function",
        formula=r"(x^2 + y - 11)^2 + (x + y^2 - 7)^2", f=_himmelblau,
        derivatives=_himmelblau_derivatives,
        box=((-5.0, 5.0), (-5.0, 5.0)),
        critical_points=_points(
            "minimum",
            (3.0, 2.0),
            (-2.805118086952745, 3.131312518250573),
            (-3.779310253377747, -3.2831859912861696),
            (3.5844283403304917, -1.8481265269644034),
        )
        + _points("maximum", (-0.2708445906673476, -0.9230385564799815))
        + _points(
            "saddle",
            (0.08667750455539634, 2.884254701174776),
            (-3.0730257507643897, -0.08135304428796751),
            (3.385154183607021, 0.07385187983774928),
            (-0.12796134673068005, -1.9537149802445766),
        ),
        start=(0.3, 2.5), scale=10000.0, lr=0.01,
    ),
)

#: every toy by its key: ``"paper"``, ``"saddle"``, ``"monkey"``, ``"double_well"``,
#: ``"rosenbrock"``, ``"himmelblau"``
TOYS: dict[str, Toy] = {toy.key: toy for toy in _TOY_LIST}


def get_toy(toy: Toy | str) -> Toy:
    """Return ``toy`` itself, or the toy of that key in :data:`TOYS`."""
    if isinstance(toy, Toy):
        return toy
    if toy not in TOYS:
        raise ValueError(f"toy must be a Toy or one of {tuple(TOYS)}, got {toy!r}")
    return TOYS[toy]


def as_point(point, name: str = "point") -> torch.Tensor:
    """``point`` as a finite float64 tensor of shape (2,), or a ValueError naming ``name``."""
    try:
        tensor = torch.as_tensor(point, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be a pair of real numbers (x, y), got {point!r}") from error
    if tensor.shape != (2,) or not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be two finite real numbers (x, y), got {point!r}")
    return tensor


def gradient(toy: Toy | str, point) -> torch.Tensor:
    """The gradient ``g = ∇f(θ)`` at ``θ = point``, float64, by ``torch.func.grad``."""
    return torch.func.grad(get_toy(toy).f)(as_point(point))


def hessian(toy: Toy | str, point) -> torch.Tensor:
    """The Hessian ``H = ∇²f(θ)`` at ``θ = point``, a float64 2×2, by ``torch.func.hessian``."""
    return torch.func.hessian(get_toy(toy).f)(as_point(point))


def series_scale_limit(toy: Toy | str, point) -> float:
    """The smallest scale for which the series converges at ``point``: ``max_i h_i² / 2``.

    Per eigenvalue the series converges if and only if ``h² ≤ 2V`` (docs/method.md §3), so with
    ``V`` below this value the component along the steepest eigenvector grows like
    ``|1 − h²/V|^K``.
    """
    eigenvalues = torch.linalg.eigvalsh(hessian(toy, point))
    return float(eigenvalues.abs().max()) ** 2 / 2


# --------------------------------------------------------------------------------------------
# Optimisers by name
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerSpec:
    """How :func:`run_trajectory` builds one optimiser from its hyperparameters.

    ``defaults`` lists every hyperparameter it accepts with its default (``lr=None`` and
    ``scale=None`` mean the toy's ``lr`` and ``V``); ``build(params, hyperparameters)``
    returns the optimiser; ``uses_backward`` says whether its closure must call
    ``loss.backward()`` (``torch.optim``) or only return the loss (the curvature optimisers
    of :mod:`sfn_teach.optim`).
    """

    label: str
    defaults: dict
    build: Callable
    uses_backward: bool


_CURVATURE_DEFAULTS = dict(
    lr=1.0, momentum=0.0, damping=0.0, adaptive=False, damping_factor=None, damping_min=0.0,
    damping_max=None, max_skipped_steps=10,
)

#: every optimiser :func:`run_trajectory` knows, by key; ``None`` defaults are the toy's
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "gd": OptimizerSpec(
        label="gradient descent",
        defaults=dict(lr=None),
        build=lambda params, hp: torch.optim.SGD(params, lr=hp["lr"]),
        uses_backward=True,
    ),
    "momentum": OptimizerSpec(
        label="momentum",
        defaults=dict(lr=None, momentum=0.9),
        build=lambda params, hp: torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"]),
        uses_backward=True,
    ),
    "adam": OptimizerSpec(
        label="Adam",
        defaults=dict(lr=None, beta1=0.9, beta2=0.999, eps=1e-8),
        build=lambda params, hp: torch.optim.Adam(
            params, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"]
        ),
        uses_backward=True,
    ),
    "newton": OptimizerSpec(
        label="Newton",
        defaults=_CURVATURE_DEFAULTS,
        build=lambda params, hp: Newton(params, **hp),
        uses_backward=False,
    ),
    "exact_sfn": OptimizerSpec(
        label="exact SFN",
        defaults=_CURVATURE_DEFAULTS,
        build=lambda params, hp: ExactSFN(params, **hp),
        uses_backward=False,
    ),
    "series_sfn": OptimizerSpec(
        label="series SFN",
        defaults=dict(
            _CURVATURE_DEFAULTS, num_terms=10, scale=None, scale_rule="fixed",
            acceleration_order=0, sablonniere=False, kind="damped",
            hvp_backend="dense", power_iterations=10, scale_safety=1.0,
        ),
        build=lambda params, hp: SeriesSFN(params, **hp),
        uses_backward=False,
    ),
}


def _hyperparameters(spec: OptimizerSpec, optimizer: str, toy: Toy, given: dict) -> dict:
    """The spec's defaults updated by ``given``; unknown names raise, listing the valid ones.

    A ``None`` default of ``lr`` or ``scale`` becomes the toy's ``lr`` or ``scale``.
    """
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for optimizer {optimizer!r}; "
            f"valid: {sorted(spec.defaults)}"
        )
    hyperparameters = {**spec.defaults, **given}
    for name in ("lr", "scale"):
        if name in hyperparameters and hyperparameters[name] is None:
            hyperparameters[name] = getattr(toy, name)
    return hyperparameters


def _label(spec: OptimizerSpec, given: dict) -> str:
    """``"series SFN (num_terms=10, scale=25)"``: the spec's label and the given values."""
    if not given:
        return spec.label
    values = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in given.items()]
    return f"{spec.label} ({', '.join(values)})"


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """The run of one optimiser on one toy.

    Attributes:
        label: a legend entry, e.g. ``"series SFN (num_terms=10)"``.
        optimizer: the optimiser's key in :data:`OPTIMIZERS`.
        hyperparameters: every hyperparameter it ran with (defaults included).
        points: ``θ_0, …, θ_n`` as an ``(n + 1, 2)`` float64 array.
        losses: ``f(θ_0), …, f(θ_n)``, shape ``(n + 1,)``.
        stats: per step, a copy of the optimiser's ``stats`` dict (empty for ``torch.optim``).
        stopped: ``None`` if all steps ran, else why the run stopped early (divergence).
    """

    label: str
    optimizer: str
    hyperparameters: dict
    points: np.ndarray
    losses: np.ndarray
    stats: list[dict] = field(default_factory=list)
    stopped: str | None = None

    @property
    def num_steps(self) -> int:
        """The number of steps taken, ``n``."""
        return len(self.points) - 1

    @property
    def final_point(self) -> np.ndarray:
        """``θ_n``."""
        return self.points[-1]

    @property
    def final_loss(self) -> float:
        """``f(θ_n)``."""
        return float(self.losses[-1])


def _closure(toy, theta, optimizer, uses_backward):
    """The closure ``step`` expects: ``f(θ)``, with ``backward`` for ``torch.optim``."""
    if not uses_backward:
        return lambda: toy.f(theta)

    def closure():
        optimizer.zero_grad()
        loss = toy.f(theta)
        loss.backward()
        return loss

    return closure


def _divergence(x: float, y: float, loss: float, step: int) -> str | None:
    """Why the run must stop after ``step`` steps at ``θ = (x, y)`` with loss ``f(θ)``, or
    ``None``."""
    if not (math.isfinite(x) and math.isfinite(y)):
        return f"diverged after {step} steps: the point became non-finite"
    if not math.isfinite(loss):
        return f"diverged after {step} steps: the loss became non-finite"
    if math.hypot(x, y) > DIVERGENCE_RADIUS:
        return f"diverged after {step} steps: |θ| exceeded {DIVERGENCE_RADIUS:g}"
    return None


def run_trajectory(
    toy: Toy | str,
    start,
    optimizer: str,
    steps: int,
    *,
    label: str | None = None,
    **hyperparameters,
) -> Trajectory:
    """Run ``steps`` steps of ``optimizer`` on ``f = toy.f`` from ``θ_0 = start``, in float64.

    ``optimizer`` is a key of :data:`OPTIMIZERS`:

    - ``"gd"``: gradient descent ``θ ← θ − α g`` (``torch.optim.SGD``; ``lr``);
    - ``"momentum"``: heavy ball ``b ← μ b + g``, ``θ ← θ − α b`` (SGD; ``lr``, ``momentum``);
    - ``"adam"``: ``torch.optim.Adam`` (``lr``, ``beta1``, ``beta2``, ``eps``);

      for these three ``lr`` defaults to the toy's ``toy.lr``, stable near its start;
    - ``"newton"``: ``θ ← θ − α (H + λI)⁻¹ g`` (:class:`~sfn_teach.optim.Newton`);
    - ``"exact_sfn"``: ``θ ← θ − α (|H| + λI)⁻¹ g`` (:class:`~sfn_teach.optim.ExactSFN`);
    - ``"series_sfn"``: ``θ ← θ − α Δ_K`` with ``K = num_terms`` terms of the series at scale
      ``V = scale`` (default: ``toy.scale``, ``scale_rule="fixed"``), damping ``λ = damping``
      and Wynn acceleration of order ``r = acceleration_order``
      (:class:`~sfn_teach.optim.SeriesSFN`; every argument of it is accepted). Its products
      default to ``hvp_backend="dense"``: two autograd products build the 2×2 ``H``, then each
      of the ``2(K − 1)`` products is ``H @ v`` (the same numbers, ~10× faster on a toy).

    The curvature optimisers take ``lr``, ``momentum``, ``damping``, ``adaptive``,
    ``damping_factor``, ``damping_min``, ``damping_max`` and ``max_skipped_steps`` as
    :class:`~sfn_teach.optim.SeriesSFN` does (defaults here: ``α = 1``, ``μ = 0``, ``λ = 0``).
    ``OPTIMIZERS[name].defaults`` lists every hyperparameter and its default; an unknown name
    raises a ValueError listing the valid ones, an invalid value the optimiser's own error.

    The run stops early, with ``Trajectory.stopped`` saying why, when the point or the loss
    becomes non-finite, ``‖θ‖ > 1e6``, or the optimiser gives up
    (:class:`~sfn_teach.optim.NonFiniteStepError`); it never raises for a divergence.
    """
    toy = get_toy(toy)
    theta = torch.nn.Parameter(as_point(start, "start"))
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    spec = OPTIMIZERS[optimizer]
    full = _hyperparameters(spec, optimizer, toy, hyperparameters)
    instance = spec.build([theta], full)
    closure = _closure(toy, theta, instance, spec.uses_backward)

    points, losses, stats, stopped = [theta.detach().clone()], [toy.f(theta.detach())], [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a diverging series: see stats
        for step in range(1, steps + 1):
            try:
                instance.step(closure)
            except NonFiniteStepError as error:
                stopped = f"stopped after {step - 1} steps: {error}"
                break
            stats.append(dict(getattr(instance, "stats", {})))
            point = theta.detach().clone()
            with torch.no_grad():
                loss = toy.f(point)
            if torch.isfinite(point).all() and torch.isfinite(loss):
                points.append(point)
                losses.append(loss)
            stopped = _divergence(*point.tolist(), float(loss), step)
            if stopped is not None:
                break
    return Trajectory(
        label=label if label is not None else _label(spec, hyperparameters),
        optimizer=optimizer,
        hyperparameters=full,
        points=torch.stack(points).numpy(),
        losses=torch.stack(losses).numpy(),
        stats=stats,
        stopped=stopped,
    )


# --------------------------------------------------------------------------------------------
# Every optimiser at once, from closed-form derivatives
# --------------------------------------------------------------------------------------------
#
# run_trajectory builds a real optimiser and an autograd graph at every step: ~0.5 ms per step
# of gradient descent and ~3.5 ms per step of series SFN with K = 50, far too slow for a
# slider that follows the mouse. On a 2-D toy every quantity the optimisers need has a closed
# form: f, g and H from Toy.derivatives, and each update rule below in a few lines of
# arithmetic on floats. run_trajectories applies them; tests/test_toys.py checks that its
# trajectories are those of the real optimisers to float64 rounding.

#: what :func:`run_trajectories` requires of the curvature optimisers' hyperparameters; the
#: others (adaptive steps, Levenberg–Marquardt damping, the other scale rules) need the real
#: optimiser of :func:`run_trajectory`
FIXED_RULES = dict(adaptive=False, damping_factor=None, scale_rule="fixed")

#: a series term longer than ``1 + GROWTH_TOLERANCE`` times the one before proves some
#: ``h² > 2V`` (the threshold of :func:`sfn_teach.series.sfn_series`)
GROWTH_TOLERANCE = 1e-6


def _sgd(hp):
    """``torch.optim.SGD``: ``b ← μb + g`` (``b = g`` at the first step; no ``b`` for μ = 0),
    ``θ ← θ − αb``."""
    lr, momentum, buffer = hp["lr"], hp.get("momentum", 0.0), None

    def step(theta, g, h):
        nonlocal buffer
        if momentum:
            buffer = g if buffer is None else (momentum * buffer[0] + g[0],
                                               momentum * buffer[1] + g[1])
            g = buffer
        return (theta[0] - lr * g[0], theta[1] - lr * g[1]), {}

    return step


def _adam(hp):
    """``torch.optim.Adam`` at step ``t``: ``m ← m + (1 − β₁)(g − m)``,
    ``v ← β₂v + (1 − β₂)g²``, ``θ ← θ − α/(1 − β₁ᵗ) · m/(√v/√(1 − β₂ᵗ) + ε)`` per coordinate."""
    lr, beta1, beta2, eps = hp["lr"], hp["beta1"], hp["beta2"], hp["eps"]
    m, v, t = [0.0, 0.0], [0.0, 0.0], 0

    def step(theta, g, h):
        nonlocal t
        t += 1
        step_size, root_correction = lr / (1 - beta1**t), (1 - beta2**t) ** 0.5
        new = []
        for i in range(2):
            m[i] = m[i] + (1 - beta1) * (g[i] - m[i])
            v[i] = v[i] * beta2 + (1 - beta2) * (g[i] * g[i])
            new.append(theta[i] - step_size * (m[i] / (math.sqrt(v[i]) / root_correction + eps)))
        return tuple(new), {}

    return step


def _matrix(h):
    """The symmetric 2×2 ``H`` from ``(∂²f/∂x², ∂²f/∂x∂y, ∂²f/∂y²)``."""
    return np.array([[h[0], h[1]], [h[1], h[2]]])


def _newton_direction(hp):
    """``Δ = (H + λI)⁻¹g`` (LU with partial pivoting, as ``torch.linalg.solve``); NaN if
    ``H + λI`` is exactly singular."""
    identity = hp["damping"] * np.eye(2)

    def direction(g, h):
        try:
            return np.linalg.solve(_matrix(h) + identity, g), {}
        except np.linalg.LinAlgError:
            return np.full(2, math.nan), {}

    return direction


def _exact_sfn_direction(hp):
    """``Δ = Q diag(1/(|h_i| + λ)) Qᵀ g`` from ``H = Q diag(h) Qᵀ``."""
    damping = hp["damping"]

    def direction(g, h):
        eigenvalues, q = np.linalg.eigh(_matrix(h))
        return q @ (1.0 / (np.abs(eigenvalues) + damping) * (q.T @ g)), {}

    return direction


def _wynn_epsilon(partial_sums: np.ndarray, order: int, sablonniere: bool) -> np.ndarray:
    """Wynn's ε-algorithm of order ``r`` (:func:`sfn_teach.series.wynn_epsilon`) on the rows
    of ``partial_sums`` (``2r + 1`` vectors), one column of the ε-table at a time:
    ``ε_s^{(m)} = ε_{s−2}^{(m+1)} + σ_s w/(wᵀw)`` with ``w = ε_{s−1}^{(m+1)} − ε_{s−1}^{(m)}``."""
    before, column = np.zeros_like(partial_sums), partial_sums
    for s in range(1, 2 * order + 1):
        sigma = s // 2 + 1 if sablonniere else 1
        w = column[1:] - column[:-1]
        before, column = column, before[1 : len(w) + 1] + sigma * (w / np.sum(w * w, axis=1,
                                                                        keepdims=True))
    return column[0]


def _series_direction(hp):
    """The series of :func:`sfn_teach.series.sfn_series` in the eigenbasis of ``H``.

    With ``H = Q diag(h) Qᵀ`` and ``ĝ = Qᵀg`` the terms ``v_k = (I − H²/V)^k g`` are
    ``Q diag(x_i^k) ĝ``, ``x_i = 1 − h_i²/V`` (quasi-damped: ``1 − (h_i² + λ)/V``): all ``K``
    terms and their partial sums ``S_j = Σ_{k≤j} c_k v_k`` at once, and
    ``Δ = V^(-½) Q S_{K−1}`` — the spectral filter ``φ_K(h_i)`` applied to each ``ĝ_i``. The
    terms grow (``diverging``) only if some ``h_i² > 2V``; otherwise, with ``r ≥ 1``, Wynn's ε
    on the last ``2r + 1`` partial sums (the Samelson inverse ``w/(wᵀw)`` does not depend on
    the basis) replaces ``S_{K−1}``, unless it is not finite (``acceleration_failed``).
    """
    terms, scale, order = hp["num_terms"], hp["scale"], hp["acceleration_order"]
    coefficients = series_coefficients(terms, hp["damping"], scale, hp["kind"]).numpy()[:, None]
    shift = hp["damping"] if hp["kind"] == "quasi-damped" else 0.0
    powers = np.arange(terms)[:, None]

    def direction(g, h):
        eigenvalues, q = np.linalg.eigh(_matrix(h))
        x = 1.0 - (eigenvalues * eigenvalues + shift) / scale
        v = (q.T @ g) * x**powers  # row k: v_k in the eigenbasis
        sums = np.cumsum(coefficients * v, axis=0)
        norms = np.hypot(v[:, 0], v[:, 1])
        stats = dict(diverging=bool(np.any(norms[1:] > (1 + GROWTH_TOLERANCE) * norms[:-1])),
                     acceleration_failed=False)
        total = sums[-1]
        if order > 0 and not stats["diverging"]:
            accelerated = _wynn_epsilon(sums[-(2 * order + 1):], order, hp["sablonniere"])
            if np.isfinite(accelerated).all():
                total = accelerated
            else:
                stats["acceleration_failed"] = True
        return q @ total / math.sqrt(scale), stats

    return direction


def _curvature(direction_rule):
    """The update of :class:`~sfn_teach.optim.CurvatureOptimizer` with fixed ``(α, μ)``:
    ``δ = αΔ + μδ₀``, ``θ ← θ − δ``; a non-finite loss, gradient or update skips the step
    (``θ`` stays), and more than ``max_skipped_steps`` skips in a row stop the run."""

    def build(hp):
        lr, momentum, direction = hp["lr"], hp["momentum"], direction_rule(hp)
        previous, count = (0.0, 0.0), 0

        def step(theta, g, h, loss):
            nonlocal previous, count
            count += 1
            stats = dict(step=count, loss=loss, skipped=False)
            for what, value in (("loss", (loss,)), ("gradient", g)):
                if not all(map(math.isfinite, value)):
                    return None, dict(stats, skipped=True, skip_reason=f"non-finite {what}")
            delta, extra = direction(np.array(g), h)
            stats.update(extra)
            update = (lr * float(delta[0]) + momentum * previous[0],
                      lr * float(delta[1]) + momentum * previous[1])
            if not all(map(math.isfinite, update)):
                return None, dict(stats, skipped=True, skip_reason="non-finite update")
            previous = update
            return (theta[0] - update[0], theta[1] - update[1]), stats

        return step

    return build


_CLOSED_FORMS = {
    "gd": _sgd, "momentum": _sgd, "adam": _adam,
    "newton": _curvature(_newton_direction),
    "exact_sfn": _curvature(_exact_sfn_direction),
    "series_sfn": _curvature(_series_direction),
}


def _closed_form_step(optimizer: str, toy: Toy, given: dict):
    """The step function of ``optimizer`` and its full hyperparameters, checked as the real
    optimiser checks them (it is built once, on a dummy parameter, and thrown away)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    spec = OPTIMIZERS[optimizer]
    hp = _hyperparameters(spec, optimizer, toy, given)
    unsupported = {k: hp[k] for k, v in FIXED_RULES.items() if k in hp and hp[k] != v}
    if unsupported:
        raise ValueError(f"run_trajectories needs {FIXED_RULES} (got {unsupported}); "
                         "run_trajectory runs every setting")
    spec.build([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))], hp)
    return _CLOSED_FORMS[optimizer](hp), hp


def _evaluate(toy: Toy, theta):
    """``f``, ``g`` (a pair) and ``H`` (a triple) at ``θ``, as floats: overflow gives ``inf``."""
    with np.errstate(all="ignore"):
        loss, g, h = toy.derivatives(np.float64(theta[0]), np.float64(theta[1]))
    return float(loss), (float(g[0]), float(g[1])), tuple(float(v) for v in h)


def run_trajectories(
    toy: Toy | str, start, steps: int, runs: Mapping[str, dict]
) -> dict[str, Trajectory]:
    """Run several optimisers together on ``toy`` from ``start``, by closed forms: fast.

    ``runs`` maps keys of :data:`OPTIMIZERS` to their hyperparameters, as
    :func:`run_trajectory` takes them (validated the same way); each key's trajectory is the
    one :func:`run_trajectory` returns, to float64 rounding, but every step costs
    microseconds instead of an autograd graph and an optimiser step:

    - ``f``, ``g`` and ``H`` come from the toy's hand-derived :attr:`Toy.derivatives`;
    - gradient descent, momentum and Adam are ``torch.optim``'s rules written out;
    - Newton solves ``(H + λI)Δ = g`` and exact SFN uses ``H = Q diag(h) Qᵀ``;
    - series SFN sums all ``K`` terms at once in the eigenbasis of ``H``: there the series is
      its spectral filter ``φ_K(h_i)`` on each component of ``g`` (``_series_direction``).

    The curvature optimisers need fixed steps and damping and a fixed ``V``
    (:data:`FIXED_RULES`); a non-finite step is skipped and too many stop the run, as there.
    Labels are the optimisers' names; ``stats`` hold, per step of a curvature optimiser,
    ``step``, ``loss`` (before the step) and ``skipped``, and for series SFN ``diverging``
    and ``acceleration_failed`` (empty for the first-order ones, as for ``torch.optim``).
    """
    toy = get_toy(toy)
    theta = tuple(as_point(start, "start").tolist())
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    built = {key: _closed_form_step(key, toy, dict(given)) for key, given in runs.items()}
    first = _evaluate(toy, theta)
    return {key: _run_closed_form(key, step, hp, first, toy, theta, steps)
            for key, (step, hp) in built.items()}


def _run_closed_form(key, step, hp, first, toy, theta, steps) -> Trajectory:
    """Take up to ``steps`` steps of ``step`` from ``θ`` (with ``first = (f, g, H)`` there)."""
    loss, g, h = first
    points, losses, stats, stopped, skips = [theta], [loss], [], None, 0
    curvature = key in ("newton", "exact_sfn", "series_sfn")
    for t in range(1, steps + 1):
        with np.errstate(all="ignore"):  # a diverging run overflows: it stops below
            new, info = step(theta, g, h, loss) if curvature else step(theta, g, h)
        stats.append(info)
        skips = skips + 1 if new is None else 0
        if skips > hp.get("max_skipped_steps", math.inf):
            stats.pop()
            stopped = (f"stopped after {t - 1} steps: {info['skip_reason']} in {skips} steps in "
                       f"a row (max_skipped_steps={hp['max_skipped_steps']})")
            break
        if new is not None:
            theta = new
            loss, g, h = _evaluate(toy, theta)
        if math.isfinite(theta[0]) and math.isfinite(theta[1]) and math.isfinite(loss):
            points.append(theta)
            losses.append(loss)
        stopped = _divergence(theta[0], theta[1], loss, t)
        if stopped is not None:
            break
    return Trajectory(label=OPTIMIZERS[key].label, optimizer=key, hyperparameters=hp,
                      points=np.array(points), losses=np.array(losses), stats=stats,
                      stopped=stopped)


# --------------------------------------------------------------------------------------------
# The series in one step
# --------------------------------------------------------------------------------------------


def series_partial_sum_points(
    toy: Toy | str, start, num_terms: int, scale: float, damping: float = 0.0
) -> np.ndarray:
    """The points ``θ_0 − V^(-½) S_j``, ``j = 0, …, K − 1``, one row each: shape ``(K, 2)``.

    ``S_j = Σ_{k≤j} c_k v_k`` with ``v_0 = g`` and ``v_k = (I − H²/V) v_{k−1}`` are the partial
    sums of the series at ``θ_0`` (docs/method.md §2), so row ``j`` is where one undamped-step
    (``α = 1``) of series SFN with ``j + 1`` terms lands. Each row is
    :func:`~sfn_teach.series.sfn_direction` with ``j + 1`` terms on the dense Hessian
    (products ``Hv`` by ``H @ v``). If every ``h² ≤ 2V`` the rows converge to the exact step
    ``θ_0 − (|H| + λI)⁻¹ g``.
    """
    toy = get_toy(toy)
    theta = as_point(start, "start")
    if isinstance(num_terms, bool) or not isinstance(num_terms, int) or num_terms < 1:
        raise ValueError(f"num_terms must be an int >= 1, got {num_terms!r}")
    g, h = gradient(toy, theta), hessian(toy, theta)
    rows = [
        theta - sfn_direction(lambda v: h @ v, g, terms, scale, damping)
        for terms in range(1, num_terms + 1)
    ]
    return torch.stack(rows).numpy()


def exact_step_point(toy: Toy | str, start, damping: float = 0.0) -> np.ndarray:
    """``θ_0 − (|H| + λI)⁻¹ g``: where one full exact saddle-free Newton step lands."""
    theta = as_point(start, "start")
    direction = exact_sfn_direction(hessian(toy, theta), gradient(toy, theta), damping)
    return (theta - direction).numpy()
