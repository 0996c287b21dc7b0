"""Optimisers along curvature-rescaled directions: ``SeriesSFN``, ``ExactSFN``, ``Newton``.

All three share one update rule (docs/method.md §6). At step ``t`` with gradient ``g`` and a
direction ``Δ`` that approximates ``C⁻¹g`` for a positive curvature ``C``,

    δ_t = α_t Δ_t + μ_t δ_{t−1},        θ_{t+1} = θ_t − δ_t,        δ_{−1} = 0.

They differ only in ``Δ``:

- :class:`SeriesSFN` (the paper's optimiser): ``Δ ≈ (|H| + λI)⁻¹ g`` from ``K`` terms of the
  series of Hessian-vector products (:mod:`sfn_teach.series`), ``2(K − 1)`` HVPs per step;
- :class:`ExactSFN`: the same direction exactly, from the dense Hessian (small problems only);
- :class:`Newton`: ``Δ = (H + λI)⁻¹ g`` from the dense Hessian, which is attracted to saddles.

**Adaptive (α, μ).** With ``adaptive=True``, ``(α, μ)`` minimise the quadratic model of the
loss over the span of ``Δ`` and ``δ₀ = δ_{t−1}``, with curvature ``C`` approximated through
``CΔ ≈ g`` and ``Cδ₀ ≈ b_{t−1}``, where ``b_t = μ_t b_{t−1} + α_t g_t``:

    [ gᵀΔ   gᵀδ₀ ] [α]   [ gᵀΔ  ]
    [ gᵀδ₀  q    ] [μ] = [ gᵀδ₀ ],       q = δ₀ᵀ b_{t−1}   (q := 1 where it is 0).

The right-hand side is the first column, so whenever the system is non-singular its solution is
exactly ``α = 1, μ = 0`` (up to rounding): the paper's adaptive variant is full steps plus
Levenberg–Marquardt damping. We keep that behaviour, as published.

**Levenberg–Marquardt damping** (``damping_factor = ω``): the loss is re-evaluated at
``θ_{t+1}`` on the same batch, ``ρ = (f(θ_{t+1}) − f(θ_t)) / M`` with the model decrease

    M = ½(α² gᵀΔ + 2αμ gᵀδ₀ + μ² q) − α gᵀΔ − μ gᵀδ₀,

and ``λ ← ωλ`` if ``ρ > ¾``, ``λ ← λ/ω`` if ``ρ < ¼``, clipped to ``[λ_min, λ_max]``.

**Closures.** ``step(closure)`` needs a closure that re-evaluates the model on the batch and
*returns the loss tensor without calling backward*: the optimiser takes the gradient and the
Hessian-vector products from it itself (on one retained graph by default).

**Non-finite values never reach the parameters.** A non-finite loss, gradient, direction or
update skips the step (parameters untouched, ``stats["skipped"]`` says why; with
Levenberg–Marquardt damping ``λ`` grows by ``1/ω``); if the loss at the new point is
non-finite the step is undone. More than ``max_skipped_steps`` skips in a row raise
:class:`NonFiniteStepError`.
"""

from __future__ import annotations

import math
import warnings

import torch

from .distributed import RankAveragedOperator
from .hvp import PARAMS_BACKENDS, ParamsHVP, power_iteration
from .series import KINDS, exact_sfn_direction, sfn_series

SCALE_RULES = ("ritz", "lower_bound", "power", "fixed")

#: above this ratio ``V/λ̂_max²`` the step is gradient descent in disguise (warned once)
GRADIENT_DESCENT_RATIO = 100.0

#: re-runs of a diverging series with a larger ``V`` within one step (``"ritz"`` rule)
MAX_SCALE_RETRIES = 3

#: the ``"ritz"`` rule's ``V`` follows the smallest of this many recent estimates of λ_max(H²)
SPECTRUM_MEMORY = 3


class NonFiniteStepError(ValueError):
    """Too many consecutive steps produced a non-finite loss, gradient or update."""


# --------------------------------------------------------------------------------------------
# Validation of hyperparameters
# --------------------------------------------------------------------------------------------


