"""The series, the ε-table, the update and SeriesSFN's step in reused buffers give the same bits
as the frozen implementation that allocated every result (tests/reference_series.py), and the
series' loop waits for no value unless it is asked to stop at a growing term."""

import copy
import math
import warnings

import pytest
import reference_series as reference
import torch
import torch.nn.functional as F

from sfn_teach.hvp import Workspace, all_finite
from sfn_teach.models import MLP
from sfn_teach.optim import SeriesSFN
from sfn_teach.series import sfn_series, wynn_epsilon
from sfn_teach.update import curvature_update

pytestmark = pytest.mark.float64
F64 = torch.float64


def bits(tensor):
    """The tensor's bit patterns: equal bits, not only equal values (−0.0 ≠ 0.0, NaN = NaN)."""
    integer = {torch.float64: torch.int64, torch.float32: torch.int32}[tensor.dtype]
    return tensor.detach().contiguous().view(integer)


def assert_same_bits(ours, theirs):
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(bits(ours), bits(theirs))


def random_operator(n, eigenvalues, seed, dtype=F64):
    """``v ↦ Hv`` for ``H = Q diag(h) Qᵀ`` with a random orthogonal ``Q``, and a random ``g``;
    the operator counts its calls."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
    hessian = (q * torch.as_tensor(eigenvalues, dtype=F64)) @ q.T
    hessian = (0.5 * (hessian + hessian.T)).to(dtype)
    grad = torch.randn(n, generator=generator, dtype=F64).to(dtype)
    calls = []

    def hvp(v):
        calls.append(1)
        return hessian @ v

    return hvp, grad, calls


def spectrum(n, seed, high=3.0):
    """Indefinite, magnitudes from 0.01 to ``high``."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    return signs * torch.logspace(-2, math.log10(high), n, dtype=F64)


def assert_same_result(ours, theirs):
    assert_same_bits(ours.direction, theirs.direction)
    for name in ("num_hvps", "term_norms", "partial_sum_norms", "diverging",
                 "acceleration_failed", "moments"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert_same_bits(ours.ritz_values, theirs.ritz_values)
    if theirs.square_of_grad is None:
        assert ours.square_of_grad is None
    else:
        assert_same_bits(ours.square_of_grad, theirs.square_of_grad)


CASES = [
    dict(num_terms=1),
    dict(num_terms=6),
    dict(num_terms=6, kind="quasi-damped", damping=0.3),
    dict(num_terms=5, acceleration_order=1),
    dict(num_terms=5, acceleration_order=2),
    dict(num_terms=9, acceleration_order=3),
    dict(num_terms=7, acceleration_order=3),  # K = 2r + 1: the window is every partial sum
    dict(num_terms=8, acceleration_order=2, sablonniere=True),
    dict(num_terms=7, acceleration_order=3, sablonniere=True, kind="quasi-damped", damping=0.5),
    dict(num_terms=20, acceleration_order=1),  # beyond MAX_RITZ_DIMENSION moments
    dict(num_terms=6, acceleration_order=2, scale=0.5),  # diverging: no acceleration
    dict(num_terms=6, acceleration_order=2, scale=0.5, stop_if_diverging=True),
    dict(num_terms=6, acceleration_order=1, scale=100.0, stop_if_diverging=True),  # no stop
]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda case: ",".join(f"{k}={v}" for k, v in
                                                                  case.items()))
def test_the_series_has_the_bits_of_the_reference(case, dtype):
    case = {"scale": 10.0, "damping": 1e-3, **case}
    hvp, grad, calls = random_operator(40, spectrum(40, seed=3), seed=4, dtype=dtype)
    theirs = reference.sfn_series(hvp, grad, **case)
    their_calls, calls[:] = len(calls), []
    workspace = Workspace()
    for _ in range(2):  # a fresh workspace, then the same one again
        ours = sfn_series(hvp, grad, **case, workspace=workspace)
        assert_same_result(ours, theirs)
        assert len(calls) == their_calls
        calls[:] = []
    assert_same_result(sfn_series(hvp, grad, **case), theirs)  # and without one
    assert theirs.diverging == (case["scale"] == 0.5)  # the cases do what they say


def test_a_given_square_of_the_gradient_is_the_first_product_pair():
    hvp, grad, calls = random_operator(30, spectrum(30, seed=5), seed=6)
    square = hvp(hvp(grad))
    case = dict(num_terms=6, scale=10.0, damping=1e-2, acceleration_order=2)
    theirs = reference.sfn_series(hvp, grad, square_of_grad=square, **case)
    calls[:] = []
    ours = sfn_series(hvp, grad, square_of_grad=square, workspace=Workspace(), **case)
    assert_same_result(ours, theirs)
    assert ours.square_of_grad is square and len(calls) == 2 * (6 - 2)


