"""Two-dimensional test functions: the landscapes of the classroom.

A :class:`Toy` is a function ``f(θ)`` of ``θ = (x, y)`` with what a figure needs: a LaTeX
formula, a plotting box, its critical points (``∇f = 0``) labelled by the signs of the
eigenvalues ``h_1 ≤ h_2`` of the Hessian ``H = ∇²f`` there (minimum: both positive; maximum:
both negative; saddle: one of each; monkey saddle: ``H = 0`` with a cubic that falls away in
three directions), a default start, and a default scale ``V`` for the series. :func:`gradient`
and :func:`hessian` differentiate a toy by ``torch.func``; each toy also carries its
derivatives by hand (:attr:`Toy.derivatives`). Re-exported by :mod:`sfn_teach.toys`, which
runs the optimisers on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "CRITICAL_KINDS", "ROSENBROCK_A", "ROSENBROCK_B", "TOYS", "CriticalPoint", "Toy", "as_point",
    "get_toy", "gradient", "hessian", "series_scale_limit",
]

CRITICAL_KINDS = ("minimum", "maximum", "saddle", "monkey saddle")

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
