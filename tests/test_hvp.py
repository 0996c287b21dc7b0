"""Hessian-vector products against dense float64 Hessians computed independently.

References: ``torch.func.hessian`` for functions of one tensor and
``torch.autograd.functional.hessian`` of the loss of a *copy* of the model as a function of the
flat parameter vector (so BatchNorm's own running-statistics update cannot leak into the
model under test, and the code path shares nothing with ``batchnorm_policy``).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfn_teach import hvp as hvp_module
from sfn_teach.hvp import (
    HVP_BACKENDS,
    MODEL_BACKENDS,
    PARAMS_BACKENDS,
    ModelHVP,
    ParamsHVP,
    batchnorm_policy,
    flatten,
    hvp,
    power_iteration,
    unflatten,
)
from sfn_teach.models import MLP

pytestmark = pytest.mark.float64  # conftest: float64 as the default dtype, restored after
TOL = 1e-10


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random numbers."""
    torch.manual_seed(0)


def assert_close(actual, expected):
    scale = max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= TOL * scale


# --- functions of one tensor -------------------------------------------------------------------


def saddle(x):
    return 2 * x[0] ** 2 + 2 * x[0] * x[1] - x[1] ** 2


def rosenbrock(x):
    return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()


def sum_of_cubes(x):
    return (x**3).sum()


def log_sum_exp(x):
    return torch.logsumexp(x, dim=0)


def quartic_coupling(x):
    return (x.sum() ** 4) / 12 + torch.sin(x).prod()


@pytest.mark.parametrize("backend", HVP_BACKENDS)
def test_hvp_of_the_papers_saddle_is_the_constant_hessian(backend):
    H = torch.tensor([[4.0, 2.0], [2.0, -2.0]])
    for _ in range(3):
        x, v = torch.randn(2), torch.randn(2)
        assert_close(hvp(saddle, x, v, backend), H @ v)


@pytest.mark.parametrize("backend", HVP_BACKENDS)
@pytest.mark.parametrize("f", [rosenbrock, sum_of_cubes, log_sum_exp, quartic_coupling])
def test_hvp_matches_reference_hessian(f, backend):
    for dim in (2, int(torch.randint(3, 40, ()))):
        x, v = torch.randn(dim), torch.randn(dim)
        assert_close(hvp(f, x, v, backend), torch.func.hessian(f)(x) @ v)


@pytest.mark.parametrize("backend", HVP_BACKENDS)
def test_hvp_of_a_matrix_argument_keeps_its_shape(backend):
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    H = torch.func.hessian(sum_of_cubes)(x).reshape(12, 12)
    result = hvp(sum_of_cubes, x, v, backend)
    assert result.shape == (3, 4)
    assert_close(result.reshape(-1), H @ v.reshape(-1))


def test_hvp_of_an_affine_function_is_zero():
    x, v = torch.randn(5), torch.randn(5)
    for backend in HVP_BACKENDS:
        assert torch.equal(hvp(lambda z: 3 * z.sum(), x, v, backend), torch.zeros(5))


def test_hvp_bad_input():
    x = torch.randn(3)
    with pytest.raises(ValueError, match="backend must be one of .*'double-backward'.*'nope'"):
        hvp(sum_of_cubes, x, x, backend="nope")
    with pytest.raises(ValueError, match=r"v must have the shape of x, \(3,\), got \(4,\)"):
        hvp(sum_of_cubes, x, torch.randn(4))
    for backend in HVP_BACKENDS:
        with pytest.raises(ValueError, match=r"f must return a scalar loss.*\(3,\)"):
            hvp(lambda z: z**2, x, x, backend)


def test_flatten_unflatten_round_trip_and_views():
    like = [torch.randn(2, 3), torch.randn(4), torch.randn(())]
    flat = flatten(like)
    assert flat.shape == (11,)
    pieces = unflatten(flat, like)
    assert [p.shape for p in pieces] == [t.shape for t in like]
    assert all(torch.equal(p, t) for p, t in zip(pieces, like))
    assert all(p.data_ptr() >= flat.data_ptr() for p in pieces)  # views of flat, no copies
    pieces[1][0] = 123.0
    assert flat[6] == 123.0
    with pytest.raises(ValueError, match=r"flat must be a 1-D tensor of length 11, got \(10,\)"):
        unflatten(torch.randn(10), like)
    with pytest.raises(ValueError, match="tensors must be a non-empty"):
        flatten([])


