"""Every optimiser tuned by ASHA on a plateau, read back and measured at the escape (notebook 05).

``benchmarks/plateau_tune.toml`` puts the digits' tanh MLP 64-16-16-10 next to the saddle
``θ = 0``: every parameter starts at ``a₀ = 0.01`` times PyTorch's default initialisation
(:class:`sfn_teach.models.MLP`'s ``init_scale``), so the outputs hardly depend on the input,
the loss sits at ``log C = log 10`` (``C`` classes) and the gradient of the first layer is
``O(a₀²)``. `bench tune` (:mod:`sfn_teach.bench.tune`) tunes each optimiser by ASHA under the
same budget and re-runs its best settings over fresh seeds with the same time cap; the tuning
takes minutes, and its archive (:func:`sfn_teach.bench.tune.load_tuning_archive`) is what the
notebook reads. Measured on the re-runs' records (one per evaluation):

- :func:`escape_steps`: the *escape*, the first evaluation at which ``L_split ≤ target`` (the
  config's report target: ``(log 10)/2``, as :data:`sfn_teach.plateaus.ESCAPE_FRACTION`), in
  steps; the report's table (:func:`sfn_teach.bench.summarise`) gives it in seconds and in
  gradient-equivalents;
- :func:`plot_escape`: the loss against steps, seconds of training and per-example
  gradient-equivalents (median and range over seeds), the plateau's level ``log C`` and the
  target drawn;
- :func:`start_curvature`: the gradient and the exact Hessian's eigenvalues at the start,
  what the series' filter acts on;
- :func:`series_steps`: a short run of a tuned optimiser from the plateau with a record at
  every step, for what the series sees there (``λ̂_max``, ``V``, ``½√(πV/K)``, ``λ``, ``α``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .bench import build_model, load_dataset, plot_curves, run_benchmark
from .bench.tune import tuned_raw
from .checks import integer
from .data import DATASETS
from .hvp import flatten
from .plateaus import flat_hessian
from .train import seed_everything

__all__ = ["XS", "escape_steps", "plot_escape", "series_steps", "start_curvature"]

XS = ("step", "wall_clock", "example_grad_equivalents")
"""The x axes of the comparison: steps, seconds of training, per-example gradient-equivalents."""


def escape_steps(records, target_loss: float, split: str = "val") -> dict:
    """Per optimiser (in the order of ``records``), the step of each seed's first record with
    ``<split>_loss ≤ target_loss`` (``math.inf`` if it never got there), in seed order."""
    key, steps = f"{split}_loss", {}
    for record in records:
        seeds = steps.setdefault(record["optimizer"], {})
        if seeds.get(record["seed"], math.inf) == math.inf:
            seeds[record["seed"]] = record["step"] if record[key] <= target_loss else math.inf
    return {name: list(seeds.values()) for name, seeds in steps.items()}


def plot_escape(result, y: str = "val_loss", xs=XS) -> Figure:
    """The re-runs of the tuning ``result`` (a :class:`sfn_teach.bench.tune.TuneResult`):
    ``y`` against each of ``xs`` (:func:`sfn_teach.bench.plot_curves`: median over seeds and
    min–max band), with the plateau's level ``log C`` (dotted) and the report's target, the
    escape (dashed).

    Every x axis is symmetric-logarithmic, linear up to its first evaluation after the start
    (the smallest positive ``x`` of the records), so the start, ``x = 0``, is drawn with the
    plateau that follows it however far the costs spread. Losses above ``3 log C`` (a
    diverging run) are cut off at the top.
    """
    config, records = result.rerun.config, result.rerun.records
    figure = plot_curves(records, y, xs=xs, log_x=())
    classes = DATASETS[config.task].num_classes
    for ax, x in zip(figure.axes, xs):
        ax.set_xscale("symlog", linthresh=min(r[x] for r in records if r[x] > 0))
        ax.set_xlim(left=0)
        ax.axhline(math.log(classes), color="k", linestyle=":", linewidth=0.9)
        ax.axhline(config.target_loss, color="k", linestyle="--", linewidth=0.9)
        ax.set_ylim(top=3 * math.log(classes))
    figure.axes[0].get_legend().remove()
    figure.legend(*figure.axes[0].get_legend_handles_labels(), loc="outside right upper",
                  fontsize="small")
    figure.axes[0].set_title(f"dotted: log {classes} (the plateau); dashed: "
                             f"{config.target_split} loss {config.target_loss:g} (escaped)",
                             fontsize="small", loc="left")
    return figure


def start_curvature(config, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, h)`` at the start ``θ₀`` of the benchmark ``config``'s run with ``seed`` (the
    runner's model: every generator seeded with ``seed``, then the model built), for the
    cross-entropy on the first ``train.batch_size`` training examples: the gradient ``g`` as
    one flat vector and the eigenvalues ``h`` (ascending) of the exact Hessian ``∇²L(θ₀)``
    (``eigvalsh`` of :func:`sfn_teach.plateaus.flat_hessian`)."""
    seed_everything(seed)
    model = build_model(config)
    inputs, targets = next(load_dataset(config, progress=False).train.chunks(config.batch_size))
    loss = F.cross_entropy(model(inputs), targets)
    gradient = flatten(torch.autograd.grad(loss, model.parameters()))
    hessian = flat_hessian(model, F.cross_entropy, inputs, targets)
    return gradient, torch.linalg.eigvalsh(hessian)


def series_steps(result, name: str, steps: int, out_dir, seed: int | None = None) -> list:
    """The records of optimiser ``name`` of the tuning ``result`` with its best settings,
    trained for ``steps`` steps from the plateau with a record after every step (seed
    ``seed``, default the first re-run seed), into the run directory ``out_dir``.

    Each record holds what the step saw: for the series ``scale`` (``V``), ``lambda_max``
    (``λ̂_max``, its Ritz estimate of ``max|h|``), ``implicit_damping`` (``½√(πV/K)``: below
    it the series' filter is flat), ``damping`` (``λ``), ``alpha`` and ``mu``.
    """
    integer("steps", steps, 1)
    best = result.best[name]
    seed = result.settings.reeval_seed_list[0] if seed is None else seed
    raw = tuned_raw(result.config.raw, {best["index"]: best["params"]}, [seed])
    raw["train"] = {**raw["train"], "steps": steps, "evals": steps}
    raw["train"].pop("time_budget", None)
    return run_benchmark(raw, Path(out_dir), fast=False, resume=True, progress=False).records
