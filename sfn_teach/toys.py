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

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .optim import ExactSFN, Newton, NonFiniteStepError, SeriesSFN
from .series import exact_sfn_direction, sfn_direction

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


def _saddle(xy):
    x, y = xy[0], xy[1]
    return x**2 - y**2


def _monkey(xy):
    x, y = xy[0], xy[1]
    return x**3 - 3 * x * y**2


def _double_well(xy):
    x, y = xy[0], xy[1]
    return x**4 / 4 - x**2 / 2 + y**2 / 2


#: Rosenbrock's parameters: ``b = 10`` instead of the classic 100, so that gradient descent
#: makes visible progress in 100 steps (the curvature across the valley is ~10× smaller)
ROSENBROCK_A, ROSENBROCK_B = 1.0, 10.0


def _rosenbrock(xy):
    x, y = xy[0], xy[1]
    return (ROSENBROCK_A - x) ** 2 + ROSENBROCK_B * (y - x**2) ** 2


def _himmelblau(xy):
    x, y = xy[0], xy[1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _points(kind, *points):
    return tuple(CriticalPoint(point, kind) for point in points)


_TOY_LIST = (
    Toy(
        key="paper", name="the paper's toy saddle", formula=r"2x^2 + 2xy - y^2", f=_paper,
        box=((-2.0, 2.0), (-2.0, 2.0)), critical_points=_points("saddle", (0.0, 0.0)),
        start=(-0.75, -0.75), scale=25.0, lr=0.1,
    ),
    Toy(
        key="saddle", name="a quadratic saddle", formula=r"x^2 - y^2", f=_saddle,
        box=((-1.5, 1.5), (-1.5, 1.5)), critical_points=_points("saddle", (0.0, 0.0)),
        start=(1.0, 0.05), scale=4.0, lr=0.1,
    ),
    Toy(
        key="monkey", name="the monkey saddle", formula=r"x^3 - 3xy^2", f=_monkey,
        box=((-1.5, 1.5), (-1.5, 1.5)), critical_points=_points("monkey saddle", (0.0, 0.0)),
        start=(0.8, 0.05), scale=50.0, lr=0.1,
    ),
    Toy(
        key="double_well", name="a saddle between two minima",
        formula=r"\frac{x^4}{4} - \frac{x^2}{2} + \frac{y^2}{2}", f=_double_well,
        box=((-2.0, 2.0), (-1.5, 1.5)),
        critical_points=_points("minimum", (-1.0, 0.0), (1.0, 0.0))
        + _points("saddle", (0.0, 0.0)),
        start=(0.02, 1.2), scale=25.0, lr=0.1,
    ),
    Toy(
        key="rosenbrock", name=f"Rosenbrock's valley (a = {ROSENBROCK_A:g}, b = {ROSENBROCK_B:g})",
        formula=rf"({ROSENBROCK_A:g} - x)^2 + {ROSENBROCK_B:g}\,(y - x^2)^2", f=_rosenbrock,
        box=((-2.0, 2.0), (-1.0, 3.0)),
        critical_points=_points("minimum", (ROSENBROCK_A, ROSENBROCK_A**2)),
        start=(-1.5, 2.5), scale=25000.0, lr=0.005,
    ),
    Toy(
        key="himmelblau", name="Himmelblau's function",
        formula=r"(x^2 + y - 11)^2 + (x + y^2 - 7)^2", f=_himmelblau,
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


def _divergence(theta: torch.Tensor, loss: torch.Tensor, step: int) -> str | None:
    """Why the run must stop after ``step`` steps at ``θ`` with loss ``f(θ)``, or ``None``."""
    if not torch.isfinite(theta).all():
        return f"diverged after {step} steps: the point became non-finite"
    if not torch.isfinite(loss):
        return f"diverged after {step} steps: the loss became non-finite"
    if float(theta.norm()) > DIVERGENCE_RADIUS:
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
            stopped = _divergence(point, loss, step)
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
