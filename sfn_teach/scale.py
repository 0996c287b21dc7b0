"""How :class:`sfn_teach.optim.SeriesSFN` chooses the scale ``V`` of its series each step.

The series converges only where ``h² ≤ 2V`` and resolves eigenvalues only down to about
``√(V/K)`` (docs/method.md §3), so ``V`` should sit near ``λ_max(H)²``. The rules
(docs/method.md §5), with ``κ = scale_safety``:

- ``"ritz"``: ``V = (κ λ̂_max)²``, ``λ̂_max²`` the smallest of the last :data:`SPECTRUM_MEMORY`
  largest Ritz values of ``H²`` that the series' own moments give
  (:func:`sfn_teach.series.ritz_values`); a power iteration starts it. A series whose terms
  grow is summed again with a larger ``V`` (:func:`grown_scale`), at most
  :data:`MAX_SCALE_RETRIES` times;
- ``"lower_bound"`` (the paper's): ``V_t = max(V_{t−1}, ‖H²g‖/‖g‖)``, from the series' first
  product pair;
- ``"power"``: ``V = (κ ĥ_max)²`` from a warm-started power iteration every step;
- ``"fixed"``: ``V`` as given.

The functions work on the optimiser's global ``state`` (``scale``, ``spectrum_estimates``,
``power_vector``, ``power_step``, ``warned``), so that a ``state_dict`` round trip continues
the rule exactly, and on its hyperparameters ``hp``.
"""

from __future__ import annotations

import math
import warnings

import torch

from .hvp import power_iteration

__all__ = [
    "GRADIENT_DESCENT_RATIO", "MAX_SCALE_RETRIES", "SCALE_RULES", "SPECTRUM_MEMORY",
    "choose_scale", "grown_scale", "power_estimate", "remember_spectrum", "spectrum_report"
]

SCALE_RULES = ("ritz", "lower_bound", "power", "fixed")

#: above this ratio ``V/λ̂_max²`` the step is gradient descent in disguise (warned once)
GRADIENT_DESCENT_RATIO = 100.0

#: re-runs of a diverging series with a larger ``V`` within one step (``"ritz"`` rule)
MAX_SCALE_RETRIES = 3

#: the ``"ritz"`` rule's ``V`` follows the smallest of this many recent estimates of λ_max(H²)
SPECTRUM_MEMORY = 3


def power_estimate(operator, state, hp) -> tuple[float, int]:
    """``ĥ_max²`` by :func:`sfn_teach.hvp.power_iteration` (``hp["power_iterations"]``
    products at most), warm-started from the last vector; returns it and the products used."""
    grad = operator.grad
    estimate = power_iteration(
        operator.matvec, grad.numel(), num_iterations=hp["power_iterations"],
        init=state.get("power_vector"), dtype=grad.dtype, device=grad.device,
        generator=torch.Generator(grad.device).manual_seed(0),  # the same on every rank
    )
    state["power_vector"], state["power_step"] = estimate.vector, state["step"]
    return estimate.value**2, estimate.num_products


def remember_spectrum(state, estimate: float) -> None:
    """Keep the newest :data:`SPECTRUM_MEMORY` estimates of ``λ_max(H²)``. The smallest sets
    ``V``: a batch whose spectrum is an outlier does not inflate the next steps' ``V`` (too
    large a ``V`` blurs the filter), and a ``V`` too small costs little, because a diverging
    series is stopped at its first growing term and summed again.

    An estimate that is not a positive finite number (``H`` vanishes along everything the
    series saw, e.g. a loss linear in θ, or ``H²g`` overflowed) says nothing about the
    spectrum's scale and is not kept: ``V`` must stay ``> 0``."""
    if not (math.isfinite(estimate) and estimate > 0):
        return
    state["spectrum_estimates"] = [*state.get("spectrum_estimates", []),
                                   estimate][-SPECTRUM_MEMORY:]


def choose_scale(operator, state, hp) -> tuple[torch.Tensor | None, int]:
    """Set ``state["scale"]`` (``V``) for this step by ``hp["scale_rule"]``.

    Returns ``H²g`` if the rule computed it (``"lower_bound"``, whose products the series
    reuses as its first pair) else ``None``, and the products spent on ``V`` alone.
    """
    rule, safety = hp["scale_rule"], hp["scale_safety"] ** 2
    if rule == "fixed":
        state["scale"] = hp["scale"]
    elif rule == "power":
        estimate, products = power_estimate(operator, state, hp)
        state["scale"] = safety * estimate
        return None, products
    elif rule == "ritz":
        products = 0
        stale = state["step"] - state.get("power_step", -math.inf) >= hp["power_every"]
        if not state.get("spectrum_estimates") or (hp["num_terms"] <= 2 and stale):
            estimate, products = power_estimate(operator, state, hp)
            remember_spectrum(state, estimate)
        if state.get("spectrum_estimates"):  # else V stays as it is (at first, hp["scale"])
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


def grown_scale(scale: float, largest_ritz_value: float, safety: float) -> float:
    """The ``V`` to sum a diverging series again with: ``κ²`` times the largest Ritz value of
    ``H²`` that the diverging try gave, and at least ``2V`` (its terms grew, so some
    ``h² > 2V``)."""
    return max(2.0 * scale, safety**2 * largest_ritz_value)


def spectrum_report(state, hp) -> dict:
    """``lambda_max`` (``λ̂_max``, this step's estimate), ``scale_ratio`` (``V/λ̂_max²``) and
    ``implicit_damping`` (``½√(πV/K)``), as :class:`~sfn_teach.update.StepStats` fields;
    warns once per run if ``V`` exceeds ``GRADIENT_DESCENT_RATIO`` times the largest of the
    remembered estimates: the series is then gradient descent with learning rate
    ``≈ 2√(K/(πV))`` (docs/method.md §3). (Every estimate is a lower bound of its step's
    ``λ_max²``; one step's can fall far below when ``g`` hardly touches the top eigenvector,
    so the warning asks the largest of them.)"""
    scale = state["scale"]
    estimates = state.get("spectrum_estimates") or []
    estimate = estimates[-1] if estimates else None
    lambda_max = math.sqrt(estimate) if estimate else None
    ratio = scale / estimate if estimate else None
    implicit_damping = 0.5 * math.sqrt(math.pi * scale / hp["num_terms"])
    largest = max(estimates, default=None)
    if largest and scale / largest > GRADIENT_DESCENT_RATIO and not state.get("warned"):
        state["warned"] = True
        rate = 2 * math.sqrt(hp["num_terms"] / (math.pi * scale))
        warnings.warn(
            f"SeriesSFN step {state['step']}: V = {scale:.3g} is {scale / largest:.3g} × "
            f"λ̂_max² (λ̂_max ≈ {math.sqrt(largest):.3g}): every eigenvalue lies where the "
            f"series' filter is flat, so this is gradient descent with learning rate "
            f"≈ 2√(K/(πV)) = {rate:.3g} (an implicit damping ½√(πV/K) = "
            f"{implicit_damping:.3g} next to λ = {state['damping']:.3g}). Use "
            "scale_rule='ritz' (the default) so that V follows the spectrum, or a smaller scale",
            RuntimeWarning,
            stacklevel=4,
        )
    return dict(lambda_max=lambda_max, scale_ratio=ratio, implicit_damping=implicit_damping)
