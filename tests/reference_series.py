"""A frozen copy of the series, the ε-table, the update and SeriesSFN's step as they were before
they moved into preallocated, reused buffers (sfn_teach at commit 7f132b7): the reference that
tests/test_series_buffers.py compares today's implementation with, bit for bit.

Only the arithmetic that moved is copied; what did not change (the coefficients, the Ritz
values, the scale rules, the step's statistics and skips) is imported."""

import math
import warnings

import torch

from sfn_teach.hvp import flatten, unflatten
from sfn_teach.optim import MAX_SCALE_RETRIES, SeriesSFN
from sfn_teach.scale import choose_scale, grown_scale, remember_spectrum, spectrum_report
from sfn_teach.series import (
    GROWTH_TOLERANCE,
    MAX_RITZ_DIMENSION,
    SeriesResult,
    ritz_values,
    series_coefficients,
)
from sfn_teach.update import Update, adaptive_step_sizes, levenberg_marquardt


def samelson_inverse(w):
    """``w⁻¹ = w / (wᵀw)``."""
    return w / torch.dot(w, w)


def wynn_epsilon(partial_sums, order, sablonniere=False):
    """Wynn's vector ε-algorithm of order ``r`` on the last ``2r + 1`` partial sums."""
    if len(partial_sums) < 2 * order + 1:
        raise ValueError(
            f"order={order} needs at least 2*order+1 = {2 * order + 1} partial sums, "
            f"got {len(partial_sums)}"
        )
    column_before = [torch.zeros_like(partial_sums[-1])] * (2 * order + 1)
    column = list(partial_sums[len(partial_sums) - (2 * order + 1):])
    for s in range(1, 2 * order + 1):
        sigma = (s // 2 + 1) if sablonniere else 1
        next_column = [
            column_before[m + 1] + sigma * samelson_inverse(column[m + 1] - column[m])
            for m in range(len(column) - 1)
        ]
        column_before, column = column, next_column
    return column[0]


def sfn_series(hvp, grad, num_terms, scale, damping=0.0, acceleration_order=0,
               sablonniere=False, kind="damped", square_of_grad=None, stop_if_diverging=False):
    """The series for ``Δ ≈ (|H| + λI)⁻¹ g``, one fresh tensor per operation."""
    coefficients = tuple(series_coefficients(num_terms, damping, scale, kind).tolist())
    keep_factor = 1.0 - damping / scale if kind == "quasi-damped" else 1.0
    window_size = 2 * acceleration_order + 1
    term = grad
    partial_sum = coefficients[0] * grad
    norm = torch.linalg.vector_norm
    term_norms, sum_norms = [norm(term)], [norm(partial_sum)]
    wide = term.double()
    moments = [torch.dot(wide, wide)]
    window = [partial_sum]
    first_square = square_of_grad
    for k in range(1, num_terms):
        square = first_square if k == 1 and first_square is not None else hvp(hvp(term))
        if k == 1:
            first_square = square
        if keep_factor != 1.0:
            term = keep_factor * term
        term = term.add(square, alpha=-1.0 / scale)
        partial_sum = partial_sum.add(term, alpha=coefficients[k])
        window = (window + [partial_sum])[-window_size:]
        term_norms.append(norm(term))
        sum_norms.append(norm(partial_sum))
        if k <= MAX_RITZ_DIMENSION:
            wide, previous = term.double(), wide
            moments += [torch.dot(previous, wide), torch.dot(wide, wide)]
        if stop_if_diverging and term_norms[-1] > (1 + GROWTH_TOLERANCE) * term_norms[-2]:
            break
    root_scale = math.sqrt(scale)
    term_norms = torch.stack(term_norms).tolist()
    moments = torch.stack(moments).tolist()
    result = SeriesResult(
        direction=partial_sum / root_scale,
        num_hvps=2 * (len(term_norms) - 1),
        term_norms=term_norms,
        partial_sum_norms=[n / root_scale for n in torch.stack(sum_norms).tolist()],
        diverging=any(
            later > (1 + GROWTH_TOLERANCE) * earlier
            for earlier, later in zip(term_norms, term_norms[1:])
        ),
        square_of_grad=first_square,
        moments=moments,
        ritz_values=ritz_values(moments, scale, damping, kind, grad.dtype),
    )
    if acceleration_order > 0 and not result.diverging:
        accelerated = wynn_epsilon(window, acceleration_order, sablonniere)
        if torch.isfinite(accelerated).all():
            result.direction = accelerated / root_scale
        else:
            result.acceleration_failed = True
    return result


def curvature_update(grad, direction, previous, curvature_buffer, *, lr, momentum, adaptive):
    """The update ``δ_t = αΔ + μδ₀`` and what comes with it, from flat tensors."""
    g_dir, g_prev = float(grad @ direction), float(grad @ previous)
    q = float(previous @ curvature_buffer) or 1.0
    alpha, mu = adaptive_step_sizes(g_dir, g_prev, q) if adaptive else (lr, momentum)
    model_decrease = 0.5 * (alpha * alpha * g_dir + 2 * alpha * mu * g_prev + mu * mu * q) - (
        alpha * g_dir + mu * g_prev
    )
    return Update(
        update=alpha * direction + mu * previous,
        curvature_buffer=mu * curvature_buffer + alpha * grad,
        alpha=alpha, mu=mu, model_decrease=model_decrease,
    )


class ReferenceSeriesSFN(SeriesSFN):
    """SeriesSFN with the frozen direction and step: fresh tensors everywhere."""

    def _direction(self, operator, state, hp):
        square_of_grad, scale_products = choose_scale(operator, state, hp)
        retries, seen = 0, 0.0
        while True:
            may_retry = hp["scale_rule"] == "ritz" and retries < MAX_SCALE_RETRIES
            result = sfn_series(
                operator.matvec, operator.grad, hp["num_terms"], state["scale"],
                state["damping"], hp["acceleration_order"], hp["sablonniere"], hp["kind"],
                square_of_grad=square_of_grad, stop_if_diverging=may_retry,
            )
            if not (result.diverging and may_retry):
                break
            scale_products += result.num_hvps - 2
            largest = float(result.ritz_values[-1]) if len(result.ritz_values) else 0.0
            seen = max(seen, largest, 2.0 * state["scale"])
            state["scale"] = grown_scale(state["scale"], largest, hp["scale_safety"])
            square_of_grad = result.square_of_grad
            retries += 1
        if result.diverging:
            warnings.warn("the series is diverging", RuntimeWarning, stacklevel=3)
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

    def _reference_flat(self, params, name):
        return flatten(self.state[p][name] if name in self.state[p] else torch.zeros_like(p)
                       for p in params)

    def _reference_store(self, params, name, flat):
        for p, piece in zip(params, unflatten(flat, params)):
            self.state[p][name] = piece.clone()

    def step(self, closure=None):
        hp, params = self._hyperparameters(), self._params()
        state = self._global_state(hp)
        state["step"] += 1
        operator = self._operator(closure, params, hp)
        if not torch.isfinite(operator.loss):
            return self._skip("loss", operator, state, hp)
        if not torch.isfinite(operator.grad).all():
            return self._skip("gradient", operator, state, hp)
        direction, diagnostics = self._direction(operator, state, hp)
        proposal = curvature_update(
            operator.grad, direction, self._reference_flat(params, "previous_update"),
            self._reference_flat(params, "curvature_buffer"),
            lr=hp["lr"], momentum=hp["momentum"], adaptive=hp["adaptive"],
        )
        if not torch.isfinite(proposal.update).all():
            return self._skip("update", operator, state, hp, **diagnostics)
        adapt_damping = hp["damping_factor"] is not None
        theta = [p.detach().clone() for p in params] if adapt_damping else None
        with torch.no_grad():
            for p, piece in zip(params, unflatten(-proposal.update, params)):
                p.add_(piece)
        rho = None
        if adapt_damping:
            new_loss = self._loss_now(closure, operator)
            if not math.isfinite(new_loss):
                with torch.no_grad():
                    for p, saved in zip(params, theta):
                        p.copy_(saved)
                return self._skip("loss after the step", operator, state, hp, num_forward=1,
                                  **diagnostics)
            rho = (new_loss - float(operator.loss)) / proposal.model_decrease
            state["damping"] = levenberg_marquardt(
                state["damping"], rho, hp["damping_factor"], hp["damping_min"], hp["damping_max"]
            )
        self._reference_store(params, "previous_update", proposal.update)
        self._reference_store(params, "curvature_buffer", proposal.curvature_buffer)
        state.update(alpha=proposal.alpha, mu=proposal.mu, skipped_in_a_row=0)
        self.stats = self._stats(
            operator, state, num_forward=int(adapt_damping), alpha=proposal.alpha,
            mu=proposal.mu, rho=rho, model_decrease=proposal.model_decrease,
            update_norm=float(proposal.update.norm()), **diagnostics,
        )
        return operator.loss
