"""Optimisers on the 2-D toys: trajectories, and the series' partial sums in one step.

The toys themselves (:class:`Toy`, :data:`TOYS`, :func:`gradient`, :func:`hessian`, …) are
defined in :mod:`sfn_teach.landscapes` and re-exported here.

:data:`OPTIMIZERS` is the classroom's view of :data:`sfn_teach.registry.OPTIMIZERS`: gradient
descent, momentum and Adam, Newton, exact and series SFN, each a :class:`Preset` of a registry
entry with the defaults that suit a toy.

:func:`run_trajectory` runs one of them from a start, in float64, and returns the points
``θ_0, …, θ_n``, the losses ``f(θ_t)`` and the per-step statistics. A step that diverges stops
the run with a reason instead of raising, so a student who drags a slider too far sees
"diverged after n steps". :func:`run_trajectories` runs several at once by closed forms
(:mod:`sfn_teach.toy_steps`), fast enough to follow a slider.

:func:`series_partial_sum_points` gives the points ``θ_0 − V^(-½) S_j`` that the partial sums
of the series reach in one step from ``θ_0`` (the paper's toy figure): they converge to the
exact saddle-free Newton step ``θ_0 − (|H| + λI)⁻¹ g`` when every ``h² ≤ 2V``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .checks import choice, integer
from .landscapes import (
    CRITICAL_KINDS,
    ROSENBROCK_A,
    ROSENBROCK_B,
    TOYS,
    CriticalPoint,
    Toy,
    as_point,
    get_toy,
    gradient,
    hessian,
    series_scale_limit,
)
from .optim import NonFiniteStepError
from .registry import OPTIMIZERS as REGISTRY
from .registry import OptimizerEntry, step_closure, with_defaults
from .series import exact_sfn_direction, sfn_direction
from .toy_steps import CLOSED_FORMS

__all__ = [
    "CRITICAL_KINDS", "DIVERGENCE_RADIUS", "FIXED_RULES", "OPTIMIZERS", "ROSENBROCK_A",
    "ROSENBROCK_B", "TOYS", "CriticalPoint", "Preset", "Toy", "Trajectory", "as_point",
    "exact_step_point", "get_toy", "gradient", "hessian", "run_trajectories", "run_trajectory",
    "series_partial_sum_points", "series_scale_limit",
]

#: a run stops (as diverged) once ``‖θ‖`` exceeds this
DIVERGENCE_RADIUS = 1e6


# --------------------------------------------------------------------------------------------
# The classroom's optimisers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A registry optimiser as the classroom offers it.

    ``optimizer`` is its key in :data:`sfn_teach.registry.OPTIMIZERS`; ``names`` the
    hyperparameters a student may set (``None``: every one of the class); ``changed`` the
    defaults that differ from the class's, where ``None`` means the toy's ``lr`` or ``scale``.
    :attr:`defaults` lists every settable hyperparameter with its default here.
    """

    label: str
    optimizer: str
    changed: Mapping = field(default_factory=dict)
    names: tuple | None = None

    @property
    def entry(self) -> OptimizerEntry:
        """The registry's entry."""
        return REGISTRY[self.optimizer]

    @property
    def defaults(self) -> dict:
        """Every hyperparameter a student may set, and its default for a toy."""
        class_defaults = self.entry.defaults
        return {name: self.changed.get(name, class_defaults[name])
                for name in self.names or class_defaults}

    def hyperparameters(self, toy: Toy, given: Mapping) -> dict:
        """:attr:`defaults` updated by ``given`` (an unknown name raises, listing the valid
        ones); a ``None`` ``lr`` or ``scale`` becomes the toy's."""
        hyperparameters = with_defaults(given, self.defaults, self.label)
        for name in ("lr", "scale"):
            if name in hyperparameters and hyperparameters[name] is None:
                hyperparameters[name] = getattr(toy, name)
        return hyperparameters


