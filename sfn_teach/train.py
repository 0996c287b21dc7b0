"""One training loop for every optimiser, with evaluation, cost accounting and exact resume.

**Closures.** The curvature optimisers of :mod:`sfn_teach.optim` take the gradient and the
Hessian-vector products themselves: their closure *returns* the loss. ``torch.optim``
optimisers expect the closure to zero the gradients and call ``backward``. :func:`make_closure`
is the one place that knows this; the loop is otherwise the same for all.

**What is measured.** After every step :class:`Trainer` adds up

- the wall-clock time of the training steps only (fetching the batch and ``optimizer.step``;
  evaluation, checkpoints and logging excluded), synchronising the device first on a GPU;
- the work in *gradient-equivalents* (:class:`CostModel`): one per gradient, ``c_HVP`` per
  Hessian-vector product and ``c_fwd`` per forward-only pass, counted from the optimiser's
  ``stats`` (``num_gradients``, ``num_hvps``, ``num_forward``; a ``torch.optim`` optimiser
  costs one gradient per step). Evaluation passes are not counted.

**Determinism.** The data order is a function of ``(seed, step)`` (:class:`sfn_teach.data.Batches`)
and :meth:`Trainer.state_dict` holds everything else that changes: the model, the optimiser,
every random generator and the counters. With a fixed seed a CPU run is reproducible bit for
bit, and a run restored from a state dict continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import rng_state, set_rng_state
from .data import SPLITS, Batches, Dataset, Split
from .hvp import ModelHVP, dense_hessian
from .optim import CurvatureOptimizer, ExactSFN, Newton, SeriesSFN

OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "series_sfn": SeriesSFN,
    "exact_sfn": ExactSFN,
    "newton": Newton,
}
"""The optimisers a benchmark can name, by their config ``type``."""

STAT_FIELDS = ("scale", "damping", "alpha", "mu", "rho")
"""Statistics of the last step copied into every record (``V``, ``λ``, ``α``, ``μ``, ``ρ``)."""


@dataclass(frozen=True)
class CostModel:
    """Work in gradient-equivalents: ``n_grad + c_HVP · n_HVP + c_fwd · n_fwd``.

    A gradient (one forward and one backward pass) is the unit. ``hvp = c_HVP`` is the cost of
    one Hessian-vector product: by Pearlmutter's trick a small constant; the default 2.0 is a
    round figure (a further product on a retained double-backward graph costs 1.6–2.8
    gradients on the CPU, ``bench/hvp_cost.py``); pass a measured ratio for the machine at
    hand. ``forward = c_fwd`` is a forward-only pass (the Levenberg–Marquardt re-evaluation),
    taken as half a gradient.
    """

    hvp: float = 2.0
    forward: float = 0.5

    def __call__(self, gradients: int, hvps: int, forward: int) -> float:
        return gradients + self.hvp * hvps + self.forward * forward


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's global generator and Python's :mod:`random`."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global generator, for user code)
    random.seed(seed)


def make_closure(optimizer, model, loss_fn, inputs, targets):
    """The closure of one step on the batch ``(inputs, targets)``.

    For a :class:`sfn_teach.optim.CurvatureOptimizer` it returns ``loss_fn(model(inputs),
    targets)`` and nothing else; for any other optimiser it zeroes the gradients, computes the
    loss, calls ``backward`` and returns the loss, as ``torch.optim`` expects.
    """

    def loss():
        return loss_fn(model(inputs), targets)

    if isinstance(optimizer, CurvatureOptimizer):
        return loss

    def loss_and_gradient():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    return loss_and_gradient


@torch.no_grad()
def evaluate(model, loss_fn, split: Split, batch_size: int | None = None) -> dict:
    """Mean loss and accuracy of ``model`` (in eval mode) on ``split``, in chunks.

    ``loss = (1/N) Σ_i ℓ(f(x_i), y_i)``, accumulated as chunk means weighted by chunk size
    (``loss_fn`` must reduce by the mean); ``accuracy`` is the fraction of ``argmax f(x_i) =
    y_i``. ``batch_size=None`` evaluates the whole split at once. The model's training flag
    is restored afterwards.
    """
    was_training = model.training
    model.eval()
    size = batch_size or len(split)
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), size):
        inputs, targets = split.inputs[start : start + size], split.targets[start : start + size]
        outputs = model(inputs)
        total_loss += float(loss_fn(outputs, targets)) * len(targets)
        correct += int((outputs.argmax(dim=1) == targets).sum())
    model.train(was_training)
    return {"loss": total_loss / len(split), "accuracy": correct / len(split)}


def hessian_eigenvalues(model, loss_fn, inputs, targets) -> torch.Tensor:
    """The eigenvalues ``h_1 ≤ … ≤ h_n`` of the Hessian of ``loss_fn(model(inputs), targets)``.

    ``H`` over all parameters of ``model`` is formed column by column from ``n`` exact
    Hessian-vector products (:class:`sfn_teach.hvp.ModelHVP`, BatchNorm on batch statistics)
    and diagonalised with ``torch.linalg.eigvalsh``: small models only.
    """
    operator = ModelHVP(model, loss_fn, inputs, targets)
    return torch.linalg.eigvalsh(dense_hessian(operator.matvec, operator.grad))


def _synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a GPU step is timed when it is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """Trains ``model`` with ``optimizer`` on minibatches of ``dataset.train``.

    Args:
        model, optimizer: any ``nn.Module`` and a ``torch.optim`` or :mod:`sfn_teach.optim`
            optimiser over its parameters.
        dataset: a :class:`sfn_teach.data.Dataset` (tensors on the model's device).
        batch_size: examples per step (the last partial batch of an epoch is dropped).
        seed: the data-order seed (:class:`sfn_teach.data.Batches`). Model initialisation is
            the caller's: call :func:`seed_everything` before building the model.
        loss_fn: a mean-reduced loss ``(outputs, targets) ↦ scalar`` (cross-entropy).
        cost: the :class:`CostModel` of the gradient-equivalents.
        eval_batch_size: chunk size for evaluation (``None``: whole splits at once).

    :meth:`run` trains and evaluates; :meth:`state_dict` / :meth:`load_state_dict` save and
    restore everything needed to continue bit for bit.
    """

    def __init__(
        self,
        model,
        optimizer,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        loss_fn=F.cross_entropy,
        cost: CostModel = CostModel(),
        eval_batch_size: int | None = None,
    ):
        self.model, self.optimizer, self.dataset = model, optimizer, dataset
        self.loss_fn, self.cost, self.eval_batch_size = loss_fn, cost, eval_batch_size
        self.batches = Batches(dataset.train, batch_size, seed)
        self.device = next(model.parameters()).device
        self.step = 0
        self.num_records = 0
        self.wall_clock = 0.0
        self.counts = {"gradients": 0, "hvps": 0, "forward": 0, "skipped": 0}
        self.last_stats: dict = {}

    @property
    def epoch(self) -> float:
        """Epochs completed, ``step / steps_per_epoch``."""
        return self.step / self.batches.steps_per_epoch

    @property
    def grad_equivalents(self) -> float:
        """The work so far in gradient-equivalents (:class:`CostModel`)."""
        return self.cost(self.counts["gradients"], self.counts["hvps"], self.counts["forward"])

    def train_step(self) -> dict:
        """One optimiser step on the next batch; returns its statistics (at least the loss)."""
        self.model.train()
        _synchronize(self.device)
        start = time.perf_counter()
        inputs, targets = self.batches[self.step]
        closure = make_closure(self.optimizer, self.model, self.loss_fn, inputs, targets)
        loss = float(self.optimizer.step(closure).detach())
        _synchronize(self.device)
        self.wall_clock += time.perf_counter() - start
        stats = dict(getattr(self.optimizer, "stats", None) or {"loss": loss})
        self.counts["gradients"] += stats.get("num_gradients", 1)
        self.counts["hvps"] += stats.get("num_hvps", 0)
        self.counts["forward"] += stats.get("num_forward", 0)
        self.counts["skipped"] += bool(stats.get("skipped", False))
        self.step += 1
        self.last_stats = stats
        return stats

    def record(self) -> dict:
        """Evaluate on every split; the record of the current step (flat, JSON-ready).

        Fields: ``step``, ``epoch``, ``wall_clock`` (s, training steps only),
        ``grad_equivalents``, the counts ``gradients``, ``hvps``, ``forward``,
        ``skipped_steps``; ``{train,val,test}_{loss,accuracy}``; and from the last step
        ``batch_loss`` and ``scale`` V, ``damping`` λ, ``alpha`` α, ``mu`` μ, ``rho`` ρ
        (``None`` where the optimiser has no such quantity, and at step 0). Each call counts
        in ``num_records`` (saved in :meth:`state_dict`).
        """
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "wall_clock": self.wall_clock,
            "grad_equivalents": self.grad_equivalents,
            "gradients": self.counts["gradients"],
            "hvps": self.counts["hvps"],
            "forward": self.counts["forward"],
            "skipped_steps": self.counts["skipped"],
        }
        for name in SPLITS:
            metrics = evaluate(
                self.model, self.loss_fn, self.dataset.split(name), self.eval_batch_size
            )
            record[f"{name}_loss"] = metrics["loss"]
            record[f"{name}_accuracy"] = metrics["accuracy"]
        record["batch_loss"] = self.last_stats.get("loss")
        record.update({field: self.last_stats.get(field) for field in STAT_FIELDS})
        self.num_records += 1
        return record

    def run(self, num_steps: int, eval_every: int, on_record=None, progress=True, desc=None):
        """Train until step ``num_steps``, recording at step 0 and every ``eval_every`` steps.

        The last step is always recorded. ``on_record(record)`` is called after each record
        (the benchmark runner writes and checkpoints there); training resumes from
        ``self.step``, and step 0 is recorded only if nothing has been. ``progress`` shows a
        tqdm bar (a widget in notebooks). Returns the records made by this call.
        """
        records = []

        def emit():
            records.append(self.record())
            if on_record is not None:
                on_record(records[-1])

        if self.step == 0 and self.num_records == 0:
            emit()
        with tqdm(
            total=num_steps, initial=self.step, desc=desc, disable=not progress, leave=False
        ) as bar:
            while self.step < num_steps:
                stats = self.train_step()
                bar.update(1)
                if self.step % eval_every == 0 or self.step == num_steps:
                    emit()
                    bar.set_postfix(loss=f"{records[-1]['train_loss']:.4g}", refresh=False)
                elif math.isfinite(stats["loss"]):
                    bar.set_postfix(batch_loss=f"{stats['loss']:.4g}", refresh=False)
        return records

    def state_dict(self) -> dict:
        """Model, optimiser, random generators and loop position (weights_only-loadable)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "step": self.step,
            "num_records": self.num_records,
            "wall_clock": self.wall_clock,
            "counts": dict(self.counts),
            "last_stats": {k: v for k, v in self.last_stats.items() if k in ("loss", *STAT_FIELDS)},
            "data_seed": self.batches.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; the next step is exactly the one it would have been."""
        if state["data_seed"] != self.batches.seed:
            raise ValueError(
                f"the state was saved with data seed {state['data_seed']}, "
                f"this trainer has seed {self.batches.seed}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step, self.num_records = state["step"], state["num_records"]
        self.wall_clock, self.counts = state["wall_clock"], dict(state["counts"])
        self.last_stats = dict(state["last_stats"])
