"""Every optimiser of the classroom as a closed-form update on a 2-D toy.

:func:`sfn_teach.toys.run_trajectory` builds a real optimiser and an autograd graph at every
step: ~0.5 ms per step of gradient descent and ~3.5 ms per step of series SFN with K = 50, far
too slow for a slider that follows the mouse. On a 2-D toy every quantity the optimisers need
has a closed form: ``f``, ``g`` and ``H`` from :attr:`sfn_teach.landscapes.Toy.derivatives`,
and each update rule below in a few lines of arithmetic on floats.
:func:`sfn_teach.toys.run_trajectories` applies them; tests/test_toys.py checks that its
trajectories are those of the real optimisers to float64 rounding.

:data:`CLOSED_FORMS` maps each classroom optimiser (:data:`sfn_teach.toys.OPTIMIZERS`) to
``build(hp)``, which returns ``step(θ, g, H, f) -> (θ_new or None, stats)`` for its full
hyperparameters ``hp`` (``None``: the step is skipped; ``H`` is the triple
``(∂²f/∂x², ∂²f/∂x∂y, ∂²f/∂y²)``).
"""

from __future__ import annotations

import math

import numpy as np

from .series import series_coefficients

__all__ = ["CLOSED_FORMS", "GROWTH_TOLERANCE"]

#: a series term longer than ``1 + GROWTH_TOLERANCE`` times the one before proves some
#: ``h² > 2V`` (the threshold of :func:`sfn_teach.series.sfn_series`)
GROWTH_TOLERANCE = 1e-6


def _sgd(hp):
    """``torch.optim.SGD``: ``b ← μb + g`` (``b = g`` at the first step; no ``b`` for μ = 0),
    ``θ ← θ − αb``."""
    lr, momentum, buffer = hp["lr"], hp.get("momentum", 0.0), None

    def step(theta, g, h, loss):
        nonlocal buffer
        if momentum:
            buffer = g if buffer is None else (momentum * buffer[0] + g[0],
                                               momentum * buffer[1] + g[1])
            g = buffer
        return (theta[0] - lr * g[0], theta[1] - lr * g[1]), {}

    return step


def _adam(hp):
    """``torch.optim.Adam`` at step ``t``: ``m ← m + (1 − β₁)(g − m)``,
    ``v ← β₂v + (1 − β₂)g²``, ``θ ← θ − α/(1 − β₁ᵗ) · m/(√v/√(1 − β₂ᵗ) + ε)`` per coordinate."""
    lr, (beta1, beta2), eps = hp["lr"], hp["betas"], hp["eps"]
    m, v, t = [0.0, 0.0], [0.0, 0.0], 0

    def step(theta, g, h, loss):
        nonlocal t
        t += 1
        step_size, root_correction = lr / (1 - beta1**t), (1 - beta2**t) ** 0.5
        new = []
        for i in range(2):
            m[i] = m[i] + (1 - beta1) * (g[i] - m[i])
            v[i] = v[i] * beta2 + (1 - beta2) * (g[i] * g[i])
            new.append(theta[i] - step_size * (m[i] / (math.sqrt(v[i]) / root_correction + eps)))
        return tuple(new), {}

    return step


def _matrix(h):
    """The symmetric 2×2 ``H`` from ``(∂²f/∂x², ∂²f/∂x∂y, ∂²f/∂y²)``."""
    return np.array([[h[0], h[1]], [h[1], h[2]]])


def _newton_direction(hp):
    """``Δ = (H + λI)⁻¹g`` (LU with partial pivoting, as ``torch.linalg.solve``); NaN if
    ``H + λI`` is exactly singular."""
    identity = hp["damping"] * np.eye(2)

    def direction(g, h):
        try:
            return np.linalg.solve(_matrix(h) + identity, g), {}
        except np.linalg.LinAlgError:
            return np.full(2, math.nan), {}

    return direction


def _exact_sfn_direction(hp):
    """``Δ = Q diag(1/(|h_i| + λ)) Qᵀ g`` from ``H = Q diag(h) Qᵀ``."""
    damping = hp["damping"]

    def direction(g, h):
        eigenvalues, q = np.linalg.eigh(_matrix(h))
        return q @ (1.0 / (np.abs(eigenvalues) + damping) * (q.T @ g)), {}

    return direction


