"""The optimisers by name: the one registry that the toys, the trainer, the benchmark configs
and the tuner read.

Each :class:`OptimizerEntry` says which class a name builds, its label, whether its closure
calls ``backward`` (``torch.optim``) or only returns the loss (the curvature optimisers of
:mod:`sfn_teach.optim`, which take the gradient and the Hessian-vector products themselves),
and its hyperparameters with their defaults, read from the class's signature (never copied).
:func:`step_closure` is the one place that turns "evaluate the loss" into the closure an
optimiser's ``step`` takes.

``torch.optim`` checks its hyperparameters with messages that do not name them
(``"Invalid beta parameter at index 1: 1.5"``), so an entry checks the ones it documents first,
with :mod:`sfn_teach.checks`: every refusal is an :class:`~sfn_teach.checks.ArgumentError`
whose ``field`` is the hyperparameter.

**The optimisers a user would pick instead**, from the libraries made for them, not
written here: AdaHessian (Yao et al. 2021) and Sophia-H (Liu et al. 2023) from
``pytorch-optimizer``, and L-BFGS from ``torch.optim``. AdaHessian and Sophia-H estimate the
Hessian's diagonal by Hutchinson's ``z ⊙ Hz`` from the gradient's graph, so their entries say
``create_graph``: :func:`step_closure` calls ``loss.backward(create_graph=True)`` for them (the
user never does). Their work per step, in the trainer's counts (:class:`sfn_teach.train.CostModel`):
one gradient per closure evaluation (L-BFGS evaluates its closure several times per step) and
:attr:`OptimizerEntry.hvps` Hessian-vector products (AdaHessian: ``num_samples`` every
``update_period`` steps, default every step; Sophia-H: the same, default every 10th step).
K-FAC (Martens & Grosse 2015) comes from ASDL (:mod:`sfn_teach.kfac`): its entry says
``needs_model`` (it is built on the model, not its parameters, with ``data_size`` the batch
size, which the builders pass) and its closure only returns the loss, like a curvature
optimiser's; it counts :attr:`OptimizerEntry.gradients` extra gradients (the Monte-Carlo
Fisher's backward) on the steps that recompute its factors, and its
:attr:`OptimizerEntry.factor_work`: those steps' factor updates and inversions, and every
step's preconditioning (weighed by ``CostModel.kfac_curvature`` and ``kfac_precondition``).
Their entries say ``guarded``: the trainer undoes a step that leaves a non-finite loss or
parameter and stops the run with :class:`~sfn_teach.optim.NonFiniteStepError` (these libraries
make no promise about non-finite values).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytorch_optimizer
import torch

from .checks import ArgumentError, choice, integer, real
from .kfac import FISHER_GRADIENTS, KFAC
from .optim import CurvatureOptimizer, ExactSFN, Newton, SeriesSFN

__all__ = ["OPTIMIZERS", "OptimizerEntry", "entry_of", "get_optimizer", "hutchinson_hvps",
           "kfac_factor_work", "kfac_gradients", "step_closure", "with_defaults"]

NOT_HYPERPARAMETERS = ("params", "process_group", "model", "data_size")
"""Constructor arguments that are not hyperparameters: the parameters (or the model), data
parallelism and K-FAC's batch size (set by whoever builds the optimiser)."""


