"""One training loop for every optimiser, with evaluation, cost accounting and exact resume.

**Closures.** :func:`make_closure` evaluates the loss of a batch and hands it to
:func:`sfn_teach.registry.step_closure`, which knows what each kind of optimiser expects; the loop
is otherwise the same for all.

**BatchNorm.** The gradient and the Hessian-vector products of a step are taken on the same
batch and model state, in training mode (batch statistics). Running statistics are updated
exactly once per step, by the first forward pass of the step: a second evaluation of the
closure (the Levenberg–Marquardt re-evaluation, or an HVP backend that re-runs the closure)
uses batch statistics and updates nothing (:func:`make_closure`).

**What is measured.** After every step :class:`Trainer` adds up

- the time of the training steps only (fetching the batch and ``optimizer.step``; evaluation,
  checkpoints and logging excluded), with CUDA events on a GPU (:func:`sfn_teach.device.timed`).
  The first ``warmup_steps`` steps a trainer takes (cuDNN autotuning, allocator growth) count
  in ``warmup_seconds`` instead of ``wall_clock``, and with ``compile`` the first step, which
  compiles, in ``compile_seconds``; both are reported, never hidden;
- the work in *gradient-equivalents* (:class:`~sfn_teach.cost.CostModel`): one per gradient,
  ``c_HVP`` per Hessian-vector product, ``c_fwd`` per forward-only pass and, for K-FAC,
  ``c_KF`` per factor update (with its inversions) and ``c_P`` per preconditioning, counted
  from a curvature optimiser's ``stats`` (``num_gradients``, ``num_hvps``, ``num_forward``),
  any other optimiser's as :func:`sfn_teach.library_step.library_step` counts them (its
  closure's evaluations, the registry's products and K-FAC's factor work). Per step,
  ``c_t = n_grad + c_HVP · n_HVP + c_fwd · n_fwd + c_KF · n_KF + c_P · n_P``, so
  ``grad_equivalents = Σ_t c_t`` whatever the batch. ``example_grad_equivalents = Σ_t c_t B_t``
  weighs each step by the examples ``B_t`` of its (global) batch: one gradient on one example
  is 1, so a step on 400 examples costs four times one on 100. Evaluation passes and the
  curvature diagnostics are not counted;
- data-parallel (``process_group``), the optimiser's all-reduces: the bytes of the last step
  and the seconds spent in them during the steps counted in ``wall_clock``.

**Data parallelism.** With ``process_group`` (``torch.distributed`` initialised, one process
per rank, the same seed everywhere) each rank trains on its shard of every batch
(:class:`sfn_teach.data.Batches` with ``shard``); a curvature optimiser built with the same
``process_group`` averages the gradient and every Hessian-vector product itself, a
``torch.optim`` optimiser gets its gradients averaged after ``backward``
(:class:`sfn_teach.distributed.GradientMean`, one all-reduce per step). Every rank evaluates
the whole splits with identical parameters, so the records are the same on every rank.

**Precision and compilation.** Each step runs in the precision that
:class:`sfn_teach.device.Precision` gives its kind of optimiser (curvature steps in float32
unless asked otherwise); evaluation always in float32. With ``compile``, the training forward
pass goes through ``torch.compile``; if the first step fails that way (double backward through
a compiled graph is not supported by PyTorch's AOTAutograd), the trainer restores its state,
falls back to the eager model, warns and says so in every record (``compiled``,
``compile_error``).

**Non-finite steps.** A curvature optimiser skips a non-finite step itself; any other one is
stepped by :func:`sfn_teach.library_step.library_step`, which undoes a non-finite step of a
``guarded`` registry entry and stops the run.

**Time budgets.** :meth:`Trainer.run` with ``time_budget`` stops after the first step at which
``wall_clock`` reaches it (``num_steps`` stays the cap) and records that step. How many steps
fit in a time budget depends on the machine and its load, so a time-budgeted run is not
reproducible step for step; everything else about it is. Data-parallel, rank 0's clock
decides for every rank (the ranks' clocks differ, and they must stop at the same step).

**Curvature diagnostics** (small models, ``curvature_every``): every few evaluations the
record also holds :func:`sfn_teach.diagnostics.curvature_diagnostics` on a fixed batch.

**Determinism.** The data order and augmentation are a function of ``(seed, step)``
(:class:`sfn_teach.data.Batches`) and :meth:`Trainer.state_dict` holds everything else that
changes: the model, the optimiser, every random generator and the counters. With a fixed seed
a CPU run is reproducible bit for bit, and a run restored from a state dict continues exactly
as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import rng_state, set_rng_state
from .checks import ArgumentError, integer, real
from .cost import COUNTS, CostModel
from .data import SPLITS, Batches, Dataset, Split
from .device import Precision, autocast, tf32, timed
from .diagnostics import (
    CURVATURE_FIELDS,
    curvature_diagnostics,
    diagnostic_batch,
    hessian_eigenvalues,
)
from .distributed import GradientMean, rank, world_size
from .hvp import batchnorm_policy
from .library_step import library_step
from .optim import CurvatureOptimizer, StepStats
from .registry import OPTIMIZERS, entry_of, step_closure

__all__ = [
    "CURVATURE_FIELDS", "OPTIMIZERS", "STAT_FIELDS", "TIMING_FIELDS", "CostModel", "Trainer",
    "curvature_diagnostics", "evaluate", "hessian_eigenvalues", "make_closure",
    "seed_everything",
]

STAT_FIELDS = ("scale", "damping", "alpha", "mu", "rho", "lambda_max", "scale_ratio",
               "implicit_damping")
"""Statistics of the last step copied into every record: ``V``, ``λ``, ``α``, ``μ``, ``ρ`` and,
from :class:`~sfn_teach.optim.SeriesSFN`, ``λ̂_max`` (a Ritz estimate of the largest ``|h|``),
``V/λ̂_max²`` and the implicit damping ``½√(πV/K)``."""
TIMING_FIELDS = ("wall_clock", "warmup_seconds", "compile_seconds", "allreduce_seconds",
                 "allreduce_share")
"""The record fields that are measured times (they differ between otherwise identical runs)."""


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's global generator and Python's :mod:`random`."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global generator, for user code)
    random.seed(seed)


def make_closure(optimizer, model, loss_fn, inputs, targets, *, forward=None,
                 autocast_dtype=None, gradient_mean=None):
    """The closure of one step on the batch ``(inputs, targets)``.

    The loss is ``loss_fn(forward(inputs), targets)``, made a closure by
    :func:`sfn_teach.registry.step_closure` (only the loss for a curvature optimiser; with
    ``backward`` for ``torch.optim``, then, data-parallel, ``gradient_mean``, a
    :class:`sfn_teach.distributed.GradientMean`, averages loss and gradients). ``forward`` is
    the callable that computes the outputs (default ``model``, or e.g. the model compiled by
    ``torch.compile``); with ``autocast_dtype`` the forward pass (not the backward) runs under
    ``torch.autocast`` of that dtype on the inputs' device.

    The first call is a training forward pass: BatchNorm normalises by batch statistics and
    updates its running statistics. Every later call (the Levenberg–Marquardt re-evaluation at
    ``θ_{t+1}``, or an HVP backend that re-runs the closure) is made under
    :func:`sfn_teach.hvp.batchnorm_policy` ``(model, "train")``: batch statistics again, nothing
    updated. So the running statistics move exactly once per step, for every optimiser.
    """
    forward = model if forward is None else forward
    calls = 0

    def loss():
        nonlocal calls
        calls += 1
        batchnorm = contextlib.nullcontext() if calls == 1 else batchnorm_policy(model, "train")
        with batchnorm, autocast(inputs.device, autocast_dtype):
            return loss_fn(forward(inputs), targets)

    return step_closure(optimizer, loss, gradient_mean)


@torch.no_grad()
def evaluate(model, loss_fn, split: Split, batch_size: int | None = None) -> dict:
    """Mean loss and accuracy of ``model`` (in eval mode) on ``split``, in chunks.

    ``loss = (1/N) Σ_i ℓ(f(x_i), y_i)``, accumulated as chunk means weighted by chunk size
    (``loss_fn`` must reduce by the mean); ``accuracy`` is the fraction of ``argmax f(x_i) =
    y_i``. ``batch_size=None`` evaluates the whole split at once. Runs in the model's dtype
    without autocast and with TF32 off, the same for every optimiser. The model's training
    flag is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    with tf32(False):
        for inputs, targets in split.chunks(batch_size):
            outputs = model(inputs)
            total_loss += float(loss_fn(outputs, targets)) * len(targets)
            correct += int((outputs.argmax(dim=1) == targets).sum())
    model.train(was_training)
    return {"loss": total_loss / len(split), "accuracy": correct / len(split)}


