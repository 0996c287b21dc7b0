"""Plateaus in real networks: small initialisation, a saddle at the origin, and its escape.

Two settings where the saddle at ``θ = 0`` bites, after Saxe, McClelland & Ganguli (2014) and
Dauphin et al. (2014), and the tools to measure them (notebook 05):

- :class:`DeepLinear`, ``x ↦ W_L ⋯ W_1 x`` with ``d × d`` layers, on whitened inputs
  (``XᵀX/n = I``) with targets ``y = Mx`` from a teacher ``M = U diag(s) Vᵀ``
  (:func:`deep_linear_task`). With ``W = W_L ⋯ W_1`` the loss is exactly

      L(θ) = ½ E‖Wx − y‖² = ½ ‖W − M‖²_F,
      ∂L/∂W_i = (W_L ⋯ W_{i+1})ᵀ (W − M) (W_{i−1} ⋯ W_1)ᵀ

  (:func:`deep_linear_loss`, :func:`deep_linear_gradients`). ``θ = 0`` is a critical point
  (every ∂L/∂W_i has ``L − 1 ≥ 1`` factors that vanish there) with ``L(0) = ½ Σ s_k²``. For
  depth ``L ≥ 3`` its Hessian is zero, and from entries of size ``a₀`` the gradient is
  ``O(a₀^{L−1})``: gradient descent at learning rate ``η`` needs about ``1/(η s a₀^{L−2})``
  steps to grow a mode of strength ``s`` (for ``L = 2``, ``log(1/a₀)/(η s)``), while a
  step that rescales by the curvature grows it geometrically.
- :func:`tanh_network`, an MLP with tanh from a small initialisation (every weight
  ``a₀ · N(0, 1/fan_in)``, zero biases) on the digits reduced to their leading principal
  components (:func:`digits_task`): near ``θ = 0``, ``tanh(z) ≈ z`` and the same plateau
  appears; with the default initialisation of :class:`torch.nn.Linear` it does not
  (the negative control).

Measured along a run (:func:`run_plateau`): the loss, ``‖∇L‖``, the *index* of the Hessian
(the fraction of its eigenvalues below ``−tol · max|h|``, from the exact dense Hessian:
:func:`hessian_index`), gradient-equivalents (:class:`sfn_teach.train.CostModel` on the
optimiser's own ``stats``) and seconds; :func:`escape_step` is the first step whose loss is
below ``fraction · L(θ₀)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .optim import CurvatureOptimizer
from .train import CostModel

#: the teacher's singular values of the deep linear task; ``L(0) = ½ Σ s² = 7.16125``
SINGULAR_VALUES = (3.0, 2.0, 1.0, 0.5, 0.25, 0.1)
#: escape: the first step whose loss is below this fraction of the initial loss
ESCAPE_FRACTION = 0.5


# --------------------------------------------------------------------------------------------
# Tasks and networks
# --------------------------------------------------------------------------------------------


@dataclass
class PlateauTask:
    """Full-batch data and the loss ``loss_fn(outputs, targets)``; ``teacher`` is ``M`` for the
    deep linear task (``None`` otherwise)."""

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    loss_fn: Callable
    teacher: torch.Tensor | None = None


def half_squared_error(outputs, targets):
    """``½ E‖output − target‖²``: half the squared norm per sample, averaged over samples."""
    return 0.5 * (outputs - targets).pow(2).sum(dim=1).mean()


def _orthogonal(dim, generator, dtype):
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))


def deep_linear_task(dim=6, num_samples=300, singular_values=SINGULAR_VALUES, seed=0,
                     dtype=torch.float64) -> PlateauTask:
    """Whitened inputs ``X`` (``n × d``, ``XᵀX/n = I`` exactly) and targets ``Y = X Mᵀ`` of a
    teacher ``M = U diag(s) Vᵀ`` with random orthogonal ``U, V`` (from ``seed``)."""
    if len(singular_values) != dim or num_samples < dim:
        raise ValueError(f"need {dim} singular values and num_samples >= dim = {dim}")
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(num_samples, dim, generator=generator, dtype=dtype))
    inputs = math.sqrt(num_samples) * q
    s = torch.tensor(singular_values, dtype=dtype)
    teacher = _orthogonal(dim, generator, dtype) @ torch.diag(s) @ _orthogonal(dim, generator,
                                                                               dtype).T
    return PlateauTask("deep linear", inputs, inputs @ teacher.T, half_squared_error, teacher)


class DeepLinear(nn.Module):
    """``x ↦ W_L ⋯ W_1 x``, ``depth = L`` bias-free ``d × d`` layers, every entry
    ``init_scale · N(0, 1/d)`` (so each layer shrinks a vector by about ``a₀ = init_scale``)."""

    def __init__(self, dim=6, depth=3, init_scale=1e-2, seed=0, dtype=torch.float64):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(dim, dim, bias=False, dtype=dtype)
                                    for _ in range(depth))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(init_scale / math.sqrt(dim)
                                   * torch.randn(dim, dim, generator=generator, dtype=dtype))

    @property
    def weights(self) -> list[torch.Tensor]:
        """``[W_1, …, W_L]``."""
        return [layer.weight for layer in self.layers]

    def product(self) -> torch.Tensor:
        """``W = W_L ⋯ W_1``."""
        result = self.layers[0].weight
        for layer in self.layers[1:]:
            result = layer.weight @ result
        return result

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def deep_linear_loss(weights: Sequence[torch.Tensor], teacher: torch.Tensor) -> torch.Tensor:
    """``½ ‖W_L ⋯ W_1 − M‖²_F``: the loss of :func:`deep_linear_task` in closed form."""
    product = weights[0]
    for weight in weights[1:]:
        product = weight @ product
    return 0.5 * (product - teacher).pow(2).sum()


def deep_linear_gradients(weights: Sequence[torch.Tensor], teacher) -> list[torch.Tensor]:
    """``∂L/∂W_i = (W_L ⋯ W_{i+1})ᵀ (W − M) (W_{i−1} ⋯ W_1)ᵀ``, in closed form."""
    eye = torch.eye(teacher.shape[0], dtype=teacher.dtype)
    below = [eye]  # below[i] = W_{i−1} ⋯ W_1 (i from 0)
    for weight in weights[:-1]:
        below.append(weight @ below[-1])
    residual = weights[-1] @ below[-1] - teacher
    gradients, above = [], eye  # above = W_L ⋯ W_{i+1}
    for i in reversed(range(len(weights))):
        gradients.append(above.T @ residual @ below[i].T)
        above = above @ weights[i]
    return gradients[::-1]


def digits_task(components=8, num_samples=500, dtype=torch.float64) -> PlateauTask:
    """The first ``num_samples`` of the digits' 1,000 training images projected on their
    leading ``components`` principal directions, whitened (unit variance each); cross-entropy
    on the 10 classes."""
    from .data import load_digits

    train = load_digits(dtype=dtype).train
    centred = train.inputs[:num_samples] - train.inputs[:num_samples].mean(dim=0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    inputs = centred @ vh[:components].T / (singular[:components] / math.sqrt(len(centred)))
    return PlateauTask("digits", inputs, train.targets[:num_samples], F.cross_entropy)


def tanh_network(sizes=(10, 6, 6, 6, 10), init_scale: float | None = 1e-2, seed=0,
                 dtype=torch.float64) -> nn.Sequential:
    """A tanh MLP; ``init_scale = a₀``: weights ``a₀ · N(0, 1/fan_in)`` and zero biases (a
    plateau); ``None``: PyTorch's default initialisation (the well-initialised control)."""
    torch.manual_seed(seed)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        linear = nn.Linear(n_in, n_out, dtype=dtype)
        if init_scale is not None:
            with torch.no_grad():
                linear.weight.normal_(0.0, init_scale / math.sqrt(n_in))
                linear.bias.zero_()
        layers += [linear, nn.Tanh()]
    return nn.Sequential(*layers[:-1])


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def flat_hessian(model: nn.Module, loss_fn, inputs, targets) -> torch.Tensor:
    """The exact ``P × P`` Hessian of the full-batch loss in the flattened parameters
    (:func:`torch.func.hessian` of the loss as a function of one flat vector)."""
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def loss_of(flat):
        pieces = torch.split(flat, sizes)
        values = {n: piece.reshape(s) for n, piece, s in zip(names, pieces, shapes)}
        return loss_fn(torch.func.functional_call(model, values, (inputs,)), targets)

    flat = torch.cat([p.reshape(-1) for p in params])
    hessian = torch.func.hessian(loss_of)(flat)
    return 0.5 * (hessian + hessian.T)


