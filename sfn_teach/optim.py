"""The curvature optimisers: ``SeriesSFN`` (the paper's), ``ExactSFN`` and ``Newton``.

All three take the update of :mod:`sfn_teach.update` (docs/method.md §6): at step ``t``, with
the gradient ``g`` and a direction ``Δ`` that approximates ``C⁻¹g`` for a positive curvature
``C``,

    δ_t = α_t Δ_t + μ_t δ_{t−1},        θ_{t+1} = θ_t − δ_t,        δ_{−1} = 0,

with fixed or adaptive ``(α, μ)`` and optional Levenberg–Marquardt damping. They differ only in
``Δ``:

- :class:`SeriesSFN` (the paper's optimiser): ``Δ ≈ (|H| + λI)⁻¹ g`` from ``K`` terms of the
  series of Hessian-vector products (:mod:`sfn_teach.series`), ``2(K − 1)`` HVPs per step, at
  a scale ``V`` chosen by :mod:`sfn_teach.scale`;
- :class:`ExactSFN`: the same direction exactly, from the dense Hessian (small problems only);
- :class:`Newton`: ``Δ = (H + λI)⁻¹ g`` from the dense Hessian, which is attracted to saddles.

``step(closure)`` needs a closure that *returns the loss tensor without calling backward*;
after each step ``optimizer.stats`` is a :class:`~sfn_teach.update.StepStats`. The shared
pieces are re-exported here: :class:`CurvatureOptimizer`, :class:`StepStats`,
:class:`NonFiniteStepError`, :func:`curvature_update`, :func:`adaptive_step_sizes`,
:func:`levenberg_marquardt`, and the scale rules' constants.
"""

from __future__ import annotations

import itertools
import math
import warnings
from abc import abstractmethod

import torch

from .checks import ArgumentError, choice, flag, integer, real
from .hvp import PARAMS_BACKENDS
from .scale import (
    GRADIENT_DESCENT_RATIO,
    MAX_SCALE_RETRIES,
    SCALE_RULES,
    SPECTRUM_MEMORY,
    choose_scale,
    grown_scale,
    remember_spectrum,
    spectrum_report,
)
from .series import KINDS, exact_sfn_direction, sfn_series
from .update import (
    CurvatureOptimizer,
    NonFiniteStepError,
    StepStats,
    adaptive_step_sizes,
    curvature_update,
    levenberg_marquardt,
)

__all__ = [
    "GRADIENT_DESCENT_RATIO", "MAX_SCALE_RETRIES", "SCALE_RULES", "SPECTRUM_MEMORY",
    "CurvatureOptimizer", "ExactSFN", "Newton", "NonFiniteStepError", "SeriesSFN", "StepStats",
    "adaptive_step_sizes", "curvature_update", "levenberg_marquardt",
]


# --------------------------------------------------------------------------------------------
# The paper's optimiser
# --------------------------------------------------------------------------------------------