class Trainer:
    """Trains ``model`` with ``optimizer`` on minibatches of ``dataset.train``.

    Args:
        model, optimizer: any ``nn.Module`` and a ``torch.optim`` or :mod:`sfn_teach.optim`
            optimiser over its parameters.
        dataset: a :class:`sfn_teach.data.Dataset` (tensors on the model's device); its
            ``augment``, if any, is applied to the training batches.
        batch_size: examples per step (the last partial batch of an epoch is dropped).
        seed: the data-order seed (:class:`sfn_teach.data.Batches`). Model initialisation is
            the caller's: call :func:`seed_everything` before building the model.
        loss_fn: a mean-reduced loss ``(outputs, targets) ↦ scalar`` (cross-entropy).
        cost: the :class:`CostModel` of the gradient-equivalents (``None``: its defaults).
        eval_batch_size: chunk size for evaluation (``None``: whole splits at once).
        precision: the :class:`sfn_teach.device.Precision` of the steps (default: all fp32).
        compile: run the training forward pass through ``torch.compile``, falling back to the
            eager model if the first step fails (see the module docstring).
        warmup_steps: how many steps this trainer takes first without counting them in
            ``wall_clock`` (their time is ``warmup_seconds``).
        process_group: data parallelism over the ranks of this ``torch.distributed`` group (see
            the module docstring); ``batch_size`` is the global batch, divisible by the
            number of ranks. ``None``: one process.
        curvature_every: record the :func:`curvature_diagnostics` at every
            ``curvature_every``-th record (the first, at step 0, included), ``None`` at the
            others; ``None`` (default): no diagnostics. For models of at most
            :data:`sfn_teach.hvp.DENSE_MAX_DIM` parameters, in one process.
        curvature_batch_size: the diagnostic batch is the first ``curvature_batch_size``
            examples of the training split, the same at every record (default: ``batch_size``).

    :meth:`run` trains and evaluates; :meth:`state_dict` / :meth:`load_state_dict` save and
    restore everything needed to continue bit for bit. A trainer restored from a state dict
    warms up (and compiles) again, as a fresh process must.
    """

    def __init__(
        self,
        model,
        optimizer,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        loss_fn=F.cross_entropy,
        cost: CostModel | None = None,
        eval_batch_size: int | None = None,
        *,
        precision: Precision | None = None,
        compile: bool = False,
        warmup_steps: int = 0,
        process_group=None,
        curvature_every: int | None = None,
        curvature_batch_size: int | None = None,
    ):
        integer("warmup_steps", warmup_steps, 0)
        self.entry = entry_of(optimizer)
        if process_group is not None and self.entry is not None and self.entry.create_graph:
            raise ArgumentError("process_group", f"{self.entry.label} is not supported "
                                "data-parallel: its Hessian-vector products would not be "
                                "averaged over the ranks")
        self.curvature_every = curvature_every
        self.curvature_batch = None if curvature_every is None else diagnostic_batch(
            model, dataset, curvature_every,
            batch_size if curvature_batch_size is None else curvature_batch_size, process_group)
        self.model, self.optimizer, self.dataset = model, optimizer, dataset
        self.loss_fn, self.eval_batch_size = loss_fn, eval_batch_size
        self.cost = CostModel() if cost is None else cost
        self.precision, self.warmup_steps = precision or Precision(), warmup_steps
        self.process_group = process_group
        shard = (0, 1) if process_group is None else (rank(process_group),
                                                      world_size(process_group))
        self.batches = Batches(dataset.train, batch_size, seed, dataset.augment, shard)
        self.device = next(model.parameters()).device
        self.curvature = isinstance(optimizer, CurvatureOptimizer)
        self.forward = torch.compile(model) if compile else model
        self.compiled, self.compile_error = compile, None
        self._compile_pending, self._steps_taken = compile, 0
        self.step = 0
        self.num_records = 0
        self.wall_clock = self.warmup_seconds = self.compile_seconds = 0.0
        self.allreduce_seconds = 0.0
        self.counts = {**dict.fromkeys(COUNTS, 0), "skipped": 0}
        self.last_stats = StepStats()  # of the last step; all None (or 0) before the first

    @property
    def epoch(self) -> float:
        """Epochs completed, ``step / steps_per_epoch``."""
        return self.step / self.batches.steps_per_epoch

    @property
    def grad_equivalents(self) -> float:
        """The work so far in gradient-equivalents, ``Σ_t c_t`` (:class:`CostModel`)."""
        return self.cost(*(self.counts[name] for name in COUNTS))

    @property
    def example_grad_equivalents(self) -> float:
        """The work so far in per-example gradient-equivalents, ``Σ_t c_t B_t``.

        ``B_t`` is the global batch of step ``t`` (all ranks together). Every step of a
        trainer has the same ``B``, so this is ``B Σ_t c_t``.
        """
        return self.batches.batch_size * self.grad_equivalents

    def finished(self, num_steps: int, time_budget: float | None = None) -> bool:
        """Whether a run to ``num_steps`` is over: ``step ≥ num_steps``, or ``wall_clock ≥
        time_budget`` when a time budget (s of training time) is given."""
        return self.step >= num_steps or (time_budget is not None
                                          and self.wall_clock >= time_budget)

    def _optimizer_step(self) -> StepStats:
        """Fetch the batch of ``self.step`` and take one optimiser step; its statistics.

        Those of a curvature optimiser (``stats``), else the loss before the step and,
        data-parallel, the bytes and seconds of the gradients' all-reduce (one gradient, no
        products).
        """
        inputs, targets = self.batches[self.step]
        dtype, allow_tf32 = self.precision.step(self.curvature)
        gradient_mean = None
        if self.process_group is not None and not self.curvature:
            gradient_mean = GradientMean(self.model.parameters(), self.process_group)
        closure = make_closure(self.optimizer, self.model, self.loss_fn, inputs, targets,
                               forward=self.forward, autocast_dtype=dtype,
                               gradient_mean=gradient_mean)
        if self.curvature:
            with tf32(allow_tf32):
                self.optimizer.step(closure)
            return self.optimizer.stats
        with tf32(allow_tf32):
            stats = library_step(self.optimizer, self.entry, closure, self.step)
        if gradient_mean is None:
            return stats
        return dataclasses.replace(stats, allreduce_bytes=gradient_mean.bytes_reduced,
                                   allreduce_seconds=gradient_mean.seconds_reducing)

    def _first_compiled_step(self) -> StepStats:
        """The first step through ``torch.compile``; on failure restore, go eager, retry."""
        before = copy.deepcopy(self.state_dict())
        try:
            return self._optimizer_step()
        except Exception as error:  # any failure to trace, compile or differentiate
            self.load_state_dict(before)
            torch.compiler.reset()
            lines = str(error).strip().splitlines()
            self.compile_error = f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]
            self.forward, self.compiled = self.model, False
            warnings.warn(f"torch.compile failed at the first step ({self.compile_error}); "
                          "training continues with the eager model", RuntimeWarning,
                          stacklevel=3)
            return self._optimizer_step()

    def train_step(self) -> StepStats:
        """One optimiser step on the next batch; returns its :class:`~sfn_teach.optim.StepStats`."""
        self.model.train()
        if self._compile_pending:
            stats, seconds = timed(self._first_compiled_step, self.device)
            self._compile_pending = False
            self.compile_seconds += seconds
        else:
            stats, seconds = timed(self._optimizer_step, self.device)
            if self._steps_taken < self.warmup_steps:
                self.warmup_seconds += seconds
            else:
                self.wall_clock += seconds
                if stats.allreduce_seconds is not None:  # data-parallel
                    self.allreduce_seconds += stats.allreduce_seconds
            self._steps_taken += 1
        for name in COUNTS:
            self.counts[name] += stats[f"num_{name}"]
        self.counts["skipped"] += int(stats.skipped)
        self.step += 1
        self.last_stats = stats
        return stats

    def record(self) -> dict:
        """Evaluate on every split; the record of the current step (flat, JSON-ready).

        Fields: ``step``, ``epoch``; the times (s) ``wall_clock`` (training steps only, after
        warm-up), ``warmup_seconds``, ``compile_seconds``; ``grad_equivalents`` ``Σ_t c_t``,
        ``example_grad_equivalents`` ``Σ_t c_t B_t`` and the counts behind them
        (:data:`~sfn_teach.cost.COUNTS`: ``gradients``, ``hvps``, ``forward``,
        ``factor_updates``, ``preconditionings``), ``skipped_steps``;
        ``{train,val,test}_{loss,accuracy}`` (:func:`evaluate`);
        ``compiled`` (whether the training forward runs through ``torch.compile``) and
        ``compile_error`` (why it fell back, else ``None``); from the last step ``batch_loss``
        and the :data:`STAT_FIELDS` (``None`` where the optimiser has no such quantity, and at
        step 0); data-parallel, ``allreduce_bytes`` (of the last step), ``allreduce_seconds``
        (in the steps of ``wall_clock``) and ``allreduce_share`` (their fraction of
        ``wall_clock``), ``None`` in one process; with ``curvature_every``, the
        :data:`CURVATURE_FIELDS` (:func:`curvature_diagnostics` on the diagnostic batch at
        every ``curvature_every``-th record, ``None`` at the others). Each call counts in
        ``num_records`` (saved in :meth:`state_dict`).
        """
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "wall_clock": self.wall_clock,
            "warmup_seconds": self.warmup_seconds,
            "compile_seconds": self.compile_seconds,
            "grad_equivalents": self.grad_equivalents,
            "example_grad_equivalents": self.example_grad_equivalents,
            **{name: self.counts[name] for name in COUNTS},
            "skipped_steps": self.counts["skipped"],
        }
        for name in SPLITS:
            metrics = evaluate(
                self.model, self.loss_fn, self.dataset.split(name), self.eval_batch_size
            )
            record[f"{name}_loss"] = metrics["loss"]
            record[f"{name}_accuracy"] = metrics["accuracy"]
        record["compiled"], record["compile_error"] = self.compiled, self.compile_error
        record["batch_loss"] = self.last_stats.loss
        record.update({field: self.last_stats[field] for field in STAT_FIELDS})
        if self.curvature_every is not None:
            diagnose = self.num_records % self.curvature_every == 0
            record.update(curvature_diagnostics(self.model, self.loss_fn, *self.curvature_batch,
                                                self.optimizer)
                          if diagnose else dict.fromkeys(CURVATURE_FIELDS))
        parallel = self.process_group is not None
        record["allreduce_bytes"] = self.last_stats.allreduce_bytes
        record["allreduce_seconds"] = self.allreduce_seconds if parallel else None
        record["allreduce_share"] = (self.allreduce_seconds / self.wall_clock
                                     if parallel and self.wall_clock > 0 else None)
        self.num_records += 1
        return record

    def run(self, num_steps: int, eval_every: int, on_record=None, progress=True, desc=None,
            time_budget: float | None = None):
        """Train until step ``num_steps``, recording at step 0 and every ``eval_every`` steps.

        With ``time_budget`` (s of training time), training stops earlier, after the first step
        at which ``wall_clock`` reaches it (:meth:`finished`; how many steps that is depends
        on the machine). The last step is always recorded. ``on_record(record)`` is called
        after each record (the benchmark runner writes and checkpoints there); training
        resumes from ``self.step``, and step 0 is recorded only if nothing has been.
        ``progress`` shows a tqdm bar (a widget in notebooks). Returns the records made by
        this call.
        """
        if time_budget is not None:  # s of training time
            real("time_budget", time_budget, 0.0, low_open=True)
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
            done = self._agreed(self.finished(num_steps, time_budget), time_budget)
            while not done:
                stats = self.train_step()
                bar.update(1)
                done = self._agreed(self.finished(num_steps, time_budget), time_budget)
                if self.step % eval_every == 0 or done:
                    emit()
                    bar.set_postfix(loss=f"{records[-1]['train_loss']:.4g}", refresh=False)
                elif math.isfinite(stats.loss):
                    bar.set_postfix(batch_loss=f"{stats.loss:.4g}", refresh=False)
        return records

    def _agreed(self, done: bool, time_budget: float | None) -> bool:
        """``done`` as rank 0 sees it, on every rank: data-parallel under a time budget the
        ranks' clocks differ, but they must stop at the same step (one broadcast per step)."""
        if self.process_group is None or time_budget is None:
            return done
        flag = torch.tensor([float(done)], device=self.device)
        dist.broadcast(flag, dist.get_global_rank(self.process_group, 0), self.process_group)
        return bool(flag.item())

    def state_dict(self) -> dict:
        """Model, optimiser, random generators and loop position (weights_only-loadable)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "step": self.step,
            "num_records": self.num_records,
            "wall_clock": self.wall_clock,
            "warmup_seconds": self.warmup_seconds,
            "compile_seconds": self.compile_seconds,
            "allreduce_seconds": self.allreduce_seconds,
            "counts": dict(self.counts),
            "last_stats": {field: self.last_stats[field]
                           for field in ("loss", "allreduce_bytes", *STAT_FIELDS)},
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
        self.wall_clock = state["wall_clock"]
        # checkpoints from before K-FAC's factor work was counted lack those counts (0 but
        # for K-FAC)
        self.counts = {**dict.fromkeys(self.counts, 0), **state["counts"]}
        # checkpoints written before warm-up accounting counted every step in wall_clock
        self.warmup_seconds = state.get("warmup_seconds", 0.0)
        self.compile_seconds = state.get("compile_seconds", 0.0)
        self.allreduce_seconds = state.get("allreduce_seconds", 0.0)
        self.last_stats = StepStats(**state["last_stats"])