def index_of(eigenvalues: torch.Tensor, tol: float = 1e-6) -> float:
    """The index: the fraction of eigenvalues ``h < −tol · max|h|`` (0 at a minimum, 1 at a
    maximum; at ``θ = 0`` of a deep network every ``h`` may vanish: index 0)."""
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    return float((eigenvalues < -tol * scale).sum()) / max(eigenvalues.numel(), 1)


def hessian_index(model, loss_fn, inputs, targets, tol: float = 1e-6) -> float:
    """:func:`index_of` the exact Hessian's eigenvalues (``eigvalsh`` of :func:`flat_hessian`)."""
    return index_of(torch.linalg.eigvalsh(flat_hessian(model, loss_fn, inputs, targets)), tol)


def escape_step(losses: Sequence[float], threshold: float) -> int | None:
    """The first step ``t`` (``losses[t] = L(θ_t)``, ``t = 0`` the start) with
    ``L(θ_t) < threshold``; ``None`` if the run never gets there."""
    for t, loss in enumerate(losses):
        if loss < threshold:
            return t
    return None


@dataclass
class PlateauRun:
    """One trajectory. Lists are indexed by the step ``t`` (``0`` = before the first step):
    ``loss`` and ``grad_norm`` at ``θ_t``, the cumulative ``work`` (gradient-equivalents) and
    ``seconds`` (inside ``optimizer.step`` only) to reach ``θ_t``; ``index`` maps the steps at
    which it was measured to the Hessian's index; ``escape`` is :func:`escape_step` of
    ``loss`` at ``ESCAPE_FRACTION · loss[0]``; ``diverged``: the loss became non-finite."""

    method: str
    seed: int
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    index: dict[int, float] = field(default_factory=dict)
    escape: int | None = None
    diverged: bool = False

    def at_escape(self, what: str) -> float | None:
        """``work``/``seconds``/... at the escape step (``None`` without an escape)."""
        return None if self.escape is None else getattr(self, what)[self.escape]


