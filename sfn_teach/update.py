"""The update that every curvature optimiser shares, and the base class that takes its steps.

At step ``t``, with the gradient ``g`` and a direction ``Δ`` that approximates ``C⁻¹g`` for a
positive curvature ``C`` (docs/method.md §6),

    δ_t = α_t Δ_t + μ_t δ_{t−1},        θ_{t+1} = θ_t − δ_t,        δ_{−1} = 0.

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

**Structure**, as in ``torch.optim``: pure functions compute the update
(:func:`curvature_update`, with :func:`adaptive_step_sizes`) and the damping
(:func:`levenberg_marquardt`) from tensors and numbers; :class:`CurvatureOptimizer` keeps the
state, takes the step and reports it as a :class:`StepStats`. A subclass only says how the
direction ``Δ`` is made from the step's curvature operator
(:class:`sfn_teach.hvp.CurvatureOperator`).

**Closures.** ``step(closure)`` needs a closure that re-evaluates the model on the batch and
*returns the loss tensor without calling backward*: the optimiser takes the gradient and the
Hessian-vector products from it itself (on one retained graph by default).

**Non-finite values never reach the parameters.** A non-finite loss, gradient, direction or
update skips the step (parameters untouched, ``stats["skipped"]`` says why; with
Levenberg–Marquardt damping ``λ`` grows by ``1/ω``); if the loss at the new point is
non-finite, ``θ_t`` is restored exactly. More than ``max_skipped_steps`` skips in a row raise
:class:`NonFiniteStepError`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from .checks import ArgumentError, ArgumentTypeError, SfnTeachError, flag, integer, real
from .hvp import ParamsHVP, Workspace, all_finite, flatten, unflatten

__all__ = [
    "CurvatureOptimizer", "NonFiniteStepError", "StepStats", "Update", "adaptive_step_sizes",
    "curvature_update", "levenberg_marquardt"
]


class NonFiniteStepError(SfnTeachError, ValueError):
    """Too many consecutive steps produced a non-finite loss, gradient or update."""


# --------------------------------------------------------------------------------------------
# The functional kernel
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


@dataclass(frozen=True)
class Update:
    """What :func:`curvature_update` proposes: the update ``δ_t``, the next curvature buffer
    ``b_t``, the step sizes ``(α, μ)`` and the model decrease ``M``."""

    update: torch.Tensor
    curvature_buffer: torch.Tensor
    alpha: float
    mu: float
    model_decrease: float


def curvature_update(
    grad, direction, previous, curvature_buffer, *, lr, momentum, adaptive, workspace=None
):
    """The update ``δ_t = αΔ + μδ₀`` and what comes with it, from flat tensors.

    ``grad`` is ``g``, ``direction`` ``Δ``, ``previous`` ``δ₀ = δ_{t−1}`` and
    ``curvature_buffer`` ``b_{t−1} ≈ Cδ₀`` (zeros before the first step). ``(α, μ)`` are
    ``(lr, momentum)``, or :func:`adaptive_step_sizes` of ``gᵀΔ``, ``gᵀδ₀`` and
    ``q = δ₀ᵀb_{t−1}`` (``q := 1`` where it is 0) when ``adaptive``. Returns the
    :class:`Update` with ``b_t = μ b_{t−1} + α g`` and the model decrease
    ``M = ½(α² gᵀΔ + 2αμ gᵀδ₀ + μ² q) − α gᵀΔ − μ gᵀδ₀``. Nothing is modified.

    ``δ_t`` and ``b_t`` are written into three vectors ``"update"`` of ``workspace`` (a
    :class:`~sfn_teach.hvp.Workspace`; the third holds ``μδ₀`` and ``αg`` on the way), valid
    until its next use; without one, into new tensors. Either way each product is rounded
    before the sum, as ``αΔ + μδ₀`` is.
    """
    g_dir, g_prev = float(grad @ direction), float(grad @ previous)
    q = float(previous @ curvature_buffer) or 1.0
    alpha, mu = adaptive_step_sizes(g_dir, g_prev, q) if adaptive else (lr, momentum)
    # products, not **2: a float power raises OverflowError where a product gives inf
    model_decrease = 0.5 * (alpha * alpha * g_dir + 2 * alpha * mu * g_prev + mu * mu * q) - (
        alpha * g_dir + mu * g_prev
    )
    update, buffer, scratch = (Workspace() if workspace is None else workspace).vectors(
        "update", 3, grad
    )
    torch.mul(direction, alpha, out=update).add_(torch.mul(previous, mu, out=scratch))
    torch.mul(curvature_buffer, mu, out=buffer).add_(torch.mul(grad, alpha, out=scratch))
    return Update(update=update, curvature_buffer=buffer, alpha=alpha, mu=mu,
                  model_decrease=model_decrease)


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
# What one step reports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StepStats(Mapping):
    """What happened in one step of a curvature optimiser (``None``: no such quantity here).

    Fields: ``step`` (``t``, from 1) and ``loss`` (``f(θ_t)`` on the batch, before the step);
    the work ``num_gradients``, ``num_hvps`` (every Hessian-vector product, those that chose
    ``V`` and built a dense ``H`` included), ``num_forward`` (forward-only passes: the
    Levenberg–Marquardt re-evaluation), and for K-FAC ``num_factor_updates`` (1 on a step
    that recomputes its factors and their inverses) and ``num_preconditionings`` (1 a step)
    (:class:`sfn_teach.cost.CostModel` weighs them); the update ``alpha``, ``mu``,
    ``model_decrease`` (``M``), ``update_norm`` (``‖δ_t‖``), ``rho`` (``ρ``, with
    Levenberg–Marquardt damping), ``damping`` (``λ`` after the step) and ``scale`` (``V``);
    ``skipped`` and ``skip_reason``;
    the series' diagnostics (:class:`~sfn_teach.optim.SeriesSFN`, see
    :class:`sfn_teach.series.SeriesResult`) ``partial_sum_norms``, ``diverging``,
    ``acceleration_failed``, the spectrum ``lambda_max`` (``λ̂_max``), ``scale_ratio``
    (``V/λ̂_max²``) and ``implicit_damping`` (``½√(πV/K)``), and what choosing ``V`` cost:
    ``scale_products`` and ``scale_retries``; data-parallel, ``allreduce_bytes`` and
    ``allreduce_seconds`` (every all-reduce of the step).

    It is also a read-only mapping over its fields, so ``stats["scale"]``, ``stats.get(...)``,
    ``dict(stats)`` and ``==`` (with another mapping) work as for a dict. ``StepStats()``, all
    defaults, stands for "no step yet".
    """

    step: int | None = None
    loss: float | None = None
    num_gradients: int = 1
    num_hvps: int = 0
    num_forward: int = 0
    num_factor_updates: int = 0
    num_preconditionings: int = 0
    alpha: float | None = None
    mu: float | None = None
    rho: float | None = None
    damping: float | None = None
    scale: float | None = None
    model_decrease: float | None = None
    skipped: bool = False
    skip_reason: str | None = None
    update_norm: float | None = None
    partial_sum_norms: list[float] | None = None
    diverging: bool | None = None
    acceleration_failed: bool | None = None
    lambda_max: float | None = None
    scale_ratio: float | None = None
    implicit_damping: float | None = None
    scale_products: int | None = None
    scale_retries: int | None = None
    allreduce_bytes: int | None = None
    allreduce_seconds: float | None = None

    def __getitem__(self, name):
        if name not in self.__dataclass_fields__:  # the fields by name, as dataclasses keep them
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self):
        return (f.name for f in fields(self))

    def __len__(self):
        return len(fields(self))


# --------------------------------------------------------------------------------------------
# The optimiser
# --------------------------------------------------------------------------------------------


def _check_common(hp):
    """Validate the hyperparameters every curvature optimiser shares (in place)."""
    hp["lr"] = real("lr", hp["lr"], 0.0, low_open=True)
    hp["momentum"] = real("momentum", hp["momentum"], 0.0, 1.0, high_open=True)
    hp["damping"] = real("damping", hp["damping"], 0.0)
    flag("adaptive", hp["adaptive"])
    if hp["damping_factor"] is not None:
        hp["damping_factor"] = real(
            "damping_factor", hp["damping_factor"], 0.0, 1.0, low_open=True, high_open=True
        )
    hp["damping_min"] = real("damping_min", hp["damping_min"], 0.0)
    if hp["damping_max"] is not None:
        hp["damping_max"] = real("damping_max", hp["damping_max"], hp["damping_min"])
        if hp["damping"] > hp["damping_max"]:
            raise ArgumentError(
                "damping", f"must be <= damping_max = {hp['damping_max']}, got {hp['damping']}"
            )
    integer("max_skipped_steps", hp["max_skipped_steps"], 0)


class CurvatureOptimizer(torch.optim.Optimizer, ABC):
    """The update ``δ_t = α Δ_t + μ δ_{t−1}`` shared by SeriesSFN, ExactSFN and Newton.

    A subclass says which Hessian-vector backend its operator uses (:meth:`_hvp_backend`) and
    how the step's :class:`~sfn_teach.hvp.CurvatureOperator` becomes ``Δ`` (:meth:`_direction`).
    Hyperparameters may be given per parameter group for torch conventions (learning-rate
    schedulers set ``group["lr"]``), but the method has one curvature operator over all
    parameters, so every group must hold the same values.

    State: global (``scale`` V, ``damping`` λ, ``alpha``, ``mu``, ``step``, consecutive skips)
    in the state of the first parameter, as :class:`torch.optim.LBFGS` does; per parameter the
    previous update ``δ_{t−1}`` and the curvature buffer ``b_{t−1}``, views of one flat vector
    each that every step overwrites in place (as ``torch.optim``'s optimisers do: deep-copy a
    ``state_dict`` to keep it). After every step :attr:`stats` is its :class:`StepStats` (an
    empty mapping before the first step).

    **Buffers.** The series, the update and the saved ``θ`` of Levenberg–Marquardt damping work
    in flat vectors that the optimiser allocates once and reuses (a
    :class:`~sfn_teach.hvp.Workspace`), and so do SeriesSFN's products (two, in turn): of ``n``
    numbers a step allocates only the gradient and, per product, the per-parameter pieces that
    autograd returns before they are concatenated. They stay allocated between
    steps: for SeriesSFN with float32 parameters ``4r + 12`` vectors of ``n`` float32 numbers
    (``r ≥ 1``; 13 for ``r = 0``; four fewer in float64, whose moments need no widened copies;
    one more with Levenberg–Marquardt damping), e.g. 20 × 45 MB for ResNet-18 at
    ``K = 5, r = 2``.

    **Data parallelism** (``process_group`` set; docs/method.md §8): the operator of each step
    is this rank's operator wrapped by :attr:`data_parallel`, so that its loss, gradient,
    products and :meth:`~sfn_teach.hvp.CurvatureOperator.mean` are averages over the ranks;
    the step itself is the same code as in one process.
    """

    data_parallel = None
    """``data_parallel(operator, process_group)``: the operator of the whole batch from this
    rank's. This module knows nothing of ``torch.distributed``: importing
    :mod:`sfn_teach.distributed` sets it to :class:`~sfn_teach.distributed.RankAveragedOperator`."""

    def __init__(self, params, defaults, process_group=None):
        self._check_hyperparameters(defaults)
        if process_group is not None and self.data_parallel is None:
            raise RuntimeError(
                "process_group needs CurvatureOptimizer.data_parallel: import "
                "sfn_teach.distributed, which sets it to RankAveragedOperator"
            )
        super().__init__(params, defaults)
        self.process_group = process_group
        tensors = [p for group in self.param_groups for p in group["params"]]
        kinds = {(p.dtype, p.device) for p in tensors}
        if len(kinds) > 1:
            raise ArgumentError(
                "params", "must share one dtype and device (the series works on one flat "
                f"vector), got {sorted(str(k) for k in kinds)}"
            )
        if not all(p.dtype.is_floating_point for p in tensors):
            raise ArgumentTypeError("params", "must be floating-point tensors")
        self.stats: Mapping = {}
        self._workspace = Workspace()
        self._flat_states = {}  # name -> (flat vector, the per-parameter views of it in state)

    # -- what a subclass provides ----------------------------------------------------------------

    @abstractmethod
    def _hvp_backend(self, hp) -> str:
        """The :class:`~sfn_teach.hvp.ParamsHVP` backend of the step's operator."""

    @abstractmethod
    def _direction(self, operator, state, hp) -> tuple[torch.Tensor, dict]:
        """``(Δ, fields)``: the direction ``Δ ≈ C⁻¹g`` from the step's operator, and the
        :class:`StepStats` fields that making it determined (``num_hvps`` at least)."""

    def _check_hyperparameters(self, hp):
        """Validate ``hp`` (normalised in place); a subclass adds its own checks."""
        _check_common(hp)

    # -- parameters, hyperparameters and state ---------------------------------------------------

    def _params(self):
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _hyperparameters(self):
        """The hyperparameters of the first group, after checking that all groups agree."""
        first = self.param_groups[0]
        for group in self.param_groups[1:]:
            for key, value in first.items():
                if key != "params" and group.get(key) != value:
                    raise ArgumentError(
                        key, "must be the same in every parameter group "
                        f"({value!r} != {group.get(key)!r}): the direction uses one curvature "
                        "operator over all parameters"
                    )
        self._check_hyperparameters(dict(first))
        return first

    def _global_state(self, hp):
        state = self.state[self._params()[0]]
        if not state:
            state.update(
                step=0, scale=hp.get("scale"), damping=hp["damping"],
                alpha=0.0, mu=0.0, skipped_in_a_row=0,
            )
        return state

    def _flat_state(self, params, name):
        """The per-parameter state ``name`` (zeros before the first step) as one flat vector whose
        pieces are the state's tensors, so that writing it updates the state. Made again (one
        copy) when the state holds other tensors: the first step, after ``load_state_dict``."""
        flat, views = self._flat_states.get(name, (None, ()))
        if len(views) != len(params) or any(
            self.state[p].get(name) is not view for p, view in zip(params, views)
        ):
            flat = flatten(self.state[p][name] if name in self.state[p] else torch.zeros_like(p)
                           for p in params)
            views = unflatten(flat, params)
            for p, view in zip(params, views):
                self.state[p][name] = view
            self._flat_states[name] = flat, views
        return flat

    @staticmethod
    @torch.no_grad()
    def _subtract_from_params(params, flat):
        """``θ ← θ − δ`` (a subtraction rounds as the sum with ``−δ`` does)."""
        torch._foreach_sub_(params, unflatten(flat, params))

    @staticmethod
    @torch.no_grad()
    def _copy_to_params(params, flat):
        torch._foreach_copy_(params, unflatten(flat, params))

    @staticmethod
    @torch.no_grad()
    def _loss_now(closure, operator):
        """The closure's loss at the current ``θ`` (a forward pass), averaged over the ranks."""
        value = torch.as_tensor(closure()).detach().reshape(1).to(operator.grad)
        return float(operator.mean(value)[0])

    def _operator(self, closure, params, hp):
        """The curvature operator of this step: loss, flat gradient and ``v ↦ Hv`` on one batch
        (data-parallel: averaged over the ranks, :attr:`data_parallel`)."""
        operator = ParamsHVP(closure, params, self._hvp_backend(hp))
        if self.process_group is None:
            return operator
        return self.data_parallel(operator, self.process_group)

    # -- the step --------------------------------------------------------------------------------

    def step(self, closure=None):
        """One step ``θ ← θ − (αΔ + μδ₀)``; ``closure()`` must return the loss, not call backward.

        Returns the loss at ``θ_t`` (before the step), detached; :attr:`stats` says what
        happened.
        """
        if closure is None or not callable(closure):
            raise ArgumentTypeError(
                "closure", f"of {type(self).__name__}.step must be a callable that re-evaluates "
                f"the model and returns the loss tensor (without calling backward), got {closure!r}"
            )
        hp, params = self._hyperparameters(), self._params()
        state = self._global_state(hp)
        state["step"] += 1
        operator = self._operator(closure, params, hp)
        if not torch.isfinite(operator.loss):
            return self._skip("loss", operator, state, hp)
        if not all_finite(operator.grad):
            return self._skip("gradient", operator, state, hp)

        direction, diagnostics = self._direction(operator, state, hp)
        previous = self._flat_state(params, "previous_update")
        curvature_buffer = self._flat_state(params, "curvature_buffer")
        proposal = curvature_update(
            operator.grad, direction, previous, curvature_buffer, lr=hp["lr"],
            momentum=hp["momentum"], adaptive=hp["adaptive"], workspace=self._workspace,
        )
        update_norm = torch.linalg.vector_norm(proposal.update)
        # a finite ‖δ‖ proves every entry finite (one read of δ where isfinite takes four)
        if not (torch.isfinite(update_norm) or all_finite(proposal.update)):
            return self._skip("update", operator, state, hp, **diagnostics)

        adapt_damping = hp["damping_factor"] is not None
        if adapt_damping:
            theta = self._workspace.vectors("parameters", 1, operator.grad)[0]
            torch.cat([p.detach().reshape(-1) for p in params], out=theta)
        self._subtract_from_params(params, proposal.update)
        rho = None
        if adapt_damping:
            new_loss = self._loss_now(closure, operator)
            if not math.isfinite(new_loss):
                self._copy_to_params(params, theta)  # exactly θ_t again
                return self._skip("loss after the step", operator, state, hp, num_forward=1,
                                  **diagnostics)
            rho = (new_loss - float(operator.loss)) / proposal.model_decrease
            state["damping"] = levenberg_marquardt(
                state["damping"], rho, hp["damping_factor"], hp["damping_min"], hp["damping_max"]
            )

        previous.copy_(proposal.update)
        curvature_buffer.copy_(proposal.curvature_buffer)
        state.update(alpha=proposal.alpha, mu=proposal.mu, skipped_in_a_row=0)
        self.stats = self._stats(
            operator, state, num_forward=int(adapt_damping), alpha=proposal.alpha,
            mu=proposal.mu, rho=rho, model_decrease=proposal.model_decrease,
            update_norm=float(update_norm), **diagnostics,
        )
        return operator.loss

    def _stats(self, operator, state, **reported):
        """The :class:`StepStats` of this step: ``reported`` and what every step reports."""
        parallel = self.process_group is not None
        return StepStats(
            step=state["step"], loss=float(operator.loss), damping=state["damping"],
            scale=state["scale"],
            allreduce_bytes=operator.bytes_reduced if parallel else None,
            allreduce_seconds=operator.seconds_reducing if parallel else None,
            **reported,
        )

    def _skip(self, what, operator, state, hp, **reported):
        """Leave the parameters as they are, grow λ (with LM damping), count the skip."""
        state["skipped_in_a_row"] += 1
        if hp["damping_factor"] is not None:  # as for a step that failed badly (ρ < ¼)
            state["damping"] = levenberg_marquardt(
                max(state["damping"], hp["damping_min"]), -math.inf, hp["damping_factor"],
                hp["damping_min"], hp["damping_max"],
            )
        self.stats = self._stats(operator, state, skipped=True,
                                 skip_reason=f"non-finite {what}", **reported)
        if state["skipped_in_a_row"] > hp["max_skipped_steps"]:
            raise NonFiniteStepError(
                f"{type(self).__name__}: non-finite {what} at step {state['step']} "
                f"({state['skipped_in_a_row']} skipped steps in a row, max_skipped_steps="
                f"{hp['max_skipped_steps']}); the parameters were left unchanged. Lower the "
                "learning rate, raise the damping or check the loss for NaN/inf."
            )
        return operator.loss