class SeriesSFN(CurvatureOptimizer):
    """Saddle-free Newton by a truncated, accelerated series of Hessian-vector products.

    ``Δ ≈ (|H| + λI)⁻¹ g`` from ``K = num_terms`` terms of the series (``2(K − 1)`` HVPs, see
    :func:`sfn_teach.series.sfn_series`), accelerated by Wynn's ε-algorithm of order
    ``r = acceleration_order`` (needs ``K ≥ 2r + 1``); then the update of
    :class:`CurvatureOptimizer`: ``δ = αΔ + μδ₀``, ``θ ← θ − δ``.

    Args:
        params: parameters or parameter groups (all groups must hold the same values).
        lr, momentum: the fixed ``α > 0`` and ``μ ∈ [0, 1)``; unused when ``adaptive=True``.
        num_terms: ``K ≥ 1``. ``K = 1`` is ``Δ = g/(√V + λ)`` with no HVP at all.
        acceleration_order: ``r ≥ 0``, Wynn's ε on the last ``2r + 1`` partial sums.
        damping: ``λ₀ ≥ 0`` (in units of eigenvalues of ``H``).
        scale: ``V > 0`` for ``"fixed"``, ``V₀`` for ``"lower_bound"``; unused by ``"ritz"``
            and ``"power"``.
        scale_rule: how ``V`` is chosen each step (:mod:`sfn_teach.scale`; the series
            converges where ``h² ≤ 2V``, and resolves eigenvalues down to about ``√(V/K)``
            only, see below):

            - ``"ritz"`` (default): ``V = (κ λ̂_max)²`` with ``κ = scale_safety`` and ``λ̂_max²``
              the smallest of the largest Ritz values of ``H²`` of the last three steps' series
              (:func:`sfn_teach.series.ritz_values`: their own moments, no extra product), so
              ``V`` follows the spectrum down at once, and one batch with an outlying spectrum
              does not inflate the next steps' ``V``. The first step (and, for ``K ≤ 2``,
              whose Krylov space is too small, every ``power_every`` steps) takes
              ``power_iterations`` warm-started power iterations instead. If a term grows
              (some ``h² > 2V``), the series stops there and ``V`` grows at once — to ``κ²``
              times the Ritz estimate so far, at least doubled — and the series is summed
              again (up to three times; the last time to the end); every product is counted
              in ``stats["num_hvps"]`` and ``stats["scale_products"]``.
            - ``"lower_bound"`` (the paper's): ``V_t = max(V_{t−1}, ‖H²g‖/‖g‖)``, free, since
              ``H²g`` is the series' first product pair; it only grows, and only bounds
              ``λ_max(H²)`` from below, so the series may diverge (``stats["diverging"]`` and a
              warning say so).
            - ``"power"``: ``V = (κ ĥ_max)²`` from ``power_iterations`` power iterations every
              step, warm-started (costs those products).
            - ``"fixed"``: ``V = scale``.
        adaptive: the paper's adaptive ``(α, μ)`` (see :mod:`sfn_teach.update`).
        damping_factor: ``ω ∈ (0, 1)`` switches Levenberg–Marquardt damping on (one extra
            forward pass per step); ``None`` keeps ``λ`` fixed.
        damping_min, damping_max: the clip range of ``λ``.
        sablonniere: Sablonnière's weights in the ε-algorithm.
        kind: ``"damped"`` (target ``(|H| + λI)⁻¹g``) or ``"quasi-damped"``
            (``(H² + λI)^(-½) g``, where ``λ`` is in units of eigenvalues of ``H²``).
        power_iterations: products per power iteration (``"ritz"``, ``"power"``).
        power_every: ``"ritz"`` with ``K ≤ 2``: steps between power iterations.
        scale_safety: ``κ ≥ 1`` of ``"ritz"`` and ``"power"``.
        hvp_backend: ``"double-backward"`` (one forward/backward per step, the graph kept for
            every product), ``"forward-over-reverse"`` (forward-mode AD over the gradient;
            re-runs the closure per product, so the closure must be deterministic and free of
            side effects such as BatchNorm running statistics) or ``"dense"`` (tiny problems:
            ``H`` built from ``n`` products, then ``H @ v``; see :class:`~sfn_teach.hvp.ParamsHVP`).
        max_skipped_steps: consecutive non-finite steps tolerated before raising.
        process_group: data parallelism (``torch.distributed`` initialised, the batch split in
            equal shards over the ranks, the closure evaluating this rank's shard): the loss,
            the gradient, every HVP and the re-evaluated loss are averaged over the group's
            ranks (:class:`sfn_teach.distributed.RankAveragedOperator`, which importing
            :mod:`sfn_teach.distributed` plugs in), so every rank takes the same step as one
            process on the whole batch. ``stats`` then report ``allreduce_bytes`` and
            ``allreduce_seconds`` per step. ``None``: one process.

    **What V does to the step.** Per eigenvalue the series applies the polynomial filter
    ``φ_K(h)`` (:func:`sfn_teach.series.spectral_filter`), which is flat for
    ``|h| ≲ √(V/K)``: there it equals about ``φ_K(0) ≈ 2√(K/(πV))``, as if SFN had an extra
    *implicit damping* of ``½√(πV/K)``. If ``V ≫ λ_max²``, every eigenvalue is in the flat part
    and the step is gradient descent with learning rate ``≈ 2√(K/(πV))``. ``stats`` report
    ``lambda_max`` (``λ̂_max``, the Ritz estimate), ``scale_ratio`` (``V/λ̂_max²``) and
    ``implicit_damping`` next to ``damping``; a warning (once) says when ``V/λ̂_max²`` exceeds
    :data:`GRADIENT_DESCENT_RATIO`.

    Differences from the reference code, on purpose: ``K = 1`` honours ``λ``; ``K < 2r + 1``
    is refused here instead of failing inside the ε-table; the coefficients are computed by a
    recurrence that is stable for every ``λ`` (including ``λ² = V``); ``q`` is ``δ₀ᵀb`` without
    the reference's extra factor ``α_{t−1}``.
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        momentum: float = 0.0,
        num_terms: int = 5,
        acceleration_order: int = 0,
        damping: float = 1e-4,
        scale: float = 100.0,
        scale_rule: str = "ritz",
        adaptive: bool = False,
        damping_factor: float | None = None,
        damping_min: float = 1e-8,
        damping_max: float | None = None,
        sablonniere: bool = False,
        kind: str = "damped",
        hvp_backend: str = "double-backward",
        power_iterations: int = 10,
        power_every: int = 10,
        scale_safety: float = 1.25,
        max_skipped_steps: int = 10,
        process_group=None,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, num_terms=num_terms, acceleration_order=acceleration_order,
            damping=damping, scale=scale, scale_rule=scale_rule, adaptive=adaptive,
            damping_factor=damping_factor, damping_min=damping_min, damping_max=damping_max,
            sablonniere=sablonniere, kind=kind, hvp_backend=hvp_backend,
            power_iterations=power_iterations, power_every=power_every,
            scale_safety=scale_safety, max_skipped_steps=max_skipped_steps,
        )
        super().__init__(params, defaults, process_group)

    def _check_hyperparameters(self, hp):
        integer("num_terms", hp["num_terms"], 1)
        integer("acceleration_order", hp["acceleration_order"], 0)
        if hp["num_terms"] < 2 * hp["acceleration_order"] + 1:
            raise ArgumentError(
                "num_terms", f"must be >= 2*acceleration_order+1 = "
                f"{2 * hp['acceleration_order'] + 1} for Wynn's ε-algorithm of order "
                f"{hp['acceleration_order']}, got num_terms={hp['num_terms']}"
            )
        hp["scale"] = real("scale", hp["scale"], 0.0, low_open=True)
        choice("scale_rule", hp["scale_rule"], SCALE_RULES)
        flag("sablonniere", hp["sablonniere"])
        choice("kind", hp["kind"], KINDS)
        choice("hvp_backend", hp["hvp_backend"], PARAMS_BACKENDS)
        integer("power_iterations", hp["power_iterations"], 1)
        integer("power_every", hp["power_every"], 1)
        hp["scale_safety"] = real("scale_safety", hp["scale_safety"], 1.0)
        super()._check_hyperparameters(hp)

    def _hvp_backend(self, hp):
        return hp["hvp_backend"]

    def _products(self, operator):
        """``v ↦ Hv`` into two reused vectors in turn (the series reads each product before the
        next but one): a product's pieces are concatenated into one of them, not a new vector."""
        buffers, calls = self._workspace.vectors("products", 2, operator.grad), itertools.count()
        return lambda v: operator.matvec(v, out=buffers[next(calls) % 2])

    def _direction(self, operator, state, hp):
        """The series at this step's ``V`` (:func:`sfn_teach.scale.choose_scale`). Under
        ``"ritz"`` a series whose terms grow is stopped there and summed again with a larger
        ``V`` while retries are left; the last try runs to the end."""
        square_of_grad, scale_products = choose_scale(operator, state, hp)
        retries, seen = 0, 0.0  # seen: the largest lower bound of λ_max(H²) this step found
        while True:
            may_retry = hp["scale_rule"] == "ritz" and retries < MAX_SCALE_RETRIES
            result = sfn_series(
                self._products(operator), operator.grad, hp["num_terms"], state["scale"],
                state["damping"], hp["acceleration_order"], hp["sablonniere"], hp["kind"],
                square_of_grad=square_of_grad, stop_if_diverging=may_retry,
                workspace=self._workspace,
            )
            if not (result.diverging and may_retry):
                break
            scale_products += result.num_hvps - 2  # H²g is reused: it does not depend on V
            largest = float(result.ritz_values[-1]) if len(result.ritz_values) else 0.0
            # growing terms prove some h² > 2V; a Ritz value lies in the spectrum
            seen = max(seen, largest, 2.0 * state["scale"])
            state["scale"] = grown_scale(state["scale"], largest, hp["scale_safety"])
            square_of_grad = result.square_of_grad
            retries += 1
        if result.diverging:
            warnings.warn(
                f"SeriesSFN step {state['step']}: the series is diverging (its terms grow, so "
                f"some eigenvalue has h² > 2V = {2 * state['scale']:.3g}); consider "
                "scale_rule='ritz', a larger scale, or fewer terms",
                RuntimeWarning,
                stacklevel=3,
            )
        # the estimate of λ_max(H²) for the next steps' V ("ritz") and the diagnostics of every
        # rule: the last try's largest Ritz value, or what the tries before proved if that is
        # larger (the last try's Ritz space can miss an eigenvalue whose share of g is tiny)
        if len(result.ritz_values) and (hp["num_terms"] > 2 or hp["scale_rule"] != "ritz"):
            remember_spectrum(state, max(seen, float(result.ritz_values[-1])))
        return result.direction, dict(
            num_hvps=result.num_hvps + scale_products,
            scale_products=scale_products,
            scale_retries=retries,
            partial_sum_norms=result.partial_sum_norms,
            diverging=result.diverging,
            acceleration_failed=result.acceleration_failed,
            **spectrum_report(state, hp),
        )


