"""Matrix-free Hessian-vector products and power iteration.

Notation (docs/method.md): ``θ`` parameters, ``f(θ)`` a scalar loss, ``g = ∇f(θ)`` its gradient,
``H = ∇²f(θ)`` its Hessian (symmetric, possibly indefinite) and ``v`` a direction.

Pearlmutter (1994): the product ``Hv`` is a directional derivative of the gradient,

    Hv = ∂/∂r ∇f(θ + r v) |_{r=0} = ∇(gᵀv),

so it costs a small constant times one gradient and never forms ``H``. Two ways to take that
derivative give the backends below:

- ``"double-backward"`` (reverse-over-reverse): build ``g`` with ``create_graph=True``, then
  backpropagate ``gᵀv`` through the graph of ``g``. The graph of ``g`` can be kept and reused,
  so a series of products costs one forward/backward plus one extra backward per product.
- ``"forward-over-reverse"``: push the tangent ``v`` through the computation of ``g`` with
  forward-mode AD. Each product re-runs the forward and backward pass.

The operator of one step is a :class:`CurvatureOperator`: the loss, the gradient and
``v ↦ Hv`` at fixed ``θ`` (``H @ v``), with a dense form for small problems. :class:`ParamsHVP`
(a closure) and :class:`ModelHVP` (a model on a batch) implement it here, and
:class:`sfn_teach.distributed.RankAveragedOperator` for data parallelism.

Everything here leaves parameter values, ``.grad`` and BatchNorm running statistics untouched.
"""

import contextlib
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checks import choice, integer, real

__all__ = [
    "BATCHNORM_POLICIES", "DENSE_MAX_DIM", "HVP_BACKENDS", "MODEL_BACKENDS", "PARAMS_BACKENDS",
    "CurvatureOperator", "ModelHVP", "ParamsHVP", "PowerIterationResult", "Workspace",
    "all_finite", "batchnorm_policy", "dense_hessian", "flatten", "hvp", "power_iteration",
    "unflatten"
]

HVP_BACKENDS = ("forward-over-reverse", "double-backward")
PARAMS_BACKENDS = ("double-backward", "forward-over-reverse", "dense")
#: the dense ``H`` (n² numbers, built from n products) is formed for at most this many parameters
DENSE_MAX_DIM = 4096
MODEL_BACKENDS = ("double-backward", "forward-over-reverse", "linearize")
BATCHNORM_POLICIES = ("train", "eval")


def _check_scalar(value, name):
    """Return ``value`` as a 0-dim tensor, or raise naming the callable ``name`` that made it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must return the loss as a scalar torch.Tensor, got {type(value).__name__}"
        )
    if value.numel() != 1:
        raise ValueError(
            f"{name} must return a scalar loss (numel 1), got a tensor of shape "
            f"{tuple(value.shape)}"
        )
    return value.reshape(())


def _check_differentiable(loss, name):
    if not loss.requires_grad:
        raise ValueError(
            f"{name} returned a loss that does not require grad; return the loss tensor itself, "
            "without calling .backward(), .detach() or .item() and not under torch.no_grad()"
        )
    return loss


def _evaluate(closure, name):
    """Call ``closure()`` with gradients enabled and return its validated 0-dim loss."""
    with torch.enable_grad():
        return _check_differentiable(_check_scalar(closure(), name), name)


def flatten(tensors, out=None):
    """Concatenate tensors into one 1-D vector: ``[t₁, t₂, …] ↦ (vec t₁, vec t₂, …)``,
    written into ``out`` if given (a 1-D tensor of the total length)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("tensors must be a non-empty sequence of tensors, got an empty one")
    return torch.cat([t.reshape(-1) for t in tensors], out=out)


def unflatten(flat, like):
    """Split the 1-D vector ``flat`` into views shaped like the tensors in ``like``.

    The inverse of :func:`flatten`: ``flatten(unflatten(x, like))`` equals ``x``.
    """
    like = list(like)
    sizes = [t.numel() for t in like]
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1 or flat.numel() != sum(sizes):
        shape = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise ValueError(f"flat must be a 1-D tensor of length {sum(sizes)}, got {shape}")
    return [piece.view(t.shape) for piece, t in zip(torch.split(flat, sizes), like)]