def _step_cost(optimizer, cost_model: CostModel) -> float:
    stats = getattr(optimizer, "stats", None)
    if stats is None:  # a torch.optim optimiser: one gradient per step
        return 1.0
    return cost_model(stats["num_gradients"], stats["num_hvps"], stats["num_forward"])


def run_plateau(task: PlateauTask, model: nn.Module, make_optimizer: Callable, steps: int, *,
                method: str = "", seed: int = 0, index_every: int = 0,
                stop_after_escape: int | None = None, max_seconds: float = math.inf,
                max_work: float = math.inf,
                cost_model: CostModel | None = None) -> PlateauRun:
    """Train ``model`` full-batch on ``task`` for up to ``steps`` steps of
    ``make_optimizer(model.parameters())`` and record a :class:`PlateauRun`.

    A :class:`sfn_teach.optim.CurvatureOptimizer` gets a closure that returns the loss; any
    other optimiser (``torch.optim``) one that also calls ``backward``. The loss and
    ``‖∇L(θ_t)‖`` are measured before every step (not counted as work); the Hessian's index
    every ``index_every`` steps (``0``: never; also not counted). The run ends early
    ``stop_after_escape`` steps after the escape, when the loss becomes non-finite, or when the
    optimiser's steps have taken ``max_seconds`` or ``max_work`` gradient-equivalents (the
    step that crosses it is the last).
    """
    cost_model = cost_model or CostModel()
    params = list(model.parameters())
    optimizer = make_optimizer(params)
    curvature = isinstance(optimizer, CurvatureOptimizer)
    run = PlateauRun(method, seed)
    threshold, work, seconds, seen = None, 0.0, 0.0, {}

    def norm(grads):
        return float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))

    def closure():
        loss = task.loss_fn(model(task.inputs), task.targets)
        if not curvature:  # torch.optim: this gradient is θ_t's, recorded as such
            optimizer.zero_grad()
            loss.backward()
            seen.update(loss=float(loss.detach()), grad_norm=norm([p.grad for p in params]))
        return loss

    for t in range(steps + 1):
        before = (work, seconds)
        if curvature or t == steps or (index_every and t % index_every == 0):
            loss = task.loss_fn(model(task.inputs), task.targets)
            value, grad_norm, stepped = float(loss.detach()), norm(
                torch.autograd.grad(loss, params)), False
        else:  # a first-order step measures θ_t on the way
            start = time.perf_counter()
            optimizer.step(closure)
            seconds += time.perf_counter() - start
            work += _step_cost(optimizer, cost_model)
            value, grad_norm, stepped = seen["loss"], seen["grad_norm"], True
        run.loss.append(value)
        run.grad_norm.append(grad_norm)
        run.work.append(before[0])
        run.seconds.append(before[1])
        if index_every and t % index_every == 0 and math.isfinite(value):
            run.index[t] = hessian_index(model, task.loss_fn, task.inputs, task.targets)
        if threshold is None:
            threshold = ESCAPE_FRACTION * value
        if run.escape is None and value < threshold:
            run.escape = t
        if not math.isfinite(value):
            run.diverged = True
            break
        if t == steps or before[1] > max_seconds or before[0] >= max_work or (
                stop_after_escape is not None and run.escape is not None
                and t >= run.escape + stop_after_escape):
            break
        if not stepped:
            start = time.perf_counter()
            optimizer.step(closure)
            seconds += time.perf_counter() - start
            work += _step_cost(optimizer, cost_model)
    return run