# --------------------------------------------------------------------------------------------
# Dense references for small problems
# --------------------------------------------------------------------------------------------


class _DenseCurvatureOptimizer(CurvatureOptimizer):
    """The dense-Hessian optimisers: ``Δ = solve(H, g, λ)`` with ``H`` from ``n`` HVPs a step."""

    def __init__(
        self,
        params,
        lr: float = 1.0,
        momentum: float = 0.0,
        damping: float = 0.0,
        adaptive: bool = False,
        damping_factor: float | None = None,
        damping_min: float = 0.0,
        damping_max: float | None = None,
        max_skipped_steps: int = 10,
        process_group=None,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, damping=damping, adaptive=adaptive,
            damping_factor=damping_factor, damping_min=damping_min, damping_max=damping_max,
            max_skipped_steps=max_skipped_steps,
        )
        super().__init__(params, defaults, process_group)

    def _hvp_backend(self, hp):
        return "dense"

    def _direction(self, operator, state, hp):
        direction = self._solve(operator.dense(), operator.grad, state["damping"])
        return direction, dict(num_hvps=operator.dim)  # the products that built the dense H

    @staticmethod
    @abstractmethod
    def _solve(hessian, grad, damping):
        """``Δ`` from the dense ``H``, the gradient ``g`` and the damping ``λ``."""


class ExactSFN(_DenseCurvatureOptimizer):
    """Exact damped saddle-free Newton: ``Δ = (|H| + λI)⁻¹ g`` by eigendecomposition.

    The dense Hessian costs ``n`` HVPs per step; the update, adaptive ``(α, μ)`` and
    Levenberg–Marquardt damping are those of :class:`CurvatureOptimizer`, as in SeriesSFN.
    """

    @staticmethod
    def _solve(hessian, grad, damping):
        return exact_sfn_direction(hessian, grad, damping)


class Newton(_DenseCurvatureOptimizer):
    """(Damped) Newton: ``Δ = (H + λI)⁻¹ g``, from the dense Hessian.

    In the eigenbasis each gradient component is divided by ``h_i + λ``; along negative
    curvature the sign flips and the step points *towards* a saddle. A singular ``H + λI``
    gives a non-finite direction, which is skipped.
    """

    @staticmethod
    def _solve(hessian, grad, damping):
        identity = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
        solution, info = torch.linalg.solve_ex(hessian + damping * identity, grad)
        if info.item() != 0:
            return torch.full_like(grad, math.nan)
        return solution