def all_finite(tensor):
    """Whether every entry of ``tensor`` is finite, from one read of it: a sum with a NaN or
    infinite term is not finite, so a finite ``Σ x_i`` proves every ``x_i`` finite; only a sum
    that is not (a non-finite entry, or an overflow) asks the entrywise ``isfinite`` (four
    passes over the tensor and two temporaries)."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


class Workspace:
    """Flat vectors that are allocated once and reused from call to call.

    The series, its ε-table and the update are a few dozen vector operations per step. Each that
    allocates its result pays, on the CPU, a page fault per 4 KiB the first time the memory is
    touched (the allocator hands vectors of a megabyte and more back to the system when they are
    freed): several times the arithmetic. A workspace keeps each named group of vectors and
    hands the same tensors out again while length, dtype and device stay the same. An optimiser
    keeps one (not thread-safe); what one call wrote, the next call with the same name overwrites.
    """

    def __init__(self):
        self._groups = {}

    def vectors(self, name, count, like, dtype=None):
        """``count`` flat tensors of ``like.numel()`` entries on ``like``'s device, of ``dtype``
        (default ``like``'s): the same tensors as the last call with this ``name`` if length,
        dtype and device agree and there are enough, else new ones (contents undefined)."""
        key = (like.numel(), like.dtype if dtype is None else dtype, like.device)
        found = self._groups.get(name)
        if found is None or found[0] != key or len(found[1]) < count:
            found = key, [torch.empty(key[0], dtype=key[1], device=key[2]) for _ in range(count)]
            self._groups[name] = found
        return found[1][:count]


def hvp(f, x, v, backend="forward-over-reverse"):
    """Return ``Hv`` with ``H = ∇²f(x)`` for a scalar function ``f`` of one tensor ``x``.

    Pearlmutter's identity ``Hv = ∂/∂r ∇f(x + r v)|_{r=0}``, taken either forward-over-reverse
    (the jvp of ``∇f`` in direction ``v``) or by double backward (``∇(∇f(x)ᵀv)``). Both give
    the same result up to rounding, at a small constant times the cost of one gradient. The
    result has the shape of ``x`` and carries no graph.
    """
    choice("backend", backend, HVP_BACKENDS)
    if not isinstance(x, torch.Tensor) or not isinstance(v, torch.Tensor):
        raise TypeError(f"x and v must be tensors, got {type(x).__name__}, {type(v).__name__}")
    if v.shape != x.shape:
        raise ValueError(f"v must have the shape of x, {tuple(x.shape)}, got {tuple(v.shape)}")

    def scalar_f(z):
        return _check_scalar(f(z), "f")

    if backend == "forward-over-reverse":
        return torch.func.jvp(torch.func.grad(scalar_f), (x.detach(),), (v,))[1]
    with torch.enable_grad():
        z = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(scalar_f(z), z, create_graph=True, materialize_grads=True)
        gv = (g * v).sum()
        if not gv.requires_grad:  # ∇f does not depend on x: f is affine and H = 0
            return torch.zeros_like(x)
        (h,) = torch.autograd.grad(gv, z, materialize_grads=True)
    return h


def _gradient(loss, params, create_graph):
    """``g = ∇_θ loss`` as a tuple shaped like ``params``; zeros where the loss does not reach."""
    return torch.autograd.grad(loss, params, create_graph=create_graph, materialize_grads=True)


def _double_backward(grads, params, v, out=None):
    """``Hv = ∇_θ(gᵀv)`` on the retained graph of ``grads`` (which stays usable afterwards),
    concatenated into ``out`` if given (else into a new vector)."""
    pieces = [(g, t) for g, t in zip(grads, unflatten(v, params)) if g.requires_grad]
    if not pieces:  # no gradient depends on θ: the loss is affine and H = 0
        return torch.zeros_like(v)
    outputs, tangents = zip(*pieces)
    hv = torch.autograd.grad(
        outputs, params, grad_outputs=tangents, retain_graph=True, materialize_grads=True
    )
    return flatten(hv, out)


def _tangent(dual):
    """The forward-mode tangent of ``dual``; zeros where no tangent reached it."""
    tangent = fwAD.unpack_dual(dual).tangent
    return torch.zeros_like(dual) if tangent is None else tangent


class CurvatureOperator(ABC):
    """The curvature of one step: the linear operator ``v ↦ Hv`` at fixed ``θ``, with the loss
    ``f(θ)`` and the gradient ``g`` there.

    Attributes: ``params`` (the list of ``θ`` tensors), ``loss`` (detached 0-dim tensor),
    ``grad`` (flat detached ``g``), ``dim`` (length of ``θ``), ``num_products`` (how many times
    :meth:`matvec` has run) and ``hessian`` (the dense ``H`` if the backend stored it, else
    ``None``). ``H @ v`` is :meth:`matvec`; :meth:`dense` forms ``H`` for small problems.

    Data parallelism (docs/method.md §8) replaces this rank's operator by the average over the
    ranks (:class:`sfn_teach.distributed.RankAveragedOperator`). What an optimiser needs of it
    is declared here with its one-process meaning: :meth:`mean` of a tensor is the tensor
    itself, and nothing is all-reduced (``bytes_reduced = 0``, ``seconds_reducing = 0``).

    A subclass calls ``super().__init__(params, loss, grad)`` and implements :meth:`_product`.
    """

    hessian = None
    bytes_reduced = 0
    seconds_reducing = 0.0

    def __init__(self, params, loss, grad):
        self.params = params
        self.loss = loss.detach()
        self.grad = grad.detach()
        self.dim = self.grad.numel()
        self.num_products = 0

    @abstractmethod
    def _product(self, v, out=None):
        """``Hv`` for a detached flat ``v`` of length ``dim``, of ``grad``'s dtype and device;
        written into ``out`` where the backend can (else :meth:`matvec` copies it there)."""

    def matvec(self, v, out=None):
        """Return the flat product ``Hv`` for a flat ``v`` of length ``dim`` (counted).

        ``out``, a flat tensor like ``grad`` other than ``v``, receives ``Hv`` (and is returned)
        instead of a new vector: a caller that takes many products, like the series, reuses a
        few such vectors rather than allocating one per product (on a CPU, touching newly
        allocated memory costs page faults). The values are the same either way.
        """
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
        if v.shape != (self.dim,):
            raise ValueError(f"v must have shape ({self.dim},), got {tuple(v.shape)}")
        if out is not None and not (
            isinstance(out, torch.Tensor) and out.shape == (self.dim,)
            and out.dtype == self.grad.dtype and out.device == self.grad.device
        ):
            raise ValueError(f"out must be a flat tensor of shape ({self.dim},) with grad's "
                             f"dtype {self.grad.dtype} and device {self.grad.device}")
        if out is v:
            raise ValueError("out must not be v: the product reads v while it writes out")
        self.num_products += 1
        product = self._product(v.detach().to(self.grad), out).detach()
        return product if out is None or product is out else out.copy_(product)

    def __matmul__(self, v):
        """``H @ v`` is :meth:`matvec`."""
        return self.matvec(v)

    def dense(self):
        """The ``n × n`` Hessian: the stored ``hessian`` if there is one, else
        :func:`dense_hessian` from ``n`` products ``H e_i`` (counted). Refused (ValueError)
        for more than :data:`DENSE_MAX_DIM` parameters."""
        if self.hessian is not None:
            return self.hessian
        if self.dim > DENSE_MAX_DIM:
            raise ValueError(
                f"dense() forms the {self.dim}×{self.dim} Hessian from {self.dim} products; it "
                f"is meant for at most DENSE_MAX_DIM = {DENSE_MAX_DIM} parameters"
            )
        return dense_hessian(self.matvec, self.grad)

    def mean(self, tensor):
        """``tensor`` averaged over the ranks of the batch: in one process, ``tensor`` itself."""
        return tensor


class ParamsHVP(CurvatureOperator):
    """``v ↦ Hv`` for the loss returned by ``closure()``, w.r.t. the tensors ``params``.

    ``closure`` re-evaluates the model and *returns* the loss tensor, without calling
    ``.backward()``. Construction calls it once and stores ``loss`` and ``g``.

    Backends:

    - ``"double-backward"`` (default): ``g`` is built with ``create_graph=True`` and the graph is
      retained, so all products of one step (2(K−1) for the series) reuse one forward/backward;
      each product is one extra backward ``∇(gᵀv)``. The graph is freed with the operator.
    - ``"forward-over-reverse"``: each product attaches ``v`` as a forward-mode tangent to the
      parameters, *re-runs the closure* and the backward pass, and reads the tangent of ``g``.
      The closure must therefore be deterministic (fixed batch, no dropout), and a model with
      BatchNorm in training mode would update its running statistics on every product — that
      is why double-backward is the default. Parameter values are left bit-identical and no
      tangent survives, but the tangent is attached by an in-place write of the same values,
      which bumps the parameters' autograd version counters: a graph built earlier that saved
      them (e.g. another operator's retained graph) can no longer be backpropagated.
    - ``"dense"``: for tiny problems (a 2-D toy, a small MLP; ``n ≤ DENSE_MAX_DIM``). The
      Hessian is built once, column by column, ``H e_i`` on the retained double-backward graph
      (``n`` products), symmetrised, and kept as ``.hessian``; every product is then the
      matrix-vector multiplication ``H @ v`` — microseconds instead of an autograd pass.

    No backend touches ``.grad`` or changes parameter values. Parameters that the loss does
    not reach get zero gradient and zero curvature.
    """

    def __init__(self, closure, params, backend="double-backward"):
        if closure is None or not callable(closure):
            raise TypeError(
                f"closure must be a callable returning the loss tensor, got {closure!r}"
            )
        choice("backend", backend, PARAMS_BACKENDS)
        params = list(params)
        bad = [i for i, p in enumerate(params) if not (torch.is_tensor(p) and p.requires_grad)]
        if not params or bad:
            raise ValueError(
                "params must be a non-empty sequence of tensors that require grad, got "
                f"{len(params)} entries" + (f" with entry {bad[0]} invalid" if bad else "")
            )
        self.backend = backend
        self._closure = closure
        loss = _evaluate(closure, "closure")
        grads = _gradient(loss, params, create_graph=backend != "forward-over-reverse")
        self._grads = grads if backend != "forward-over-reverse" else None
        super().__init__(params, loss, flatten(grads))
        if backend == "dense":
            if self.dim > DENSE_MAX_DIM:
                raise ValueError(
                    f"backend='dense' stores the {self.dim}×{self.dim} Hessian; it is meant for "
                    f"at most DENSE_MAX_DIM = {DENSE_MAX_DIM} parameters (use double-backward)"
                )
            self.hessian = dense_hessian(lambda v: _double_backward(grads, params, v), self.grad)
            self._grads = None  # the graph is no longer needed

    def _product(self, v, out=None):
        if self.backend == "dense":
            return self.hessian @ v
        if self.backend == "double-backward":
            return _double_backward(self._grads, self.params, v, out)
        with fwAD.dual_level():
            with torch.no_grad():
                for p, t in zip(self.params, unflatten(v, self.params)):
                    p.copy_(fwAD.make_dual(p.detach().clone(), t))
            grads = _gradient(_evaluate(self._closure, "closure"), self.params, False)
            return flatten([_tangent(g) for g in grads])


def dense_hessian(matvec, like):
    """The Hessian as a dense matrix: column ``i`` is ``H e_i``; then ``½(H + Hᵀ)``.

    ``n`` products for ``n = like.numel()`` parameters (``like`` gives dtype and device), so
    for small problems only. The symmetrisation removes the rounding asymmetry of the products.
    """
    basis = torch.eye(like.numel(), dtype=like.dtype, device=like.device)
    columns = torch.stack([matvec(e) for e in basis], dim=1)
    return 0.5 * (columns + columns.T)


@contextlib.contextmanager
def batchnorm_policy(model, batchnorm="train"):
    """Temporarily make every BatchNorm layer of ``model`` a pure function of its input.

    ``"train"``: normalise by the batch statistics (the paper's setting), whatever the
    module's ``training`` flag, by hiding ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` (set to ``None``, ``track_running_stats=False``).
    ``"eval"``: normalise by the running statistics (BatchNorm modules only switched to eval).

    Either way nothing is updated inside the block, and every flag and buffer (the same tensor
    objects) is restored on exit. Other normalisation layers are left alone.
    """
    choice("batchnorm", batchnorm, BATCHNORM_POLICIES)
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [
        (m.training, m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked)
        for m in layers
    ]
    try:
        for m in layers:
            if batchnorm == "train":
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None
            else:
                m.training = False
        yield model
    finally:
        for m, (training, track, mean, var, count) in zip(layers, saved):
            m.training, m.track_running_stats = training, track
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


class ModelHVP(CurvatureOperator):
    """``v ↦ Hv`` for ``f(θ) = loss_fn(model(inputs), targets)`` on one batch.

    ``θ`` is every parameter of ``model`` that requires grad, in ``model.parameters()`` order
    (``params``). BatchNorm follows ``batchnorm`` (see :func:`batchnorm_policy`): ``"train"``
    uses batch statistics, as in the paper, ``"eval"`` running statistics. This is a measuring
    instrument: parameters, ``.grad`` and running statistics are never changed, in any backend.
    Products are only consistent if the model is deterministic (dropout off or seeded).

    Backends:

    - ``"double-backward"`` (default): one forward/backward with ``create_graph=True`` at
      construction; each product is one extra backward ``∇(gᵀv)`` on the retained graph.
    - ``"forward-over-reverse"``: each product is ``torch.func.jvp`` of ``θ ↦ g(θ)`` (via
      ``torch.func.functional_call``), re-running the forward and backward pass.
    - ``"linearize"``: ``torch.func.linearize`` traces ``θ ↦ g(θ)`` once at construction (a
      set-up that can cost many gradients); each product then replays the traced jvp.
    """

    def __init__(
        self, model, loss_fn, inputs, targets, backend="double-backward", batchnorm="train"
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {loss_fn!r}")
        choice("backend", backend, MODEL_BACKENDS)
        choice("batchnorm", batchnorm, BATCHNORM_POLICIES)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model must have at least one parameter that requires grad")
        self.backend, self.batchnorm = backend, batchnorm
        self._model, self._loss_fn = model, loss_fn
        self._inputs, self._targets = inputs, targets
        self._names = [name for name, _ in named]
        params = [p for _, p in named]
        if backend == "double-backward":
            with batchnorm_policy(model, batchnorm):
                loss = _evaluate(lambda: loss_fn(model(inputs), targets), "loss_fn")
            grads = self._grads = _gradient(loss, params, create_graph=True)
        else:
            self._primals = tuple(p.detach() for p in params)
            self._grad_and_loss = torch.func.grad_and_value(self._functional_loss)
            with batchnorm_policy(model, batchnorm):
                if backend == "linearize":
                    with warnings.catch_warnings():  # torch's own tracer warns about itself
                        warnings.filterwarnings("ignore", module=r"torch\.fx\.")
                        (grads, loss), self._linear = torch.func.linearize(
                            self._grad_and_loss, self._primals
                        )
                else:
                    grads, loss = self._grad_and_loss(self._primals)
        super().__init__(params, loss, flatten(grads))

    def _functional_loss(self, primals):
        """``f(θ)`` with ``θ = primals`` swapped into the model by ``functional_call``."""
        parameters = dict(zip(self._names, primals))
        outputs = torch.func.functional_call(self._model, parameters, (self._inputs,))
        return _check_scalar(self._loss_fn(outputs, self._targets), "loss_fn")

    def _product(self, v, out=None):
        if self.backend == "double-backward":
            return _double_backward(self._grads, self.params, v, out)
        tangents = tuple(unflatten(v, self.params))
        if self.backend == "linearize":
            return flatten(self._linear(tangents)[0])
        with batchnorm_policy(self._model, self.batchnorm):
            _, (hv, _) = torch.func.jvp(self._grad_and_loss, (self._primals,), (tangents,))
        return flatten(hv)


@dataclass(frozen=True)
class PowerIterationResult:
    """``value`` ≈ max_i |h_i|, ``vector`` ≈ a unit eigenvector for it, ``num_products`` used."""

    value: float
    vector: torch.Tensor
    num_products: int


def power_iteration(
    matvec,
    dim,
    num_iterations=20,
    tol=1e-4,
    init=None,
    dtype=torch.float32,
    device=None,
    generator=None,
):
    """Estimate the largest eigenvalue magnitude ``max_i |h_i|`` of ``H`` from products ``Hq``.

    Iterates ``q ← Hq / ‖Hq‖`` from a random (or ``init``, e.g. last step's vector) unit ``q``.
    The estimate is ``‖Hq‖``, which never decreases and approaches ``|h_max|`` from below at the
    rate ``(|h_2| / |h_max|)^(2k)``; the sign of ``h_max`` does not matter (for a negative one
    ``q`` alternates in sign). Stops after ``num_iterations`` products or once the relative
    change of the estimate is at most ``tol``. Returns a :class:`PowerIterationResult`.
    """
    integer("dim", dim, 1)
    integer("num_iterations", num_iterations, 1)
    real("tol", tol, 0.0)
    if init is None:
        q = torch.randn(dim, dtype=dtype, device=device, generator=generator)
    elif not isinstance(init, torch.Tensor) or init.shape != (dim,) or not init.norm() > 0:
        raise ValueError(f"init must be None or a non-zero tensor of shape ({dim},), got {init!r}")
    else:
        q = init.detach().to(dtype=dtype, device=device)
    q = q / q.norm()
    value = None
    for k in range(1, num_iterations + 1):
        w = matvec(q)
        previous, value = value, w.norm().item()
        if value == 0.0:  # q lies in the null space of H
            return PowerIterationResult(0.0, q, k)
        q = w / value
        if previous is not None and abs(value - previous) <= tol * value:
            break
    return PowerIterationResult(value, q, k)
