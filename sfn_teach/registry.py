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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .checks import ArgumentError, real
from .optim import CurvatureOptimizer, ExactSFN, Newton, SeriesSFN

__all__ = ["OPTIMIZERS", "OptimizerEntry", "get_optimizer", "step_closure", "with_defaults"]

NOT_HYPERPARAMETERS = ("params", "process_group")
"""Constructor arguments that are not hyperparameters: the parameters, and data parallelism
(set by whoever runs the optimiser)."""


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
    """

    key: str
    cls: type
    label: str
    checks: Mapping[str, Callable] = field(default_factory=dict)

    @property
    def uses_backward(self) -> bool:
        """Whether its closure must call ``loss.backward()`` (``torch.optim``) rather than only
        return the loss (a :class:`~sfn_teach.optim.CurvatureOptimizer`)."""
        return not issubclass(self.cls, CurvatureOptimizer)

    @property
    def defaults(self) -> dict:
        """Every hyperparameter and its default, from the constructor's signature (without
        :data:`NOT_HYPERPARAMETERS`)."""
        return {name: parameter.default
                for name, parameter in inspect.signature(self.cls).parameters.items()
                if name not in NOT_HYPERPARAMETERS}

    def __call__(self, params, **hyperparameters):
        """The optimiser over ``params``, after :func:`with_defaults`' check of the names and
        :attr:`checks`; ``process_group`` goes to a curvature optimiser only."""
        given = dict(hyperparameters)
        process_group = given.pop("process_group", None)
        with_defaults(given, self.defaults, self.key)
        for name, value in given.items():
            if name in self.checks:
                self.checks[name](value)
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
    )
}
"""Every optimiser by name: ``"sgd"``, ``"adam"``, ``"series_sfn"``, ``"exact_sfn"``,
``"newton"``."""


def get_optimizer(key: str) -> OptimizerEntry:
    """The entry of ``key``, or an :class:`~sfn_teach.checks.ArgumentError` listing the keys."""
    if key not in OPTIMIZERS:
        raise ArgumentError("optimizer", f"must be one of {tuple(OPTIMIZERS)}, got {key!r}")
    return OPTIMIZERS[key]


def step_closure(optimizer, loss: Callable[[], torch.Tensor], after_backward=None):
    """The closure that ``optimizer.step`` takes, from ``loss()`` (which evaluates the loss).

    A :class:`~sfn_teach.optim.CurvatureOptimizer` takes ``loss`` itself: it differentiates
    the loss (gradient and Hessian-vector products) on its own. Any other optimiser gets a
    closure that zeroes the gradients, evaluates the loss, calls ``backward`` and returns
    ``after_backward(loss)`` (e.g. :class:`sfn_teach.distributed.GradientMean`, which averages
    loss and gradients over the ranks), or the loss, as ``torch.optim`` expects.
    """
    if isinstance(optimizer, CurvatureOptimizer):
        return loss

    def loss_and_gradient():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value if after_backward is None else after_backward(value)

    return loss_and_gradient