def _betas(value):
    """Adam's ``(β₁, β₂)``: two reals in ``[0, 1)``."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(type(beta) in (int, float) and 0 <= beta < 1 for beta in value)):
        raise ArgumentError("betas", f"must be two numbers (β₁, β₂) in [0, 1), got {value!r}")
    return tuple(float(beta) for beta in value)


FIRST_ORDER_CHECKS = {
    "lr": lambda value: real("lr", value, 0.0, low_open=True),
    "momentum": lambda value: real("momentum", value, 0.0),
    "weight_decay": lambda value: real("weight_decay", value, 0.0),
    "eps": lambda value: real("eps", value, 0.0),
    "betas": _betas,
}
"""The checks of ``torch.optim``'s hyperparameters, by name: ``α > 0``, ``μ ≥ 0``, weight decay
and ``ε`` ``≥ 0``, ``β₁, β₂ ∈ [0, 1)``."""

HUTCHINSON_CHECKS = {
    **FIRST_ORDER_CHECKS,
    "update_period": lambda value: integer("update_period", value, 1),
    "num_samples": lambda value: integer("num_samples", value, 1),
    "hessian_distribution": lambda value: choice("hessian_distribution", value,
                                                 ("gaussian", "rademacher")),
    "hessian_power": lambda value: real("hessian_power", value, 0.0, 1.0),
    "p": lambda value: real("p", value, 0.0, low_open=True),
}
"""The checks of AdaHessian's and Sophia-H's hyperparameters (``pytorch-optimizer``'s own
messages do not always name the field): those of Adam, the Hessian's update period and samples
(ints ``≥ 1``), the probe distribution, AdaHessian's power ``k ∈ [0, 1]`` and Sophia-H's clip
``ρ > 0`` (``p``)."""

LBFGS_CHECKS = {
    "lr": FIRST_ORDER_CHECKS["lr"],
    "max_iter": lambda value: integer("max_iter", value, 1),
    "max_eval": lambda value: integer("max_eval", value, 1),
    "tolerance_grad": lambda value: real("tolerance_grad", value, 0.0),
    "tolerance_change": lambda value: real("tolerance_change", value, 0.0),
    "history_size": lambda value: integer("history_size", value, 1),
    "line_search_fn": lambda value: choice("line_search_fn", value, (None, "strong_wolfe")),
}
"""The checks of :class:`torch.optim.LBFGS`'s hyperparameters: ``α > 0``, iterations, evaluations
and history ints ``≥ 1``, tolerances ``≥ 0``, line search ``None`` or ``"strong_wolfe"``."""


def hutchinson_hvps(optimizer) -> int:
    """The Hessian-vector products the next ``step`` of a ``pytorch-optimizer`` Hutchinson
    optimiser (AdaHessian, Sophia-H) takes: ``num_samples`` if its step count is a multiple of
    ``update_period`` (the library's own rule), else none."""
    step = optimizer.param_groups[0].get("step", 0)
    return optimizer.num_samples if step % optimizer.update_period == 0 else 0


def kfac_gradients(optimizer) -> int:
    """The gradients the next K-FAC step takes beyond its closure's: the Monte-Carlo Fisher's
    backward on a step that recomputes the factors, else none."""
    return FISHER_GRADIENTS if optimizer.curvature_step else 0


def kfac_factor_work(optimizer) -> tuple[int, int]:
    """``(n_KF, n_P)`` of the next K-FAC step: one factor update (``A``, ``G`` and their damped
    inverses) on a step that recomputes them, else none; one preconditioning
    ``G⁻¹ ∇W A⁻¹`` on every step."""
    return int(optimizer.curvature_step), 1


def with_defaults(given: Mapping, defaults: Mapping, owner: str) -> dict:
    """``defaults`` updated by ``given``; an :class:`~sfn_teach.checks.ArgumentError` names the
    first name of ``given`` that ``defaults`` lacks and lists the valid ones (of ``owner``)."""
    for name in given:
        if name not in defaults:
            raise ArgumentError(name, f"is not a hyperparameter of {owner} (valid: "
                                      f"{', '.join(defaults)})")
    return {**defaults, **given}


@dataclass(frozen=True)
class OptimizerEntry:
    """An optimiser by name: ``entry(params, **hyperparameters)`` builds it.

    Attributes:
        key: its name in :data:`OPTIMIZERS` (a config's ``type``).
        cls: the optimiser class.
        label: a human-readable name for legends and tables.
        checks: per hyperparameter, a check run before the class sees the value.
        create_graph: whether the closure's ``backward`` must keep the gradient's graph
            (optimisers that differentiate the gradient again: AdaHessian, Sophia-H).
        hvps: ``hvps(optimizer)``, the Hessian-vector products its next ``step`` takes beyond
            the closure's gradients (``None``: none) — for the trainer's counts.
        guarded: the trainer undoes a step that leaves a non-finite loss or parameter and stops
            the run (:class:`sfn_teach.train.Trainer`).
        needs_model: built on the model (``entry(model, data_size=batch, …)``), not on its
            parameters; its closure only returns the loss (K-FAC).
        gradients: ``gradients(optimizer)``, the gradients its next ``step`` takes beyond the
            closure's evaluations (``None``: none) — for the trainer's counts.
        needs_contiguous: its library flattens gradients with ``view(-1)``, which the
            gradients of channels-last convolution weights refuse, so the model is stored
            contiguous for it whatever the config asks (L-BFGS, K-FAC).
        factor_work: ``factor_work(optimizer)``, the factor updates and preconditionings
            ``(n_KF, n_P)`` its next ``step`` takes (``None``: none; K-FAC's) — for the
            trainer's counts (:class:`sfn_teach.cost.CostModel`).
    """

    key: str
    cls: type
    label: str
    checks: Mapping[str, Callable] = field(default_factory=dict)
    create_graph: bool = False
    hvps: Callable | None = None
    guarded: bool = False
    needs_model: bool = False
    gradients: Callable | None = None
    needs_contiguous: bool = False
    factor_work: Callable | None = None

    @property
    def uses_backward(self) -> bool:
        """Whether its closure must call ``loss.backward()`` (``torch.optim``) rather than only
        return the loss (a :class:`~sfn_teach.optim.CurvatureOptimizer`, K-FAC)."""
        return not issubclass(self.cls, CurvatureOptimizer) and not self.needs_model

    @property
    def defaults(self) -> dict:
        """Every hyperparameter and its default, from the constructor's signature (without
        :data:`NOT_HYPERPARAMETERS`)."""
        return {name: parameter.default
                for name, parameter in inspect.signature(self.cls).parameters.items()
                if name not in NOT_HYPERPARAMETERS
                and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)}

    def __call__(self, params, **hyperparameters):
        """The optimiser over ``params``, after :func:`with_defaults`' check of the names and
        :attr:`checks`; ``process_group`` goes to a curvature optimiser only."""
        given = dict(hyperparameters)
        process_group = given.pop("process_group", None)
        data_size = given.pop("data_size", None)
        with_defaults(given, self.defaults, self.key)
        for name, value in given.items():
            if name in self.checks:
                self.checks[name](value)
        if self.needs_model:
            if process_group is not None:
                raise ArgumentError("process_group", f"{self.label} is not supported "
                                                     "data-parallel")
            return self.cls(params, **given, data_size=data_size)
        if process_group is not None:
            if self.uses_backward:
                raise ArgumentError("process_group", f"is not taken by {self.key}: a torch.optim "
                                    "optimiser gets averaged gradients from the trainer")
            given["process_group"] = process_group
        return self.cls(params, **given)