OPTIMIZERS: dict[str, Preset] = {
    "gd": Preset("gradient descent", "sgd", dict(lr=None), ("lr",)),
    "momentum": Preset("momentum", "sgd", dict(lr=None, momentum=0.9), ("lr", "momentum")),
    "adam": Preset("Adam", "adam", dict(lr=None), ("lr", "betas", "eps")),
    "newton": Preset("Newton", "newton"),
    "exact_sfn": Preset("exact SFN", "exact_sfn"),
    # no damping, a fixed V (the toy's) and K = 10, every product H @ v on the 2×2 H
    "series_sfn": Preset("series SFN", "series_sfn", dict(
        num_terms=10, scale=None, scale_rule="fixed", damping=0.0, damping_min=0.0,
        hvp_backend="dense", scale_safety=1.0,
    )),
}
"""The optimisers of the classroom, by key; ``OPTIMIZERS[key].defaults`` lists every
hyperparameter and its default (``None``: the toy's ``lr`` or ``scale``)."""


def _preset(optimizer: str) -> Preset:
    return OPTIMIZERS[choice("optimizer", optimizer, OPTIMIZERS)]


def _label(preset: Preset, given: dict) -> str:
    """``"series SFN (num_terms=10, scale=25)"``: the preset's label and the given values."""
    if not given:
        return preset.label
    values = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in given.items()]
    return f"{preset.label} ({', '.join(values)})"


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
    - ``"adam"``: ``torch.optim.Adam`` (``lr``, ``betas``, ``eps``);

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
    raises an :class:`~sfn_teach.checks.ArgumentError` listing the valid ones, an invalid value
    the optimiser's own error.

    The run stops early, with ``Trajectory.stopped`` saying why, when the point or the loss
    becomes non-finite, ``‖θ‖ > 1e6``, or the optimiser gives up
    (:class:`~sfn_teach.optim.NonFiniteStepError`); it never raises for a divergence.
    """
    toy = get_toy(toy)
    theta = torch.nn.Parameter(as_point(start, "start"))
    preset = _preset(optimizer)
    integer("steps", steps, 0)
    full = preset.hyperparameters(toy, hyperparameters)
    instance = preset.entry([theta], **full)
    closure = step_closure(instance, lambda: toy.f(theta))

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
        label=label if label is not None else _label(preset, hyperparameters),
        optimizer=optimizer,
        hyperparameters=full,
        points=torch.stack(points).numpy(),
        losses=torch.stack(losses).numpy(),
        stats=stats,
        stopped=stopped,
    )



# --------------------------------------------------------------------------------------------
# Every optimiser at once, from closed-form derivatives (sfn_teach.toy_steps)
# --------------------------------------------------------------------------------------------

#: what :func:`run_trajectories` requires of the curvature optimisers' hyperparameters; the
#: others (adaptive steps, Levenberg–Marquardt damping, the other scale rules) need the real
#: optimiser of :func:`run_trajectory`
FIXED_RULES = dict(adaptive=False, damping_factor=None, scale_rule="fixed")


def _closed_form_step(optimizer: str, toy: Toy, given: dict):
    """The step function of ``optimizer`` and its full hyperparameters, checked as the real
    optimiser checks them (it is built once, on a dummy parameter, and thrown away)."""
    preset = _preset(optimizer)
    hp = preset.hyperparameters(toy, given)
    unsupported = {k: hp[k] for k, v in FIXED_RULES.items() if k in hp and hp[k] != v}
    if unsupported:
        raise ValueError(f"run_trajectories needs {FIXED_RULES} (got {unsupported}); "
                         "run_trajectory runs every setting")
    preset.entry([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))], **hp)
    return CLOSED_FORMS[optimizer](hp), hp


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
    integer("steps", steps, 0)
    built = {key: _closed_form_step(key, toy, dict(given)) for key, given in runs.items()}
    first = _evaluate(toy, theta)
    return {key: _run_closed_form(key, step, hp, first, toy, theta, steps)
            for key, (step, hp) in built.items()}


def _run_closed_form(key, step, hp, first, toy, theta, steps) -> Trajectory:
    """Take up to ``steps`` steps of ``step`` from ``θ`` (with ``first = (f, g, H)`` there)."""
    loss, g, h = first
    points, losses, stats, stopped, skips = [theta], [loss], [], None, 0
    for t in range(1, steps + 1):
        with np.errstate(all="ignore"):  # a diverging run overflows: it stops below
            new, info = step(theta, g, h, loss)
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
    integer("num_terms", num_terms, 1)
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

