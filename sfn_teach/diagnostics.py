"""Curvature diagnostics of a small model: its dense Hessian, and how an optimiser's directions
compare with exact saddle-free Newton on one batch.

An instrument for models of at most :data:`sfn_teach.hvp.DENSE_MAX_DIM` parameters: the dense
``H`` costs ``n`` Hessian-vector products. :class:`sfn_teach.train.Trainer` records
:func:`curvature_diagnostics` with ``curvature_every``; like evaluation, they are neither timed
nor counted as work.
"""

from __future__ import annotations

import torch

from .checks import ArgumentError, integer
from .device import tf32
from .hvp import DENSE_MAX_DIM, ModelHVP
from .models import count_parameters
from .optim import CurvatureOptimizer, SeriesSFN
from .series import exact_sfn_direction, sfn_series

__all__ = ["CURVATURE_FIELDS", "curvature_diagnostics", "diagnostic_batch", "hessian_eigenvalues"]

CURVATURE_FIELDS = ("lambda_max_squared", "cos_gradient_exact", "cos_series_exact")
"""The record fields of the curvature diagnostics (:func:`curvature_diagnostics`)."""


def _hessian_and_gradient(model, loss_fn, inputs, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense Hessian ``H`` and the gradient ``g`` of ``loss_fn(model(inputs), targets)``.

    ``H`` over all parameters of ``model`` is formed column by column from ``n`` exact
    Hessian-vector products (:meth:`sfn_teach.hvp.ModelHVP.dense`: BatchNorm on batch
    statistics, running statistics untouched; at most ``DENSE_MAX_DIM`` parameters), with TF32
    off.
    """
    with tf32(False):
        operator = ModelHVP(model, loss_fn, inputs, targets)
        return operator.dense(), operator.grad


def hessian_eigenvalues(model, loss_fn, inputs, targets) -> torch.Tensor:
    """The eigenvalues ``h_1 ≤ … ≤ h_n`` of the Hessian of ``loss_fn(model(inputs), targets)``.

    ``H`` is formed from ``n`` exact Hessian-vector products (BatchNorm on batch statistics)
    and diagonalised with ``torch.linalg.eigvalsh``: small models only.
    """
    hessian, _ = _hessian_and_gradient(model, loss_fn, inputs, targets)
    return torch.linalg.eigvalsh(hessian)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """``cos(a, b) = aᵀb / (‖a‖ ‖b‖)``."""
    return float(a @ b / (a.norm() * b.norm()))


def curvature_diagnostics(model, loss_fn, inputs, targets, optimizer) -> dict:
    """How the directions of ``optimizer`` compare with exact saddle-free Newton, now.

    On the batch ``(inputs, targets)``, with ``H`` the dense Hessian (eigenvalues ``h_i``) and
    ``g`` the gradient of the loss there (:func:`hessian_eigenvalues`' construction), returns

    - ``lambda_max_squared = max_i h_i²``, the largest eigenvalue of ``H²``: the series
      converges where ``h² ≤ 2V``, so compare it with the ``V`` the optimiser uses;
    - ``cos_gradient_exact = cos(g, Δ_exact)`` with ``Δ_exact = (|H| + λI)⁻¹ g``
      (:func:`sfn_teach.series.exact_sfn_direction`, in the optimiser's ``kind``), where ``λ``
      is the optimiser's current damping (its ``λ₀`` before the first step);
    - ``cos_series_exact = cos(Δ_series, Δ_exact)`` for a :class:`~sfn_teach.optim.SeriesSFN`,
      with ``Δ_series`` the series of its ``K``, ``r``, ``sablonniere`` and ``kind`` at its
      current ``V`` and ``λ`` (:func:`sfn_teach.series.sfn_series` on ``v ↦ Hv``), i.e. the
      direction its next step would take on this batch were ``V`` kept; from its first step on
      (before it, it has no ``V`` yet).

    ``Δ_exact`` is well defined only for ``λ > 0``: a network's Hessian has exactly flat
    directions (e.g. the weights of an input that is always 0), along which ``(|H|)⁻¹g`` is
    ``0/0``. So both cosines are ``None`` for ``λ = 0`` and for an optimiser without a damping
    (``torch.optim``); ``cos_series_exact`` is ``None`` for every other optimiser too. The
    model, the optimiser and every random generator are left as they were: this is an
    instrument, and costs ``n`` Hessian-vector products (small models only).
    """
    hessian, grad = _hessian_and_gradient(model, loss_fn, inputs, targets)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    diagnostics = dict.fromkeys(CURVATURE_FIELDS)
    diagnostics["lambda_max_squared"] = float(eigenvalues.square().max())
    if not isinstance(optimizer, CurvatureOptimizer):
        return diagnostics
    hyperparameters = optimizer.param_groups[0]
    first = next(p for group in optimizer.param_groups for p in group["params"]
                 if p.requires_grad)
    state = optimizer.state[first]  # where a curvature optimiser keeps V and λ
    damping = state.get("damping", hyperparameters["damping"])
    if damping == 0:
        return diagnostics
    kind = hyperparameters.get("kind", "damped")
    exact = exact_sfn_direction(hessian, grad, damping, kind)
    diagnostics["cos_gradient_exact"] = _cosine(grad, exact)
    if isinstance(optimizer, SeriesSFN) and state.get("scale") is not None:
        series = sfn_series(lambda v: hessian @ v, grad, hyperparameters["num_terms"],
                            state["scale"], damping, hyperparameters["acceleration_order"],
                            hyperparameters["sablonniere"], kind)
        diagnostics["cos_series_exact"] = _cosine(series.direction, exact)
    return diagnostics


def diagnostic_batch(model, dataset, curvature_every, curvature_batch_size, process_group):
    """The first ``curvature_batch_size`` training examples as ``(model inputs, targets)``,
    after checking that :class:`~sfn_teach.train.Trainer` can record curvature diagnostics every
    ``curvature_every`` records (a ValueError names the argument and its valid range)."""
    integer("curvature_every", curvature_every, 1)
    if count_parameters(model) > DENSE_MAX_DIM:
        raise ArgumentError("curvature_every", f"needs the dense Hessian: at most "
                            f"sfn_teach.hvp.DENSE_MAX_DIM = {DENSE_MAX_DIM} parameters, but the "
                            f"model has {count_parameters(model)}")
    if process_group is not None:
        raise ArgumentError("curvature_every", "must be None when data-parallel (process_group "
                            "set): the diagnostics run in one process")
    integer("curvature_batch_size", curvature_batch_size, 1, len(dataset.train))
    return next(dataset.train.chunks(curvature_batch_size))
