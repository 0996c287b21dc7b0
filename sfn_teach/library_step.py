"""One step of an optimiser the package does not own (``torch.optim``, pytorch-optimizer), with
its work counted and, where its registry entry asks, a non-finite step undone.

A curvature optimiser of :mod:`sfn_teach.optim` counts its own gradients and Hessian-vector
products and skips a non-finite step itself. Any other optimiser is counted from the outside:

- one gradient per evaluation of its closure (one a step for SGD and Adam, several for L-BFGS,
  whose line search re-evaluates), plus the Hessian-vector products its registry entry says
  the step takes (:attr:`sfn_teach.registry.OptimizerEntry.hvps`: AdaHessian's and Sophia-H's
  Hutchinson products), the extra gradients it says (``gradients``: K-FAC's Fisher backward)
  and the factor updates and preconditionings it says (``factor_work``: K-FAC's);
- an entry that is ``guarded`` has its parameters and state copied before the step; a step
  that leaves a non-finite loss or parameter is undone (both restored) and
  :class:`~sfn_teach.optim.NonFiniteStepError` raised, so nothing non-finite reaches the
  parameters, a record or a checkpoint.
"""

from __future__ import annotations

import copy
import math

import torch

from .optim import NonFiniteStepError, StepStats

__all__ = ["library_step"]


def library_step(optimizer, entry, closure, step: int) -> StepStats:
    """``optimizer.step(closure)`` as step ``step + 1``; its :class:`StepStats` (``loss``: the
    closure's first value, ``num_gradients``: the closure's evaluations and the entry's extra
    gradients, ``num_hvps``, ``num_factor_updates`` and ``num_preconditionings``: the
    entry's counts). ``entry`` is the optimiser's registry entry, or ``None`` for one that the
    registry does not know (counted as one gradient per closure evaluation, unguarded)."""
    hvps = entry.hvps(optimizer) if entry is not None and entry.hvps else 0
    extra = entry.gradients(optimizer) if entry is not None and entry.gradients else 0
    factor_updates, preconditionings = (entry.factor_work(optimizer) if entry is not None
                                        and entry.factor_work else (0, 0))
    guarded = entry is not None and entry.guarded
    params = [p for group in optimizer.param_groups for p in group["params"]]
    before = _snapshot(optimizer, params) if guarded else None
    evaluations = 0

    def counted():
        nonlocal evaluations
        evaluations += 1
        return closure()

    loss = float(optimizer.step(counted).detach())
    if entry is not None and entry.create_graph:  # break the gradient ↔ graph cycle
        optimizer.zero_grad(set_to_none=True)
    if guarded:
        _refuse_non_finite(optimizer, params, loss, before, entry.label, step)
    return StepStats(step=step + 1, loss=loss, num_gradients=evaluations + extra,
                     num_hvps=hvps, num_factor_updates=factor_updates,
                     num_preconditionings=preconditionings)


def _snapshot(optimizer, params):
    """The parameters and the optimiser's state, copied (to undo a non-finite step)."""
    return [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict())


def _refuse_non_finite(optimizer, params, loss: float, before, label: str, step: int) -> None:
    """Undo the step just taken and raise :class:`~sfn_teach.optim.NonFiniteStepError` if it
    left a non-finite loss or parameter (``before``: :func:`_snapshot`)."""
    if math.isfinite(loss):
        with torch.no_grad():
            if all(bool(torch.isfinite(p).all()) for p in params):
                return
    what = "loss" if not math.isfinite(loss) else "parameters"
    saved_params, state = before
    with torch.no_grad():
        for p, saved in zip(params, saved_params):
            p.copy_(saved)
    optimizer.load_state_dict(state)
    raise NonFiniteStepError(
        f"{label}: step {step + 1} gave non-finite {what} (loss {loss}); the step was undone "
        f"(parameters and optimiser state as after step {step}) and the run stops: its "
        "records and checkpoints hold only finite steps")
