"""Work in gradient-equivalents: what :class:`sfn_teach.train.Trainer` counts a step as.

A step reports how many of each kind of work it did (:data:`COUNTS`, the ``num_…`` fields of
:class:`sfn_teach.update.StepStats`); :class:`CostModel` weighs them, one gradient (one forward
and one backward pass) being the unit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import real

__all__ = ["COUNTS", "CostModel"]

COUNTS = ("gradients", "hvps", "forward", "factor_updates", "preconditionings")
"""The kinds of work a step counts, in :class:`CostModel`'s order: gradients, Hessian-vector
products, forward-only passes, K-FAC's factor updates (with their inversions) and K-FAC's
preconditionings (the trainer's counts and record fields of these names)."""


@dataclass(frozen=True)
class CostModel:
    """Work in gradient-equivalents,
    ``c = n_grad + c_HVP · n_HVP + c_fwd · n_fwd + c_KF · n_KF + c_P · n_P``.

    A gradient (one forward and one backward pass) is the unit. ``hvp = c_HVP`` is the cost of
    one Hessian-vector product: by Pearlmutter's trick a small constant; the default 2.0 is a
    round figure (a further product on a retained double-backward graph costs 1.6–2.8
    gradients on the CPU, ``bench/hvp_cost.py``); pass a measured ratio for the machine at
    hand. ``forward = c_fwd`` is a forward-only pass (the Levenberg–Marquardt re-evaluation),
    taken as half a gradient.

    K-FAC (:mod:`sfn_teach.kfac`) counts its loss's backward and, on a curvature step, the
    Monte-Carlo Fisher's backward as gradients; beyond them, ``kfac_curvature = c_KF`` is what
    a curvature step's factor updates (``A = E[a aᵀ]``, ``G = E[g gᵀ]`` of every layer) and
    damped Cholesky inversions cost (``n_KF``: curvature steps), and ``kfac_precondition =
    c_P`` what the preconditioning ``G⁻¹ ∇W A⁻¹`` of every K-FAC step costs (``n_P``: K-FAC
    steps). Both are ratios to a gradient measured by ``bench/kfac_cost.py``, and depend on
    the network and the batch (the factor updates grow with the batch like a gradient, the
    inversions do not, so they weigh less at a larger batch); the defaults are measured on
    the digits MLP 64-12-10 (float64, batch 400, 1 thread, the K-FAC row of
    ``benchmarks/digits_mlp.toml``: 2.1 + 0.68 and 0.12, see :mod:`sfn_teach.kfac`). A config
    sets its own (``[cost]``).
    """

    hvp: float = 2.0
    forward: float = 0.5
    kfac_curvature: float = 2.8
    kfac_precondition: float = 0.12

    def __post_init__(self):
        real("hvp", self.hvp, 0.0, low_open=True)
        for name in ("forward", "kfac_curvature", "kfac_precondition"):
            real(name, getattr(self, name), 0.0)

    def __call__(self, gradients: int, hvps: int, forward: int, factor_updates: int = 0,
                 preconditionings: int = 0) -> float:
        """The gradient-equivalents of the counts (:data:`COUNTS`, in that order)."""
        return (gradients + self.hvp * hvps + self.forward * forward
                + self.kfac_curvature * factor_updates + self.kfac_precondition * preconditionings)