def closed_form_descent(depth=3, init_scale=1e-2, steps=3000, lr=0.1, momentum=0.0, seed=0,
                        task: PlateauTask | None = None) -> list[float]:
    """The losses of (heavy-ball) gradient descent on the deep linear task, from the
    initialisation of :class:`DeepLinear`, with the closed-form gradients (no autograd: fast
    enough for a slider): ``v ← μv + g``, ``W_i ← W_i − ηv_i``, as ``torch.optim.SGD``."""
    task = task or deep_linear_task()
    model = DeepLinear(task.teacher.shape[0], depth, init_scale, seed, task.teacher.dtype)
    weights = [w.detach().clone() for w in model.weights]
    velocity = [torch.zeros_like(w) for w in weights]
    losses = []
    for _ in range(steps + 1):
        losses.append(float(deep_linear_loss(weights, task.teacher)))
        if not math.isfinite(losses[-1]):
            break
        for w, v, g in zip(weights, velocity, deep_linear_gradients(weights, task.teacher)):
            v.mul_(momentum).add_(g)
            w.sub_(lr * v)
    return losses


# --------------------------------------------------------------------------------------------
# Over seeds
# --------------------------------------------------------------------------------------------


def escape_summary(runs: Sequence[PlateauRun], what: str = "loss") -> dict:
    """Median, min and max over seeds of the escape, in steps (``what="loss"``), or of
    ``"work"`` or ``"seconds"`` at the escape; ``escaped`` counts the runs that escaped
    (a run that did not counts as ``inf``)."""
    values = [
        math.inf if run.escape is None
        else (run.escape if what == "loss" else getattr(run, what)[run.escape])
        for run in runs
    ]
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = (ordered[middle] if len(ordered) % 2
              else 0.5 * (ordered[middle - 1] + ordered[middle]))
    return dict(median=median, low=ordered[0], high=ordered[-1],
                escaped=sum(math.isfinite(v) for v in values), runs=len(values))