def _real(name, value, low, high=math.inf, *, low_open=False, high_open=False):
    """Check ``low ≤ value ≤ high`` (``<`` where open) and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if math.isnan(value) or too_low or too_high or math.isinf(value):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be finite and in {interval}, got {value}")
    return value


def _integer(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return value


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_common(hp):
    """Validate the hyperparameters every curvature optimiser shares (in place)."""
    hp["lr"] = _real("lr", hp["lr"], 0.0, low_open=True)
    hp["momentum"] = _real("momentum", hp["momentum"], 0.0, 1.0, high_open=True)
    hp["damping"] = _real("damping", hp["damping"], 0.0)
    _flag("adaptive", hp["adaptive"])
    if hp["damping_factor"] is not None:
        hp["damping_factor"] = _real(
            "damping_factor", hp["damping_factor"], 0.0, 1.0, low_open=True, high_open=True
        )
    hp["damping_min"] = _real("damping_min", hp["damping_min"], 0.0)
    if hp["damping_max"] is not None:
        hp["damping_max"] = _real("damping_max", hp["damping_max"], hp["damping_min"])
        if hp["damping"] > hp["damping_max"]:
            raise ValueError(
                f"damping must be <= damping_max = {hp['damping_max']}, got {hp['damping']}"
            )
    _integer("max_skipped_steps", hp["max_skipped_steps"], 0)


# --------------------------------------------------------------------------------------------
# The two scalar rules of the update
# --------------------------------------------------------------------------------------------


def adaptive_step_sizes(g_dir: float, g_prev: float, q: float) -> tuple[float, float]:
    """The paper's adaptive ``(α, μ)``: the solution of

        [ gᵀΔ   gᵀδ₀ ] [α]   [ gᵀΔ  ]
        [ gᵀδ₀  q    ] [μ] = [ gᵀδ₀ ]

    with ``g_dir = gᵀΔ``, ``g_prev = gᵀδ₀`` and ``q ≈ δ₀ᵀCδ₀``. It minimises the quadratic
    model ``−α gᵀΔ − μ gᵀδ₀ + ½(α² gᵀΔ + 2αμ gᵀδ₀ + μ² q)`` over the span of ``Δ`` and ``δ₀``,
    using ``CΔ ≈ g``. The right-hand side is the first column, so a non-singular system gives
    ``(1, 0)`` up to rounding; a singular one (or non-finite entries) returns ``(1, 0)``, which
    solves it too. Solved in float64.
    """
    system = torch.tensor([[g_dir, g_prev], [g_prev, q]], dtype=torch.float64)
    rhs = torch.tensor([g_dir, g_prev], dtype=torch.float64)
    solution, info = torch.linalg.solve_ex(system, rhs)
    if info.item() != 0 or not torch.isfinite(solution).all():
        return 1.0, 0.0
    return float(solution[0]), float(solution[1])


def levenberg_marquardt(
    damping: float, rho: float, omega: float, low: float = 0.0, high: float | None = None
) -> float:
    """The Levenberg–Marquardt rule: ``λ ← ωλ`` if ``ρ > ¾``, ``λ/ω`` if ``ρ < ¼``, then clip.

    ``ρ = (f(θ_{t+1}) − f(θ_t))/M`` compares the actual change of the loss with the decrease
    ``M`` the quadratic model predicted: ``ρ ≈ 1`` means the model is trustworthy and the
    damping can shrink; a small or negative ``ρ`` (or NaN) means it overpromised. The result
    is clipped to ``[low, high]``.
    """
    if rho > 0.75:
        damping *= omega
    elif rho < 0.25 or math.isnan(rho):
        damping /= omega
    return min(max(damping, low), high if high is not None else math.inf)


# --------------------------------------------------------------------------------------------
# The shared step
# --------------------------------------------------------------------------------------------


class CurvatureOptimizer(torch.optim.Optimizer):
    """The update ``δ_t = α Δ_t + μ δ_{t−1}`` shared by SeriesSFN, ExactSFN and Newton.

    Subclasses provide :meth:`_direction`, which turns the curvature operator of the step (an
    object with ``grad`` and ``matvec``, see :class:`sfn_teach.hvp.ParamsHVP`) into ``Δ``.
    Hyperparameters may be given per parameter group for torch conventions (learning-rate
    schedulers set ``group["lr"]``), but the method has one curvature operator over all
    parameters, so every group must hold the same values.

    State: global (``scale`` V, ``damping`` λ, ``alpha``, ``mu``, ``step``, consecutive skips)
    in the state of the first parameter, as :class:`torch.optim.LBFGS` does; per parameter the
    previous update ``δ_{t−1}`` and the curvature buffer ``b_{t−1}``. After every step
    :attr:`stats` holds what happened (loss, V, λ, α, μ, ρ, products, skips, ...).
    """

    def __init__(self, params, defaults, process_group=None):
        _check_common(defaults)
        super().__init__(params, defaults)
        self.process_group = process_group
        tensors = [p for group in self.param_groups for p in group["params"]]
        kinds = {(p.dtype, p.device) for p in tensors}
        if len(kinds) > 1:
            raise ValueError(
                "params must share one dtype and device (the series works on one flat vector), "
                f"got {sorted(str(k) for k in kinds)}"
            )
        if not all(p.dtype.is_floating_point for p in tensors):
            raise TypeError("params must be floating-point tensors")
        self.stats: dict = {}

    # -- parameters and hyperparameters ---------------------------------------------------------

    def _params(self):
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _hyperparameters(self):
        """The hyperparameters of the first group, after checking that all groups agree."""
        first = self.param_groups[0]
        for group in self.param_groups[1:]:
            for key, value in first.items():
                if key != "params" and group.get(key) != value:
                    raise ValueError(
                        f"{key} must be the same in every parameter group "
                        f"({value!r} != {group.get(key)!r}): the direction uses one curvature "
                        "operator over all parameters"
                    )
        _check_common(dict(first))
        return first

    def _global_state(self, hp):
        state = self.state[self._params()[0]]
        if not state:
            state.update(
                step=0, scale=hp.get("scale"), damping=hp["damping"],
                alpha=0.0, mu=0.0, skipped_in_a_row=0,
            )
        return state

    def _flat_buffer(self, params, name):
        """Concatenate a per-parameter state buffer (zeros before the first step)."""
        return torch.cat([
            self.state[p][name].reshape(-1) if name in self.state[p] else torch.zeros(p.numel(),
                dtype=p.dtype, device=p.device)
            for p in params
        ])

    def _store_flat(self, params, name, flat):
        offset = 0
        for p in params:
            self.state[p][name] = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def _curvature(self, closure, params, hp, backend=None):
        """The operator of this step: loss, flat gradient and ``v ↦ Hv`` on one batch.

        Data-parallel (``process_group`` set): each rank's operator on its shard, averaged
        over the ranks (:class:`~sfn_teach.distributed.RankAveragedOperator`).
        """
        operator = ParamsHVP(closure, params, backend or hp.get("hvp_backend", "double-backward"))
        if self.process_group is None:
            return operator
        return RankAveragedOperator(operator, self.process_group)

    def _mean_over_ranks(self, operator, value):
        """A scalar loss averaged over ranks (itself when not data-parallel)."""
        value = torch.as_tensor(value).detach().reshape(1).to(operator.grad)
        return operator.mean(value)[0] if self.process_group is not None else value[0]

    def _direction(self, operator, state, hp):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the step ------------------------------------------------------------------------------

    def step(self, closure=None):
        """One step ``θ ← θ − (αΔ + μδ₀)``; ``closure()`` must return the loss, not call backward.

        Returns the loss at ``θ_t`` (before the step), detached.
        """
        if closure is None or not callable(closure):
            raise TypeError(
                f"{type(self).__name__}.step needs a closure that re-evaluates the model and "
                f"returns the loss tensor (without calling backward), got closure={closure!r}"
            )
        hp = self._hyperparameters()
        params = self._params()
        state = self._global_state(hp)
        state["step"] += 1
        operator = self._curvature(closure, params, hp)
        loss, grad = operator.loss, operator.grad
        self.stats = {"step": state["step"], "loss": float(loss), "num_gradients": 1}
        if not torch.isfinite(loss):
            return self._skip("loss", loss, state, hp)
        if not torch.isfinite(grad).all():
            return self._skip("gradient", loss, state, hp)

        direction = self._direction(operator, state, hp)
        previous = self._flat_buffer(params, "previous_update")
        curvature = self._flat_buffer(params, "curvature_buffer")
        g_dir, g_prev = float(grad @ direction), float(grad @ previous)
        q = float(previous @ curvature) or 1.0
        if hp["adaptive"]:
            alpha, mu = adaptive_step_sizes(g_dir, g_prev, q)
        else:
            alpha, mu = hp["lr"], hp["momentum"]
        update = alpha * direction + mu * previous
        if not torch.isfinite(update).all():
            return self._skip("update", loss, state, hp)

        undo = [p.detach().clone() for p in params] if hp["damping_factor"] is not None else None
        self._add_to_params(params, -update)
        # products, not **2: a float power raises OverflowError where a product gives inf
        model_decrease = 0.5 * (alpha * alpha * g_dir + 2 * alpha * mu * g_prev + mu * mu * q) - (
            alpha * g_dir + mu * g_prev
        )
        rho = None
        if hp["damping_factor"] is not None:
            with torch.no_grad():
                new_loss = self._mean_over_ranks(operator, closure())
            self.stats["num_forward"] = 1
            if not torch.isfinite(new_loss):
                with torch.no_grad():
                    torch._foreach_copy_(params, undo)  # exactly θ_t again
                return self._skip("loss after the step", loss, state, hp)
            rho = (float(new_loss) - float(loss)) / model_decrease
            state["damping"] = levenberg_marquardt(
                state["damping"], rho, hp["damping_factor"], hp["damping_min"], hp["damping_max"]
            )

        self._store_flat(params, "previous_update", update)
        self._store_flat(params, "curvature_buffer", mu * curvature + alpha * grad)
        state.update(alpha=alpha, mu=mu, skipped_in_a_row=0)
        self.stats.update(
            alpha=alpha, mu=mu, rho=rho, damping=state["damping"], scale=state["scale"],
            model_decrease=model_decrease, skipped=False, update_norm=float(update.norm()),
        )
        self.stats.setdefault("num_hvps", 0)
        if self.process_group is not None:
            self.stats.update(allreduce_bytes=operator.bytes_reduced,
                              allreduce_seconds=operator.seconds_reducing)
        return loss

    @staticmethod
    @torch.no_grad()
    def _add_to_params(params, flat):
        offset = 0
        for p in params:
            p.add_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def _skip(self, what, loss, state, hp):
        """Leave the parameters as they are, grow λ (with LM damping), count the skip."""
        state["skipped_in_a_row"] += 1
        if hp["damping_factor"] is not None:  # as for a step that failed badly (ρ < ¼)
            state["damping"] = levenberg_marquardt(
                max(state["damping"], hp["damping_min"]), -math.inf, hp["damping_factor"],
                hp["damping_min"], hp["damping_max"],
            )
        self.stats.update(
            skipped=True, skip_reason=f"non-finite {what}", damping=state["damping"],
            scale=state["scale"], alpha=None, mu=None, rho=None,
        )
        self.stats.setdefault("num_hvps", 0)
        if state["skipped_in_a_row"] > hp["max_skipped_steps"]:
            raise NonFiniteStepError(
                f"{type(self).__name__}: non-finite {what} at step {state['step']} "
                f"({state['skipped_in_a_row']} skipped steps in a row, max_skipped_steps="
                f"{hp['max_skipped_steps']}); the parameters were left unchanged. Lower the "
                "learning rate, raise the damping or check the loss for NaN/inf."
            )
        return loss


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
        scale_rule: how ``V`` is chosen each step (the series converges where ``h² ≤ 2V``, and
            resolves eigenvalues down to about ``√(V/K)`` only, see below):

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
        adaptive: the paper's adaptive ``(α, μ)`` (see the module docstring).
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
            ranks (:mod:`sfn_teach.distributed`), so every rank takes the same step as one
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
        self._check_series(defaults)
        super().__init__(params, defaults, process_group)

    @staticmethod
    def _check_series(hp):
        _integer("num_terms", hp["num_terms"], 1)
        _integer("acceleration_order", hp["acceleration_order"], 0)
        if hp["num_terms"] < 2 * hp["acceleration_order"] + 1:
            raise ValueError(
                f"num_terms must be >= 2*acceleration_order+1 = "
                f"{2 * hp['acceleration_order'] + 1} for Wynn's ε-algorithm of order "
                f"{hp['acceleration_order']}, got num_terms={hp['num_terms']}"
            )
        hp["scale"] = _real("scale", hp["scale"], 0.0, low_open=True)
        _choice("scale_rule", hp["scale_rule"], SCALE_RULES)
        _flag("sablonniere", hp["sablonniere"])
        _choice("kind", hp["kind"], KINDS)
        _choice("hvp_backend", hp["hvp_backend"], PARAMS_BACKENDS)
        _integer("power_iterations", hp["power_iterations"], 1)
        _integer("power_every", hp["power_every"], 1)
        hp["scale_safety"] = _real("scale_safety", hp["scale_safety"], 1.0)

    def _hyperparameters(self):
        hp = super()._hyperparameters()
        self._check_series(dict(hp))
        return hp

    def _power_estimate(self, operator, state, hp):
        """``ĥ_max²`` by warm-started power iteration; returns it and the products used."""
        grad = operator.grad
        estimate = power_iteration(
            operator.matvec, grad.numel(), num_iterations=hp["power_iterations"],
            init=state.get("power_vector"), dtype=grad.dtype, device=grad.device,
            generator=torch.Generator(grad.device).manual_seed(0),  # the same on every rank
        )
        state["power_vector"], state["power_step"] = estimate.vector, state["step"]
        return estimate.value**2, estimate.num_products

    def _scale(self, operator, state, hp):
        """Set ``state["scale"]`` (V) for this step; return ``(H²g or None, extra products)``."""
        rule, safety = hp["scale_rule"], hp["scale_safety"] ** 2
        if rule == "fixed":
            state["scale"] = hp["scale"]
        elif rule == "power":
            estimate, products = self._power_estimate(operator, state, hp)
            state["scale"] = safety * estimate
            return None, products
        elif rule == "ritz":
            products = 0
            stale = state["step"] - state.get("power_step", -math.inf) >= hp["power_every"]
            if not state.get("spectrum_estimates") or (hp["num_terms"] <= 2 and stale):
                estimate, products = self._power_estimate(operator, state, hp)
                self._remember_spectrum(state, estimate)
            state["scale"] = safety * min(state["spectrum_estimates"])
            return None, products
        elif hp["num_terms"] > 1:  # lower_bound, from the series' own first product pair
            grad = operator.grad
            square_of_grad = operator.matvec(operator.matvec(grad))
            grad_norm = float(grad.norm())
            if grad_norm > 0:
                state["scale"] = max(state["scale"], float(square_of_grad.norm()) / grad_norm)
            return square_of_grad, 0
        return None, 0

    def _series(self, operator, state, hp, square_of_grad=None, retries=0):
        """The series at this step's ``V``; under ``"ritz"`` it stops at the first growing term
        while a retry with a larger ``V`` is still allowed."""
        stop = hp["scale_rule"] == "ritz" and retries < MAX_SCALE_RETRIES
        return sfn_series(
            operator.matvec, operator.grad, hp["num_terms"], state["scale"], state["damping"],
            hp["acceleration_order"], hp["sablonniere"], hp["kind"],
            square_of_grad=square_of_grad, stop_if_diverging=stop,
        )

    def _direction(self, operator, state, hp):
        square_of_grad, extra_products = self._scale(operator, state, hp)
        result = self._series(operator, state, hp, square_of_grad)
        retries = 0
        while result.diverging and hp["scale_rule"] == "ritz" and retries < MAX_SCALE_RETRIES:
            extra_products += result.num_hvps - 2  # H²g is reused: it does not depend on V
            state["scale"] = max(2.0 * state["scale"],
                                 hp["scale_safety"] ** 2 * float(result.ritz_values[-1]))
            retries += 1
            result = self._series(operator, state, hp, result.square_of_grad, retries)
        if result.diverging:
            warnings.warn(
                f"SeriesSFN step {state['step']}: the series is diverging (its terms grow, so "
                f"some eigenvalue has h² > 2V = {2 * state['scale']:.3g}); consider "
                "scale_rule='ritz', a larger scale, or fewer terms",
                RuntimeWarning,
                stacklevel=3,
            )
        # the largest Ritz value: the next steps' V ("ritz"), and the diagnostics of every rule
        if len(result.ritz_values) and (hp["num_terms"] > 2 or hp["scale_rule"] != "ritz"):
            self._remember_spectrum(state, float(result.ritz_values[-1]))
        self._report_spectrum(state, hp)
        self.stats.update(
            num_hvps=result.num_hvps + extra_products,
            scale_products=extra_products,
            scale_retries=retries,
            partial_sum_norms=result.partial_sum_norms,
            diverging=result.diverging,
            acceleration_failed=result.acceleration_failed,
        )
        return result.direction

    @staticmethod
    def _remember_spectrum(state, estimate):
        """Keep the newest :data:`SPECTRUM_MEMORY` estimates of ``λ_max(H²)``. The smallest sets
        ``V``: a batch whose spectrum is an outlier does not inflate the next steps' ``V`` (too
        large a ``V`` blurs the filter), and a ``V`` too small costs little, because a diverging
        series is stopped at its first growing term and summed again."""
        state["spectrum_estimates"] = [*state.get("spectrum_estimates", []),
                                       estimate][-SPECTRUM_MEMORY:]

    def _report_spectrum(self, state, hp):
        """``λ̂_max`` (this step's estimate), ``V/λ̂_max²`` and the implicit damping in
        ``stats``; warn once if the series has become gradient descent."""
        scale = state["scale"]
        estimate = (state.get("spectrum_estimates") or [None])[-1]
        lambda_max = math.sqrt(estimate) if estimate else None
        ratio = scale / estimate if estimate else None
        implicit_damping = 0.5 * math.sqrt(math.pi * scale / hp["num_terms"])
        self.stats.update(lambda_max=lambda_max, scale_ratio=ratio,
                          implicit_damping=implicit_damping)
        if ratio is not None and ratio > GRADIENT_DESCENT_RATIO and not state.get("warned"):
            state["warned"] = True
            rate = 2 * math.sqrt(hp["num_terms"] / (math.pi * scale))
            warnings.warn(
                f"SeriesSFN step {state['step']}: V = {scale:.3g} is {ratio:.3g} × λ̂_max² "
                f"(λ̂_max ≈ {lambda_max:.3g}): every eigenvalue lies where the series' filter "
                f"is flat, so this is gradient descent with learning rate ≈ 2√(K/(πV)) = "
                f"{rate:.3g} (an implicit damping ½√(πV/K) = {implicit_damping:.3g} next to "
                f"λ = {state['damping']:.3g}). Use scale_rule='ritz' (the default) so that V "
                "follows the spectrum, or a smaller scale",
                RuntimeWarning,
                stacklevel=4,
            )


# --------------------------------------------------------------------------------------------
# Dense references for small problems
# --------------------------------------------------------------------------------------------


class _DenseCurvatureOptimizer(CurvatureOptimizer):
    """Shared constructor of the dense-Hessian optimisers (``n`` HVPs per step)."""

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

    def _curvature(self, closure, params, hp, backend=None):
        return super()._curvature(closure, params, hp, backend="dense")

    def _direction(self, operator, state, hp):
        self.stats["num_hvps"] = operator.dim  # the products that built the dense Hessian
        return self._solve(operator.hessian, operator.grad, state["damping"])


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