@pytest.mark.parametrize("stop_if_diverging", [False, True])
def test_products_written_over_the_one_before_the_last_change_nothing(stop_if_diverging):
    """An ``hvp`` that writes its results into two vectors in turn (as SeriesSFN's does) gives
    the bits of one that allocates, and ``square_of_grad`` survives the later products."""
    hvp, grad, _ = random_operator(30, spectrum(30, seed=8), seed=9)
    buffers, calls = [torch.empty(30, dtype=F64) for _ in range(2)], []

    def reusing_hvp(v):
        out = buffers[len(calls) % 2]
        calls.append(1)
        return out.copy_(hvp(v))

    for scale in (10.0, 0.5):  # converging, diverging
        case = dict(num_terms=7, scale=scale, damping=1e-2, acceleration_order=2,
                    stop_if_diverging=stop_if_diverging)
        theirs = reference.sfn_series(hvp, grad, **case)
        ours = sfn_series(reusing_hvp, grad, workspace=Workspace(), **case)
        assert_same_result(ours, theirs)
        assert all(ours.square_of_grad is not b for b in buffers)


def test_a_failed_acceleration_falls_back_to_the_plain_sum_as_before():
    """``h² = V`` for every eigenvalue: ``X = 0``, every term after the first vanishes, the
    partial sums coincide and the ε-table divides 0 by 0."""
    n, scale = 12, 4.0
    hvp, grad, _ = random_operator(n, [2.0, -2.0] * (n // 2), seed=7)
    theirs = reference.sfn_series(hvp, grad, 5, scale, 1e-3, acceleration_order=2)
    ours = sfn_series(hvp, grad, 5, scale, 1e-3, acceleration_order=2, workspace=Workspace())
    assert theirs.acceleration_failed and ours.acceleration_failed
    assert_same_result(ours, theirs)


def test_one_workspace_serves_calls_of_every_shape_in_turn():
    workspace = Workspace()
    for n, dtype, order, seed in [(20, F64, 2, 1), (33, F64, 1, 2), (20, torch.float32, 3, 3),
                                  (20, F64, 2, 4)]:
        hvp, grad, _ = random_operator(n, spectrum(n, seed=seed), seed=seed, dtype=dtype)
        case = dict(num_terms=2 * order + 2, scale=10.0, damping=1e-3, acceleration_order=order)
        assert_same_result(sfn_series(hvp, grad, **case, workspace=workspace),
                           reference.sfn_series(hvp, grad, **case))


def test_the_workspace_hands_out_the_same_vectors_while_the_shape_stays():
    hvp, grad, _ = random_operator(25, spectrum(25, seed=8), seed=9)
    workspace = Workspace()
    first = sfn_series(hvp, grad, 5, 10.0, acceleration_order=2, workspace=workspace).direction
    address = first.data_ptr()
    second = sfn_series(hvp, grad, 5, 20.0, acceleration_order=2, workspace=workspace).direction
    assert second.data_ptr() == address  # the direction lives in the workspace …
    assert sfn_series(hvp, grad, 5, 20.0, acceleration_order=2).direction.data_ptr() != address
    assert workspace.vectors("x", 2, grad)[0] is workspace.vectors("x", 1, grad)[0]
    assert workspace.vectors("x", 1, grad.float())[0].dtype == torch.float32  # … until it changes


@pytest.mark.parametrize("order, sablonniere", [(0, False), (1, False), (2, False), (3, False),
                                                (2, True), (3, True)])
def test_wynn_epsilon_has_the_bits_of_the_reference_and_leaves_its_inputs(order, sablonniere):
    generator = torch.Generator().manual_seed(order)
    limit = torch.randn(15, generator=generator, dtype=F64)
    sums = [limit + 0.6**k * torch.randn(15, generator=generator, dtype=F64) for k in range(9)]
    for k, total in enumerate(sums):  # signed zeros: the result keeps the reference's signs
        total[0] = -0.0 if k % 2 else 0.0
    saved = [s.clone() for s in sums]
    assert_same_bits(wynn_epsilon(sums, order, sablonniere),
                     reference.wynn_epsilon(sums, order, sablonniere))
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(sums, saved))


@pytest.mark.parametrize("adaptive, momentum", [(False, 0.0), (False, 0.7), (True, 0.0)])
def test_curvature_update_has_the_bits_of_the_reference(adaptive, momentum):
    generator = torch.Generator().manual_seed(11)
    grad, direction, previous, buffer = torch.randn(4, 50, generator=generator, dtype=F64)
    previous[:5] = -0.0  # signed zeros keep their sign as in the reference
    kwargs = dict(lr=0.3, momentum=momentum, adaptive=adaptive)
    theirs = reference.curvature_update(grad, direction, previous, buffer, **kwargs)
    for workspace in (None, Workspace()):
        ours = curvature_update(grad, direction, previous, buffer, **kwargs, workspace=workspace)
        assert_same_bits(ours.update, theirs.update)
        assert_same_bits(ours.curvature_buffer, theirs.curvature_buffer)
        assert (ours.alpha, ours.mu, ours.model_decrease) == (
            theirs.alpha, theirs.mu, theirs.model_decrease)


def test_all_finite_is_isfinite_all():
    x = torch.tensor([1e308, 1e308, -1.0])  # finite entries whose sum overflows
    assert all_finite(x)
    for bad in (math.inf, -math.inf, math.nan):
        y = x.clone()
        y[2] = bad
        assert not all_finite(y)


# ---------------------------------------------------------------------------------------------
# SeriesSFN: the same steps
# ---------------------------------------------------------------------------------------------

SETTINGS = [
    dict(num_terms=5, acceleration_order=2, damping=1e-3),  # "ritz", with retries
    dict(num_terms=6, acceleration_order=1, damping=1e-3, scale_rule="lower_bound", scale=1.0,
         momentum=0.5, lr=0.5),
    dict(num_terms=5, acceleration_order=2, damping=1e-2, adaptive=True, damping_factor=0.9,
         sablonniere=True),
    dict(num_terms=4, damping=0.1, kind="quasi-damped", scale_rule="power", momentum=0.3),
    dict(num_terms=1, damping=1.0, scale_rule="fixed", scale=4.0, damping_factor=0.8),
]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in
                                                                       s.items()))