def _padded(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    length = max(len(row) for row in rows)
    out = torch.full((len(rows), length), math.nan, dtype=torch.float64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
    return out


def seed_band(runs: Sequence[PlateauRun], what: str, x: str = "step"):
    """``(xs, median, low, high)`` of ``what`` (``"loss"``, ``"grad_norm"`` or ``"index"``)
    over the seeds, against ``x`` (``"step"``, ``"work"`` or ``"seconds"``, the median over
    seeds at each step); a step counts while at least one run has it."""
    if what == "index":
        steps = sorted(set.intersection(*(set(run.index) for run in runs)))
        values = _padded([[run.index[t] for t in steps] for run in runs])
    else:
        values = _padded([getattr(run, what) for run in runs])
        steps = list(range(values.shape[1]))
    if x == "step":
        xs = torch.tensor(steps, dtype=torch.float64)
    else:
        xs = _padded([getattr(run, x) for run in runs]).nanmedian(dim=0).values[steps]
    finite = torch.where(torch.isfinite(values), values, torch.nan)
    return (xs.numpy(), finite.nanmedian(dim=0).values.numpy(),
            _nan_reduce(finite, torch.amin).numpy(), _nan_reduce(finite, torch.amax).numpy())


def _nan_reduce(values, reduce):
    fill = math.inf if reduce is torch.amin else -math.inf
    out = reduce(torch.where(torch.isnan(values), fill, values), dim=0)
    return torch.where(torch.isinf(out), torch.nan, out)


# --------------------------------------------------------------------------------------------
# Exercise checks (notebook 05): right or not, never the solution
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The verdict of a check: ``correct`` and the ``message`` that was printed."""

    correct: bool
    message: str


def _report(correct: bool, message: str) -> CheckResult:
    text = f"{'✅' if correct else '❌'} {message}"
    print(text)
    return CheckResult(correct, text)


def check_deep_linear_gradients(student_fn) -> CheckResult:
    """Check ``student_fn(weights, teacher)`` (a list of ``∂L/∂W_i``) against
    :func:`deep_linear_gradients` for depths 1–4 in float64."""
    if student_fn is Ellipsis or not callable(student_fn):
        return _report(False, "pass your function itself (a callable)")
    generator = torch.Generator().manual_seed(5)
    for depth in (1, 2, 3, 4):
        weights = [torch.randn(4, 4, generator=generator, dtype=torch.float64) / 2
                   for _ in range(depth)]
        teacher = torch.randn(4, 4, generator=generator, dtype=torch.float64)
        expected = deep_linear_gradients(weights, teacher)
        try:
            answer = student_fn([w.clone() for w in weights], teacher.clone())
            if answer is None or answer is Ellipsis:
                return _report(False, "not answered yet — write the function and run the cell")
            errors = [float((torch.as_tensor(a) - e).norm() / e.norm())
                      for a, e in zip(answer, expected, strict=True)]
        except Exception as error:  # the student's code raised: report it, do not re-raise
            return _report(False, f"depth {depth}: your function raised {error!r}")
        if max(errors) > 1e-8:
            return _report(False, f"depth {depth}: relative error {max(errors):.2e} in layer "
                                  f"{errors.index(max(errors)) + 1}. Hint: the chain rule puts "
                                  "the layers above W_i on the left, transposed, and the "
                                  "layers below on the right, transposed.")
    return _report(True, "right for depths 1–4: the closed-form gradients.")


def check_newton_contraction(degree: int, answer) -> CheckResult:
    """Check the factor by which an undamped Newton step multiplies ``θ`` on a function that
    is homogeneous of degree ``k`` (``Hθ = (k − 1)g``): ``(k − 2)/(k − 1)``."""
    if answer is Ellipsis or answer is None:
        return _report(False, "not answered yet — replace the ... and run the cell")
    expected = (degree - 2) / (degree - 1)
    if isinstance(answer, int | float) and abs(answer - expected) <= 1e-9:
        return _report(True, f"right: for degree {degree} each Newton step scales θ by that "
                             "factor, so Newton walks into the saddle geometrically.")
    return _report(False, f"not the factor for degree {degree}. Hint: Euler's theorem for a "
                          "homogeneous function gives Hθ = (k − 1)g; solve for H⁻¹g.")


def check_exact_sfn_cost(num_params: int, hvp_cost: float, answer) -> CheckResult:
    """Check the gradient-equivalents of one ExactSFN step without Levenberg–Marquardt:
    one gradient and ``P`` Hessian-vector products (the dense Hessian), ``1 + c_HVP · P``."""
    if answer is Ellipsis or answer is None:
        return _report(False, "not answered yet — replace the ... and run the cell")
    expected = CostModel(hvp=hvp_cost)(1, num_params, 0)
    if isinstance(answer, int | float) and abs(answer - expected) <= 1e-9 * expected:
        return _report(True, f"right for P = {num_params}: a dense Hessian is P products.")
    return _report(False, f"not the cost for P = {num_params}. Hint: how many products build "
                          "the dense Hessian, and what does each cost in gradients?")