def _wynn_epsilon(partial_sums: np.ndarray, order: int, sablonniere: bool) -> np.ndarray:
    """Wynn's ε-algorithm of order ``r`` (:func:`sfn_teach.series.wynn_epsilon`) on the rows
    of ``partial_sums`` (``2r + 1`` vectors), one column of the ε-table at a time:
    ``ε_s^{(m)} = ε_{s−2}^{(m+1)} + σ_s w/(wᵀw)`` with ``w = ε_{s−1}^{(m+1)} − ε_{s−1}^{(m)}``."""
    before, column = np.zeros_like(partial_sums), partial_sums
    for s in range(1, 2 * order + 1):
        sigma = s // 2 + 1 if sablonniere else 1
        w = column[1:] - column[:-1]
        before, column = column, before[1 : len(w) + 1] + sigma * (w / np.sum(w * w, axis=1,
                                                                        keepdims=True))
    return column[0]


def _series_direction(hp):
    """The series of :func:`sfn_teach.series.sfn_series` in the eigenbasis of ``H``.

    With ``H = Q diag(h) Qᵀ`` and ``ĝ = Qᵀg`` the terms ``v_k = (I − H²/V)^k g`` are
    ``Q diag(x_i^k) ĝ``, ``x_i = 1 − h_i²/V`` (quasi-damped: ``1 − (h_i² + λ)/V``): all ``K``
    terms and their partial sums ``S_j = Σ_{k≤j} c_k v_k`` at once, and
    ``Δ = V^(-½) Q S_{K−1}`` — the spectral filter ``φ_K(h_i)`` applied to each ``ĝ_i``. The
    terms grow (``diverging``) only if some ``h_i² > 2V``; otherwise, with ``r ≥ 1``, Wynn's ε
    on the last ``2r + 1`` partial sums (the Samelson inverse ``w/(wᵀw)`` does not depend on
    the basis) replaces ``S_{K−1}``, unless it is not finite (``acceleration_failed``).
    """
    terms, scale, order = hp["num_terms"], hp["scale"], hp["acceleration_order"]
    coefficients = series_coefficients(terms, hp["damping"], scale, hp["kind"]).numpy()[:, None]
    shift = hp["damping"] if hp["kind"] == "quasi-damped" else 0.0
    powers = np.arange(terms)[:, None]

    def direction(g, h):
        eigenvalues, q = np.linalg.eigh(_matrix(h))
        x = 1.0 - (eigenvalues * eigenvalues + shift) / scale
        v = (q.T @ g) * x**powers  # row k: v_k in the eigenbasis
        sums = np.cumsum(coefficients * v, axis=0)
        norms = np.hypot(v[:, 0], v[:, 1])
        stats = dict(diverging=bool(np.any(norms[1:] > (1 + GROWTH_TOLERANCE) * norms[:-1])),
                     acceleration_failed=False)
        total = sums[-1]
        if order > 0 and not stats["diverging"]:
            accelerated = _wynn_epsilon(sums[-(2 * order + 1):], order, hp["sablonniere"])
            if np.isfinite(accelerated).all():
                total = accelerated
            else:
                stats["acceleration_failed"] = True
        return q @ total / math.sqrt(scale), stats

    return direction


def _curvature(direction_rule):
    """The update of :class:`~sfn_teach.optim.CurvatureOptimizer` with fixed ``(α, μ)``:
    ``δ = αΔ + μδ₀``, ``θ ← θ − δ``; a non-finite loss, gradient or update skips the step
    (``θ`` stays), and more than ``max_skipped_steps`` skips in a row stop the run."""

    def build(hp):
        lr, momentum, direction = hp["lr"], hp["momentum"], direction_rule(hp)
        previous, count = (0.0, 0.0), 0

        def step(theta, g, h, loss):
            nonlocal previous, count
            count += 1
            stats = dict(step=count, loss=loss, skipped=False)
            for what, value in (("loss", (loss,)), ("gradient", g)):
                if not all(map(math.isfinite, value)):
                    return None, dict(stats, skipped=True, skip_reason=f"non-finite {what}")
            delta, extra = direction(np.array(g), h)
            stats.update(extra)
            update = (lr * float(delta[0]) + momentum * previous[0],
                      lr * float(delta[1]) + momentum * previous[1])
            if not all(map(math.isfinite, update)):
                return None, dict(stats, skipped=True, skip_reason="non-finite update")
            previous = update
            return (theta[0] - update[0], theta[1] - update[1]), stats

        return step

    return build


CLOSED_FORMS = {
    "gd": _sgd, "momentum": _sgd, "adam": _adam,
    "newton": _curvature(_newton_direction),
    "exact_sfn": _curvature(_exact_sfn_direction),
    "series_sfn": _curvature(_series_direction),
}