def test_series_sfn_takes_the_steps_of_the_reference(settings, dtype):
    """Six steps on a small MLP whose loss is scaled up step by step (so that ``"ritz"`` must
    retry with a larger V): the same parameters, statistics and state, bit for bit."""
    torch.manual_seed(0)
    model = MLP((6, 8, 8, 3), activation="tanh").to(dtype)
    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=generator, dtype=F64).to(dtype)
    y = torch.randint(0, 3, (16,), generator=generator)
    ours = SeriesSFN(model.parameters(), **settings)
    theirs = reference.ReferenceSeriesSFN(twin.parameters(), **settings)
    retries = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for step in range(6):
            factor = 4.0**step
            ours.step(lambda factor=factor: factor * F.cross_entropy(model(x), y))
            theirs.step(lambda factor=factor: factor * F.cross_entropy(twin(x), y))
            for a, b in zip(model.parameters(), twin.parameters()):
                assert_same_bits(a, b)
            assert dict(ours.stats) == dict(theirs.stats)
            retries += ours.stats["scale_retries"] or 0
    ours_state, their_state = ours.state_dict()["state"], theirs.state_dict()["state"]
    for index, entries in their_state.items():
        assert entries.keys() == ours_state[index].keys()
        for key, value in entries.items():
            if torch.is_tensor(value):
                assert_same_bits(ours_state[index][key], value)
            else:
                assert ours_state[index][key] == value
    if settings.get("scale_rule", "ritz") == "ritz":
        assert retries > 0  # the retry path was taken


def test_a_loaded_state_is_used_and_the_state_is_written_in_place():
    torch.manual_seed(0)
    model = MLP((5, 7, 2), activation="tanh").double()
    x, y = torch.randn(10, 5, dtype=F64), torch.randint(0, 2, (10,))
    settings = dict(num_terms=4, acceleration_order=1, momentum=0.5, damping=1e-2)
    optimizer = SeriesSFN(model.parameters(), **settings)
    optimizer.step(lambda: F.cross_entropy(model(x), y))
    saved = copy.deepcopy(optimizer.state_dict())
    first = next(iter(optimizer.state.values()))["previous_update"]
    optimizer.step(lambda: F.cross_entropy(model(x), y))
    assert next(iter(optimizer.state.values()))["previous_update"] is first  # in place
    twin = copy.deepcopy(model)
    reference_optimizer = reference.ReferenceSeriesSFN(twin.parameters(), **settings)
    for opt in (optimizer, reference_optimizer):
        opt.load_state_dict(copy.deepcopy(saved))
    for _ in range(2):
        optimizer.step(lambda: F.cross_entropy(model(x), y))
        reference_optimizer.step(lambda: F.cross_entropy(twin(x), y))
        for a, b in zip(model.parameters(), twin.parameters()):
            assert_same_bits(a, b)
        assert dict(optimizer.stats) == dict(reference_optimizer.stats)


# ---------------------------------------------------------------------------------------------
# No host synchronisation inside the loop
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_if_diverging", [False, True])
def test_the_loop_reads_no_value_between_products_unless_it_may_stop(stop_if_diverging,
                                                                     monkeypatch):
    """Every way a tensor's value reaches Python (``bool``, ``float``, ``item``, ``tolist``)
    is counted while the series runs, with the number of products made so far: none may
    happen between the first product and the last, except the one check per term that
    ``stop_if_diverging`` asks for."""
    hvp, grad, calls = random_operator(30, spectrum(30, seed=12), seed=13)
    reads = []
    for name in ("__bool__", "__float__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(len(calls))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    num_terms = 6
    sfn_series(hvp, grad, num_terms, 10.0, 1e-3, acceleration_order=2,
               stop_if_diverging=stop_if_diverging, workspace=Workspace())
    monkeypatch.undo()
    last = 2 * (num_terms - 1)
    inside = [count for count in reads if 0 < count < last]
    # with the stop: one check after each term's two products (the last term's is at `last`)
    expected = list(range(2, last, 2)) if stop_if_diverging else []
    assert inside == expected
