"""K-FAC (Martens & Grosse 2015) from ASDL (``asdfghjkl``, Kazuki Osawa's library), wrapped as a
``torch.optim`` optimiser with the package's closure convention and an exact ``state_dict``.

**The maths.** Per layer ``s = W a`` (``nn.Linear``, ``nn.Conv2d``; ``a`` with a 1 appended
for the bias) K-FAC approximates the layer's block of the Fisher by a Kronecker product,
``F ≈ A ⊗ G`` with ``A = E[a aᵀ]`` (inputs) and ``G = E[g gᵀ]`` (``g = ∂ℓ/∂s`` for labels
*sampled from the model's own prediction*: the Monte-Carlo Fisher, one sample per example),
both averaged over the batch of ``data_size`` examples. The step is SGD (``lr``, ``momentum``,
``weight_decay``, :class:`torch.optim.SGD`) on the preconditioned gradient

    ``∇W ← (G + (√λ/π) I)⁻¹ ∇W (A + π√λ I)⁻¹``,  ``π = √((tr A / dim A) / (tr G / dim G))``,

ASDL's damping convention exactly: Martens & Grosse's factored Tikhonov damping with ``λ`` the
``damping``, each shift at least 1e-7. BatchNorm layers are left to the plain gradient
(``ignore_modules``; ASDL would give them a unit-wise Fisher). ``curvature_interval``: the
factors and their inverses are recomputed every that many steps (between, the last inverses
precondition). ASDL's moving average of the factors (``ema_decay``) is not offered: in
``asdfghjkl`` 0.1a5 its inversion path calls ``torch.cuda.nvtx`` and fails on a CPU build of
torch, so the factors are the last curvature batch's (ASDL's default). ``max_grad_norm = c``
clips the preconditioned gradient ``p`` of all layers together to ``p · min(1, c/‖p‖₂)``
before the SGD step, as ASDL's CIFAR-10 examples do (with ``c = 1``); without it a large ``lr``
can blow the factors up until Cholesky refuses one, and then the step stops the run with
:class:`~sfn_teach.optim.NonFiniteStepError`, the parameters unchanged.

**Driving ASDL.** ASDL's documented way is ``gm.setup_model_call(model, x)``,
``gm.setup_loss_call(F.cross_entropy, dummy_y, t)``, ``gm.forward_and_backward()``, then the
optimiser's ``step()``. Here ``step(closure)`` takes the closure of a curvature optimiser (it
only returns the mean loss of the batch, :func:`sfn_teach.registry.step_closure`): the model
call is the closure, the logits are caught by a forward hook on the model, and the loss is the
closure's value (times ``data_size`` on a curvature step, where ASDL divides the summed loss and
its gradient by ``data_size``). The two ways agree to rounding (``tests/test_baselines.py``).
``data_size`` must be the batch size (the examples the loss averages over); a batch of another
size is refused before the parameters move.

**Cost.** Every step is one forward, the backward of the loss (the gradient) and the
preconditioning ``G⁻¹ ∇W A⁻¹`` of every layer; a curvature step adds the backward of the
sampled labels' loss (the Fisher's ``G``; parameter gradients skipped), the factor updates
``A``, ``G`` of every layer (from activations and output gradients caught by ASDL's hooks) and
two damped Cholesky inversions per layer. The trainer counts the two backward passes as
gradients (the closure's and :data:`FISHER_GRADIENTS`), and weighs the rest by the constants
of :class:`sfn_teach.cost.CostModel`: ``kfac_curvature`` the factor updates and inversions of
a curvature step, ``kfac_precondition`` the preconditioning of every step, both measured in
gradients by ``python bench/kfac_cost.py [--large]`` (interleaved repeats, ratios to a gradient
of the same run). On a 2-core AMD EPYC, 1 thread, load ≈ 1
(medians; minima within 0.1 where no range is given):

=============================  =======  ==========  =====  =====  ===========  ===========
network, batch                 factors  inversions  c_KF   c_P    curvature    other step
                                                                  step (count) (count)
=============================  =======  ==========  =====  =====  ===========  ===========
digits MLP 64-12-10 f64, 400   2.1      0.68        2.8    0.12   6.55 (4.9)   1.62 (1.12)
ResNet-18 width 4, 30          1.4–1.5  0.23        1.7    0.02   3.63 (3.7)   1.05 (1.02)
ResNet-18 width 64, 32         3.4      5.0         8.4    0.87   11.1 (11.3)  1.87 (1.87)
ResNet-18 width 64, 512        2.6      0.23        2.9    0.04   5.0–5.5      1.07–1.10
                                                                  (4.9)        (1.04)
=============================  =======  ==========  =====  =====  ===========  ===========

The factor updates grow with the batch like a gradient (for a 3×3 convolution with as many
input as output channels ``A`` costs about nine times its forward pass), the inversions do
not; so ``c_KF`` is the config's, not the method's (the digits defaults, ``[cost]`` of the
CIFAR configs). On the ResNets the count is within 10 % of the clock; on the digits MLP a
curvature step's sampled backward (1.7 gradients there) and ASDL's Python work, which a
network this small cannot hide, leave it short by a quarter. Under load two threads gave
inversions from 1 to 50 times their time: measure with one.

**State.** ASDL keeps the factors on the modules and its own ``state_dict`` holds only a step
counter; :meth:`KFAC.state_dict` adds what ASDL keeps of every layer's factors (the damped
inverses; the factors too where ASDL keeps them), so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
import warnings

import torch
from asdl import FISHER_MC, KfacGradientMaker, PreconditioningConfig
from asdl.symmatrix import SymMatrix

from .checks import ArgumentError, integer, real
from .update import NonFiniteStepError

__all__ = ["FISHER_GRADIENTS", "KFAC"]

FISHER_GRADIENTS = 1
"""Gradient-equivalents a curvature step adds to the closure's gradient: the backward of the
sampled labels' loss (the trainer's count, :attr:`sfn_teach.registry.OptimizerEntry`)."""

KRON = ("A", "B", "A_inv", "B_inv")
NORMALISATIONS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.LayerNorm)


class KFAC(torch.optim.SGD):
    """K-FAC over ``model`` (module docstring): ASDL's preconditioned gradient, then SGD.

    Args:
        model: the network (K-FAC needs its layers, not only its parameters).
        lr, momentum, weight_decay: those of :class:`torch.optim.SGD` (``lr > 0``).
        damping: ``λ > 0`` (ASDL's ``damping``).
        curvature_interval: steps between updates of the factors and inverses (int ``≥ 1``).
        max_grad_norm: ``c > 0`` clips the preconditioned gradient ``p`` (all parameters'
            together) to ``p · min(1, c/‖p‖₂)`` before the SGD step
            (:func:`torch.nn.utils.clip_grad_norm_`, as ASDL's CIFAR-10 examples do);
            ``None``: no clipping.
        data_size: the batch size (examples the loss averages over); required to step.
    """

    def __init__(self, model, lr=0.01, momentum=0.9, weight_decay=0.0, damping=1e-3,
                 curvature_interval=1, max_grad_norm=None, data_size=None):
        if not isinstance(model, torch.nn.Module):
            raise ArgumentError("model", f"K-FAC needs the model (a torch.nn.Module), got "
                                         f"{type(model).__name__}")
        real("lr", lr, 0.0, low_open=True)
        real("momentum", momentum, 0.0)
        real("weight_decay", weight_decay, 0.0)
        real("damping", damping, 0.0, low_open=True)
        integer("curvature_interval", curvature_interval, 1)
        if max_grad_norm is not None:
            real("max_grad_norm", max_grad_norm, 0.0, low_open=True)
        if data_size is not None:
            integer("data_size", data_size, 1)
        super().__init__(model.parameters(), lr=lr, momentum=momentum,
                         weight_decay=weight_decay)
        self.model, self.data_size, self.max_grad_norm = model, data_size, max_grad_norm
        config = PreconditioningConfig(
            data_size=-1 if data_size is None else data_size, damping=damping,
            curvature_upd_interval=curvature_interval,
            preconditioner_upd_interval=curvature_interval,
            ignore_modules=list(NORMALISATIONS))
        with warnings.catch_warnings():  # ASDL warns for every module kind it does not handle
            warnings.simplefilter("ignore")
            self.maker = KfacGradientMaker(model, config, fisher_type=FISHER_MC)
        self.layers = dict(self.maker.named_modules_for_curvature)

    @property
    def curvature_step(self) -> bool:
        """Whether the next step recomputes the factors (ASDL's schedule)."""
        return self.maker.do_update_curvature()

    def step(self, closure):
        """One K-FAC step; ``closure()`` returns the batch's mean loss (no ``backward``).
        Returns that loss (detached)."""
        if self.data_size is None:
            raise ArgumentError("data_size", "K-FAC needs the batch size (data_size) to average "
                                             "its factors: the registry's builders pass it")
        caught = {}
        hook = self.model.register_forward_hook(
            lambda module, inputs, output: caught.__setitem__("logits", output))
        scale = self.data_size if self.curvature_step else 1  # ASDL divides by data_size

        def model_call():  # the closure first: its forward pass catches the logits
            loss = closure()
            return caught["logits"], loss

        model_output = self.maker.setup_model_call(model_call)
        self.maker.setup_loss_repr(model_output[1].mul(scale) if scale != 1 else model_output[1])
        self.zero_grad()
        try:
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Using a non-full backward hook")  # ASDL's
                (logits, _), loss = self.maker.forward_and_backward()
        except (ValueError, RuntimeError) as error:  # sampling or Cholesky
            if "logits" in caught and not bool(torch.isfinite(caught["logits"]).all()):
                return torch.tensor(math.nan)  # parameters untouched: the trainer undoes it
            if isinstance(error, torch.linalg.LinAlgError):
                reason = str(error).splitlines()[0].rstrip(".")
                raise NonFiniteStepError(
                    f"K-FAC: a damped Kronecker factor is not positive definite in the working "
                    f"precision ({reason}); the parameters are unchanged and the run stops (a "
                    "smaller lr, a larger damping or max_grad_norm keeps the factors in range)"
                ) from error
            raise
        finally:
            hook.remove()
        if logits.shape[0] != self.data_size:
            raise ArgumentError("data_size", f"is {self.data_size}, but the batch has "
                                             f"{logits.shape[0]} examples")
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        super().step()
        return loss.detach()

    def state_dict(self) -> dict:
        """SGD's state, ASDL's step counter and every layer's Kronecker factors (as ASDL keeps
        them: the damped inverses ``A_inv``, ``B_inv``)."""
        state = super().state_dict()
        state["kfac"] = {"step": self.maker.state["step"], "factors": {}}
        for name, module in self.layers.items():
            fisher = getattr(module, self.maker.fisher_maker.config.fisher_attr, None)
            if fisher is not None and fisher.kron is not None:
                state["kfac"]["factors"][name] = {
                    key: getattr(fisher.kron, key).clone() for key in KRON
                    if getattr(fisher.kron, key) is not None}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` (factors put back on the layers)."""
        state_dict = dict(state_dict)
        kfac = state_dict.pop("kfac")
        super().load_state_dict(state_dict)
        self.maker.state["step"] = kfac["step"]
        attribute = self.maker.fisher_maker.config.fisher_attr
        for name, module in self.layers.items():
            factors = kfac["factors"].get(name)
            if factors is None:
                if hasattr(module, attribute):
                    delattr(module, attribute)
                continue
            setattr(module, attribute, SymMatrix(**{f"kron_{key}": value.clone()
                                                    for key, value in factors.items()}))