def _entry(key, cls, label):
    checks = FIRST_ORDER_CHECKS if not issubclass(cls, CurvatureOptimizer) else {}
    return OptimizerEntry(key, cls, label, checks)


OPTIMIZERS: dict[str, OptimizerEntry] = {
    entry.key: entry for entry in (
        _entry("sgd", torch.optim.SGD, "SGD"),
        _entry("adam", torch.optim.Adam, "Adam"),
        _entry("series_sfn", SeriesSFN, "series SFN"),
        _entry("exact_sfn", ExactSFN, "exact SFN"),
        _entry("newton", Newton, "Newton"),
        OptimizerEntry("adahessian", pytorch_optimizer.AdaHessian, "AdaHessian",
                       HUTCHINSON_CHECKS, create_graph=True, hvps=hutchinson_hvps, guarded=True),
        OptimizerEntry("sophia_h", pytorch_optimizer.SophiaH, "Sophia-H", HUTCHINSON_CHECKS,
                       create_graph=True, hvps=hutchinson_hvps, guarded=True),
        OptimizerEntry("lbfgs", torch.optim.LBFGS, "L-BFGS", LBFGS_CHECKS, guarded=True,
                       needs_contiguous=True),
        OptimizerEntry("kfac", KFAC, "K-FAC", guarded=True, needs_model=True,
                       gradients=kfac_gradients, needs_contiguous=True,
                       factor_work=kfac_factor_work),
    )
}
"""Every optimiser by name: ``"sgd"``, ``"adam"``, ``"series_sfn"``, ``"exact_sfn"``,
``"newton"``, ``"adahessian"``, ``"sophia_h"``, ``"lbfgs"``, ``"kfac"``."""


def get_optimizer(key: str) -> OptimizerEntry:
    """The entry of ``key``, or an :class:`~sfn_teach.checks.ArgumentError` listing the keys."""
    if key not in OPTIMIZERS:
        raise ArgumentError("optimizer", f"must be one of {tuple(OPTIMIZERS)}, got {key!r}")
    return OPTIMIZERS[key]


def entry_of(optimizer) -> OptimizerEntry | None:
    """The registry entry whose class ``optimizer`` is an instance of (exactly), else ``None``."""
    return next((entry for entry in OPTIMIZERS.values() if type(optimizer) is entry.cls), None)


def step_closure(optimizer, loss: Callable[[], torch.Tensor], after_backward=None):
    """The closure that ``optimizer.step`` takes, from ``loss()`` (which evaluates the loss).

    A :class:`~sfn_teach.optim.CurvatureOptimizer` (or K-FAC) takes ``loss`` itself: it
    differentiates the loss (gradient and Hessian-vector products) on its own. Any other
    optimiser gets a closure that zeroes the gradients, evaluates the loss, calls ``backward`` (with
    ``create_graph=True`` where its entry says :attr:`~OptimizerEntry.create_graph`) and returns
    ``after_backward(loss)`` (e.g. :class:`sfn_teach.distributed.GradientMean`, which averages
    loss and gradients over the ranks), or the loss, as ``torch.optim`` expects.
    """
    entry = entry_of(optimizer)
    if isinstance(optimizer, CurvatureOptimizer) or (entry is not None and entry.needs_model):
        return loss
    create_graph = entry is not None and entry.create_graph

    def loss_and_gradient():
        optimizer.zero_grad()
        value = loss()
        with warnings.catch_warnings():  # the trainer sets the gradients to None after the step
            warnings.filterwarnings("ignore", "Using backward.. with create_graph=True")
            value.backward(create_graph=create_graph)
        return value if after_backward is None else after_backward(value)

    return loss_and_gradient