# --- networks and their dense references ---------------------------------------------------------


class ConvBN(nn.Module):
    """A small conv net with BatchNorm: conv → BN → ReLU → conv → BN → tanh → pool → linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 2, 3, bias=False), nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.tanh(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def mlp_problem(activation):
    model = MLP((6, 8, 5, 3), activation)
    return model, torch.randn(7, 6), torch.randint(0, 3, (7,))


def conv_bn_problem():
    model = ConvBN()
    with torch.no_grad():  # move the running statistics away from their initial values
        for _ in range(3):
            model(torch.randn(6, 2, 5, 5) * 2 + 1)
    return model, torch.randn(6, 2, 5, 5), torch.randint(0, 3, (6,))


PROBLEMS = {
    "tanh-mlp": lambda: mlp_problem("tanh"),
    "relu-mlp": lambda: mlp_problem("relu"),
    "conv-bn": conv_bn_problem,
}


def reference_hessian(model, inputs, targets, train=True):
    """``(g, H)`` of the cross-entropy of a copy of ``model`` w.r.t. its flat parameters."""
    reference = copy.deepcopy(model).train(train)
    names = [name for name, _ in reference.named_parameters()]
    shapes = [p for _, p in reference.named_parameters()]

    def loss(theta):
        params = dict(zip(names, unflatten(theta, shapes)))
        logits = torch.func.functional_call(reference, params, (inputs,))
        return F.cross_entropy(logits, targets)

    theta = flatten(p.detach() for p in reference.parameters())
    g = torch.autograd.grad(loss(theta.requires_grad_(True)), theta)[0]
    return g, torch.autograd.functional.hessian(loss, theta.detach(), vectorize=True)


def snapshot(model):
    """Bit-exact copies of parameters, their ``.grad`` and all buffers of ``model``."""
    state = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
    grads = {
        name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
    }
    return state, grads


def assert_unchanged(model, before):
    state, grads = snapshot(model)
    assert state.keys() == before[0].keys()
    for name, value in state.items():
        assert torch.equal(value, before[0][name]), name
    for name, grad in grads.items():
        old = before[1][name]
        assert (grad is None and old is None) or torch.equal(grad, old), name


def give_grads(model):
    for p in model.parameters():
        p.grad = torch.randn_like(p)


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_model_hvp_matches_dense_hessian_and_changes_nothing(problem, backend):
    model, inputs, targets = PROBLEMS[problem]()
    give_grads(model)
    g, H = reference_hessian(model, inputs, targets)
    before = snapshot(model)
    op = ModelHVP(model, F.cross_entropy, inputs, targets, backend=backend)
    assert op.dim == H.shape[0] and op.num_products == 0
    assert op.loss.dim() == 0 and not op.loss.requires_grad
    assert [p is q for p, q in zip(op.params, model.parameters())] == [True] * len(op.params)
    assert_close(op.grad, g)
    for k in range(1, 4):  # several products on one operator (one retained graph / trace)
        v = torch.randn(op.dim)
        assert_close(op.matvec(v), H @ v)
        assert op.num_products == k
    assert_unchanged(model, before)


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_model_hvp_batchnorm_eval_matches_eval_mode_hessian(backend):
    model, inputs, targets = conv_bn_problem()
    _, H_eval = reference_hessian(model, inputs, targets, train=False)
    _, H_train = reference_hessian(model, inputs, targets, train=True)
    assert (H_eval - H_train).abs().max() > 1e-3  # the two policies really differ here
    before = snapshot(model)
    op = ModelHVP(model, F.cross_entropy, inputs, targets, backend=backend, batchnorm="eval")
    v = torch.randn(op.dim)
    assert_close(op.matvec(v), H_eval @ v)
    assert_unchanged(model, before)
    assert model.training and model.bn1.training  # training flags restored


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_model_hvp_batchnorm_train_uses_batch_statistics_in_eval_mode(backend):
    model, inputs, targets = conv_bn_problem()
    _, H_train = reference_hessian(model, inputs, targets, train=True)
    model.eval()
    before = snapshot(model)
    op = ModelHVP(model, F.cross_entropy, inputs, targets, backend=backend, batchnorm="train")
    v = torch.randn(op.dim)
    assert_close(op.matvec(v), H_train @ v)
    assert_unchanged(model, before)
    assert not model.training and not model.bn1.training


def test_model_hvp_backends_agree():
    model, inputs, targets = conv_bn_problem()
    ops = [ModelHVP(model, F.cross_entropy, inputs, targets, backend=b) for b in MODEL_BACKENDS]
    v = torch.randn(ops[0].dim)
    products = [op.matvec(v) for op in ops]
    for op, hv in zip(ops[1:], products[1:]):
        assert_close(op.grad, ops[0].grad)
        assert_close(hv, products[0])


def test_model_hvp_only_differentiates_trainable_parameters():
    model, inputs, targets = mlp_problem("tanh")
    model.layers[1].weight.requires_grad_(False)
    _, H = reference_hessian(model, inputs, targets)
    keep = torch.ones(H.shape[0], dtype=torch.bool)
    keep[: model.layers[1].weight.numel()] = False
    op = ModelHVP(model, F.cross_entropy, inputs, targets)
    v = torch.randn(op.dim)
    assert op.dim == int(keep.sum())
    assert_close(op.matvec(v), H[keep][:, keep] @ v)


def test_batchnorm_policy_restores_the_same_buffers():
    model = conv_bn_problem()[0]
    mean = model.bn1.running_mean
    with batchnorm_policy(model, "train"):
        assert model.bn1.running_mean is None and not model.bn1.track_running_stats
        model(torch.randn(4, 2, 5, 5))
    assert model.bn1.running_mean is mean and model.bn1.track_running_stats
    with pytest.raises(ValueError, match="batchnorm must be one of .*'sometimes'"):
        with batchnorm_policy(model, "sometimes"):
            pass


def test_model_hvp_bad_input():
    model, inputs, targets = mlp_problem("tanh")
    with pytest.raises(ValueError, match=r"backend must be one of .*'linearize'.*'jax'"):
        ModelHVP(model, F.cross_entropy, inputs, targets, backend="jax")
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        ModelHVP(model, F.cross_entropy, inputs, targets, batchnorm=True)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        ModelHVP(lambda x: x, F.cross_entropy, inputs, targets)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ModelHVP(model, None, inputs, targets)
    for backend in MODEL_BACKENDS:
        with pytest.raises(ValueError, match=r"loss_fn must return a scalar loss.*\(7,\)"):
            ModelHVP(model, nn.CrossEntropyLoss(reduction="none"), inputs, targets, backend)
    op = ModelHVP(model, F.cross_entropy, inputs, targets)
    with pytest.raises(ValueError, match=rf"v must have shape \({op.dim},\), got \(3,\)"):
        op.matvec(torch.randn(3))


# --- ParamsHVP -----------------------------------------------------------------------------------


def closure_for(model, inputs, targets):
    return lambda: F.cross_entropy(model(inputs), targets)


@pytest.mark.parametrize("backend", PARAMS_BACKENDS)
@pytest.mark.parametrize("problem", ["tanh-mlp", "relu-mlp"])
def test_params_hvp_matches_dense_hessian_and_changes_nothing(problem, backend):
    model, inputs, targets = PROBLEMS[problem]()
    give_grads(model)
    g, H = reference_hessian(model, inputs, targets)
    before = snapshot(model)
    op = ParamsHVP(closure_for(model, inputs, targets), model.parameters(), backend)
    assert op.dim == H.shape[0] and op.loss.dim() == 0
    assert_close(op.grad, g)
    for k in range(1, 4):
        v = torch.randn(op.dim)
        assert_close(op.matvec(v), H @ v)
        assert op.num_products == k
    assert_unchanged(model, before)
    assert all(torch.autograd.forward_ad.unpack_dual(p).tangent is None for p in op.params)


def test_params_hvp_dense_backend_stores_the_hessian(monkeypatch):
    model, inputs, targets = mlp_problem("tanh")
    _, H = reference_hessian(model, inputs, targets)
    op = ParamsHVP(closure_for(model, inputs, targets), model.parameters(), "dense")
    assert_close(op.hessian, H)
    assert torch.equal(op.hessian, op.hessian.T)
    monkeypatch.setattr(hvp_module, "DENSE_MAX_DIM", H.shape[0] - 1)
    with pytest.raises(ValueError, match=rf"stores the {H.shape[0]}×{H.shape[0]} Hessian"):
        ParamsHVP(closure_for(model, inputs, targets), model.parameters(), "dense")


def test_params_hvp_conv_bn_double_backward_matches_reference_hessian():
    model, inputs, targets = conv_bn_problem()
    _, H = reference_hessian(model, inputs, targets)
    with batchnorm_policy(model, "train"):  # the closure's own forward must not update stats
        op = ParamsHVP(closure_for(model, inputs, targets), model.parameters())
    v = torch.randn(op.dim)
    assert_close(op.matvec(v), H @ v)
    assert_close(op.matvec(2 * v), 2 * H @ v)


def test_params_hvp_of_unused_parameter_is_zero():
    x = torch.randn(4, requires_grad=True)
    unused = torch.randn(3, requires_grad=True)
    linear = torch.randn(2, requires_grad=True)
    for backend in PARAMS_BACKENDS:
        op = ParamsHVP(lambda: sum_of_cubes(x) + linear.sum(), [x, unused, linear], backend)
        v = torch.randn(9)
        expected = torch.cat([6 * x.detach() * v[:4], torch.zeros(5)])
        assert_close(op.grad, torch.cat([3 * x.detach() ** 2, torch.zeros(3), torch.ones(2)]))
        assert_close(op.matvec(v), expected)


def test_params_hvp_backends_agree_on_a_function():
    x = torch.randn(6, requires_grad=True)
    v = torch.randn(6)
    products = [ParamsHVP(lambda: rosenbrock(x), [x], b).matvec(v) for b in PARAMS_BACKENDS]
    for product in products:
        assert_close(product, torch.func.hessian(rosenbrock)(x.detach()) @ v)


def test_params_hvp_bad_closures_name_the_closure():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="closure must be a callable.*None"):
        ParamsHVP(None, [x])
    with pytest.raises(TypeError, match="closure must be a callable"):
        ParamsHVP(3.0, [x])
    with pytest.raises(TypeError, match="closure must return the loss as a scalar.*float"):
        ParamsHVP(lambda: sum_of_cubes(x).item(), [x])
    with pytest.raises(ValueError, match=r"closure must return a scalar loss.*\(3,\)"):
        ParamsHVP(lambda: x**2, [x])
    with pytest.raises(ValueError, match="closure returned a loss that does not require grad"):
        ParamsHVP(lambda: sum_of_cubes(x).detach(), [x])

    def under_no_grad():
        with torch.no_grad():
            return sum_of_cubes(x)

    with pytest.raises(ValueError, match="closure.*without calling .backward"):
        ParamsHVP(under_no_grad, [x])
    with pytest.raises(ValueError, match="backend must be one of .*'reverse'"):
        ParamsHVP(lambda: sum_of_cubes(x), [x], backend="reverse")
    with pytest.raises(ValueError, match="params must be a non-empty sequence"):
        ParamsHVP(lambda: sum_of_cubes(x), [])
    with pytest.raises(ValueError, match="entry 1 invalid"):
        ParamsHVP(lambda: sum_of_cubes(x), [x, torch.randn(2)])
    op = ParamsHVP(lambda: sum_of_cubes(x), [x])
    with pytest.raises(ValueError, match=r"v must have shape \(3,\), got \(4,\)"):
        op.matvec(torch.randn(4))
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        op.matvec([1.0, 2.0, 3.0])


def test_params_hvp_works_when_built_under_no_grad():
    x = torch.randn(5, requires_grad=True)
    with torch.no_grad():
        op = ParamsHVP(lambda: sum_of_cubes(x), [x])
        v = torch.randn(5)
        assert_close(op.matvec(v), 6 * x.detach() * v)


# --- power iteration -----------------------------------------------------------------------------


def indefinite_matrix(dim, eigenvalues):
    Q, _ = torch.linalg.qr(torch.randn(dim, dim))
    return Q @ torch.diag(eigenvalues) @ Q.T


def test_power_iteration_finds_a_negative_dominant_eigenvalue():
    dim = 30
    eigenvalues = torch.cat([torch.tensor([-7.0]), torch.linspace(-4.0, 5.0, dim - 1)])
    A = indefinite_matrix(dim, eigenvalues)
    h, q = torch.linalg.eigh(A)
    assert h[0] == h.abs().max().neg()  # the largest magnitude is the most negative eigenvalue
    result = power_iteration(lambda x: A @ x, dim, num_iterations=500, tol=1e-12, dtype=A.dtype)
    assert abs(result.value - 7.0) <= 1e-9
    assert abs(abs(result.vector @ q[:, 0]) - 1.0) <= 1e-9
    assert 2 <= result.num_products < 500


def test_power_iteration_stops_at_tol_and_warm_starts():
    dim = 20
    A = indefinite_matrix(dim, torch.cat([torch.tensor([9.0]), torch.linspace(-6.0, 6.0, dim - 1)]))
    gen = torch.Generator().manual_seed(1)
    A32 = A.float()
    loose = power_iteration(lambda x: A32 @ x, dim, num_iterations=1000, tol=1e-3, generator=gen)
    assert loose.vector.dtype == torch.float32 and abs(loose.vector.norm() - 1) < 1e-6
    assert loose.value <= 9.0 + 1e-4 and abs(loose.value - 9.0) < 0.05
    warm = power_iteration(
        lambda x: A @ x, dim, num_iterations=1000, tol=1e-3, init=loose.vector, dtype=A.dtype
    )
    assert warm.num_products <= loose.num_products and warm.value >= loose.value - 1e-6


def test_power_iteration_on_an_operator():
    model, inputs, targets = mlp_problem("tanh")
    _, H = reference_hessian(model, inputs, targets)
    op = ModelHVP(model, F.cross_entropy, inputs, targets)
    result = power_iteration(op.matvec, op.dim, num_iterations=2000, tol=1e-13, dtype=H.dtype)
    assert abs(result.value - torch.linalg.eigvalsh(H).abs().max().item()) < 1e-6
    assert op.num_products == result.num_products


def test_power_iteration_bad_input():
    with pytest.raises(ValueError, match="dim must be an int >= 1, got 0"):
        power_iteration(lambda x: x, 0)
    with pytest.raises(ValueError, match="num_iterations must be an int >= 1, got 0"):
        power_iteration(lambda x: x, 3, num_iterations=0)
    with pytest.raises(TypeError, match="num_iterations must be an int"):
        power_iteration(lambda x: x, 3, num_iterations=2.5)
    with pytest.raises(ValueError, match="tol must be finite and >= 0, got -1"):
        power_iteration(lambda x: x, 3, tol=-1)
    with pytest.raises(ValueError, match=r"init must be None or a non-zero tensor of shape \(3,\)"):
        power_iteration(lambda x: x, 3, init=torch.zeros(3))


# --- the curvature operator protocol -----------------------------------------------------------


def func_hessian(model, inputs, targets):
    """``H`` of the cross-entropy of a copy of ``model`` by ``torch.func.hessian`` of the loss as
    a function of the flat parameter vector. (Not for BatchNorm: on the conv-bn net, torch.func's
    vmapped reverse mode disagrees with autograd and with every backend here by 0.25.)"""
    reference = copy.deepcopy(model)
    names = [name for name, _ in reference.named_parameters()]
    shapes = [p for _, p in reference.named_parameters()]

    def loss(theta):
        params = dict(zip(names, unflatten(theta, shapes)))
        return F.cross_entropy(torch.func.functional_call(reference, params, (inputs,)), targets)

    return torch.func.hessian(loss)(flatten(p.detach() for p in reference.parameters()))


def operators(model, inputs, targets):
    """One operator of every backend of both classes on the same loss, each built when the
    previous one is done with (a forward-over-reverse product invalidates retained graphs)."""

    for backend in PARAMS_BACKENDS:
        yield ParamsHVP(closure_for(model, inputs, targets), model.parameters(), backend)
    for backend in MODEL_BACKENDS:
        yield ModelHVP(model, F.cross_entropy, inputs, targets, backend=backend)


@pytest.mark.parametrize("problem", ["tanh-mlp", "relu-mlp"])
def test_every_operator_is_a_curvature_operator_with_matmul_and_dense(problem):
    model, inputs, targets = PROBLEMS[problem]()
    H = func_hessian(model, inputs, targets)
    for op in operators(model, inputs, targets):
        name = f"{type(op).__name__}/{op.backend}"
        assert isinstance(op, hvp_module.CurvatureOperator), name
        v = torch.randn(op.dim)
        assert torch.equal(op @ v, op.matvec(v)), name
        assert op.num_products == 2, name
        dense = op.dense()
        assert_close(dense, H)
        if op.backend == "dense":  # the stored Hessian, no further product
            assert dense is op.hessian and op.num_products == 2, name
        else:  # n products H e_i, counted
            assert op.hessian is None and op.num_products == 2 + op.dim, name
        # one process: the rank average is the tensor itself, and nothing is all-reduced
        assert op.mean(v) is v and op.bytes_reduced == 0 and op.seconds_reducing == 0, name


@pytest.mark.parametrize("problem", ["tanh-mlp", "conv-bn"])
def test_every_operator_writes_a_product_into_out_with_the_same_bits(problem, monkeypatch):
    """``matvec(v, out=buffer)`` returns ``buffer`` holding the bits of ``matvec(v)``; the
    double-backward backends concatenate into it directly (no second vector, no copy)."""
    model, inputs, targets = PROBLEMS[problem]()
    concatenated_into = []
    original_cat = torch.cat

    def recording_cat(tensors, *args, out=None, **kwargs):
        concatenated_into.append(out)
        return original_cat(tensors, *args, out=out, **kwargs)

    for op in operators(model, inputs, targets):
        name = f"{type(op).__name__}/{op.backend}"
        v, buffer = torch.randn(op.dim), torch.full((op.dim,), float("nan"))
        allocated = op.matvec(v)
        monkeypatch.setattr(torch, "cat", recording_cat)
        concatenated_into.clear()
        written = op.matvec(v, out=buffer)
        monkeypatch.setattr(torch, "cat", original_cat)
        assert written is buffer and torch.equal(buffer.view(torch.int64),
                                                 allocated.view(torch.int64)), name
        if op.backend == "double-backward":
            assert concatenated_into == [buffer], name
        assert op.num_products == 2, name
        chained = op.matvec(op.matvec(v, out=buffer), out=torch.empty(op.dim))
        assert torch.equal(chained, op.matvec(op.matvec(v))), name


def test_matvec_refuses_an_out_it_cannot_write():
    model, inputs, targets = mlp_problem("tanh")
    op = ModelHVP(model, F.cross_entropy, inputs, targets)
    v = torch.randn(op.dim)
    for bad in (torch.empty(op.dim + 1), torch.empty(op.dim, dtype=torch.float32),
                torch.empty(1, op.dim), [0.0] * op.dim):
        with pytest.raises(ValueError, match=rf"out must be a flat tensor of shape \({op.dim},\)"):
            op.matvec(v, out=bad)
    with pytest.raises(ValueError, match="out must not be v"):
        op.matvec(v, out=v)
    assert op.num_products == 0  # refused before any product


def test_dense_refuses_more_than_dense_max_dim_parameters(monkeypatch):
    model, inputs, targets = mlp_problem("tanh")
    op = ModelHVP(model, F.cross_entropy, inputs, targets)
    monkeypatch.setattr(hvp_module, "DENSE_MAX_DIM", op.dim - 1)
    limit = rf"{op.dim}×{op.dim} Hessian.*DENSE_MAX_DIM = {op.dim - 1}"
    with pytest.raises(ValueError, match=limit):
        op.dense()
    assert op.num_products == 0  # refused before any product


def test_a_curvature_operator_is_a_loss_a_gradient_and_a_product():
    """The protocol on its own: a subclass gives ``_product``; the base validates and counts."""

    class Diagonal(hvp_module.CurvatureOperator):
        def __init__(self, diagonal, point):
            loss = 0.5 * (diagonal * point * point).sum()
            super().__init__([point], loss, diagonal * point)
            self.diagonal = diagonal

        def _product(self, v, out=None):  # ignores out: matvec then copies into it
            return self.diagonal * v

    diagonal, point = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 2.0, -2.0])
    op = Diagonal(diagonal, point)
    assert op.dim == 3 and float(op.loss) == 0.5 * (2 - 4 + 2) and op.num_products == 0
    assert torch.equal(op.dense(), torch.diag(diagonal)) and op.num_products == 3
    assert torch.equal(op @ torch.ones(3), diagonal)
    buffer = torch.zeros(3)
    assert op.matvec(torch.ones(3), out=buffer) is buffer and torch.equal(buffer, diagonal)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        op @ torch.ones(4)
    with pytest.raises(TypeError, match="_product"):  # the product is abstract
        type("NoProduct", (hvp_module.CurvatureOperator,), {})([point], op.loss, op.grad)
