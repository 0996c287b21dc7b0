"""The summary table over seeds and the figures of a benchmark's records.

Statistics over seeds are the **median** and the **range** (min–max), written
``median [min–max]``. For each optimiser the table gives, over its seeds, the final test loss
and accuracy, the training time (training steps only) and the work, and the time and work until
the first evaluation at which the target split's loss is at most the target
(``report.target_loss``). Work is given twice: in gradient-equivalents per step
(``grad_equivalents``, ``Σ_t c_t``: a step costs the same on any batch) and per example
(``example_grad_equivalents``, ``Σ_t c_t B_t`` over the steps' batches ``B_t``: one gradient on
one example is 1, so optimisers with different batch sizes compare fairly). A run that never
reaches the target counts as ∞ there, so the median is ∞ unless more than half of the seeds
reach it; the ``reached`` column says how many did. No interpolation between evaluations:
the times are those of the evaluation. Time kept out of the training time — the warm-up steps
and the compiling first step of each (re)start (:mod:`sfn_teach.train`) — is summarised too
(``warmup_seconds``, ``compile_seconds``), with how many runs trained compiled and why any fell
back to eager; ``summary.md`` shows them below the table when there are any.

Curves are drawn per optimiser as the median over seeds at each evaluation (the ``x`` value
too, e.g. the median wall-clock), with the min–max band of the ``y`` values; an optimiser
keeps its colour in every figure. Records with curvature diagnostics (``train.curvature_every``)
get one more figure, ``curvature.png`` (:func:`plot_curvature`): how close the series and the
gradient are to the exact saddle-free Newton direction, and ``V`` next to ``λ_max(H²)``.
Figures are :class:`matplotlib.figure.Figure` objects (no pyplot state), shown inline by
Jupyter.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "AXES", "FIGURES", "LOG_AXES", "STATS", "format_excluded_time", "format_table",
    "plot_curvature", "plot_curves", "plot_optimizer_stats", "report_figures", "summarise",
    "write_report"
]

AXES = {
    "step": "step",
    "epoch": "epoch",
    "wall_clock": "wall-clock of training steps (s)",
    "grad_equivalents": "gradient-equivalents",
    "example_grad_equivalents": "per-example gradient-equivalents",
}
STATS = {"damping": "damping λ", "scale": "scale V", "alpha": "α", "mu": "μ"}


def _runs(records):
    """``{optimiser: [records of seed 1, records of seed 2, …]}`` in first-seen order."""
    runs = {}
    for record in records:
        runs.setdefault(record["optimizer"], {}).setdefault(record["seed"], []).append(record)
    return {name: list(seeds.values()) for name, seeds in runs.items()}


def _spread(values):
    """``{"median", "min", "max"}`` of a list of numbers (``math.inf`` allowed)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _first_reaching(run, key, target):
    """The first record of ``run`` whose ``key`` is at most ``target``, or ``None``."""
    return next((r for r in run if r[key] is not None and r[key] <= target), None)


def summarise(records, target_loss, target_split="val") -> list[dict]:
    """One row per optimiser: medians and ranges over seeds (see the module docstring)."""
    rows = []
    key = f"{target_split}_loss"
    for name, runs in _runs(records).items():
        finals = [run[-1] for run in runs]
        hits = [_first_reaching(run, key, target_loss) for run in runs]
        rows.append({
            "optimizer": name,
            "seeds": len(runs),
            "steps": _spread([r["step"] for r in finals]),
            "test_loss": _spread([r["test_loss"] for r in finals]),
            "test_accuracy": _spread([r["test_accuracy"] for r in finals]),
            "wall_clock": _spread([r["wall_clock"] for r in finals]),
            "grad_equivalents": _spread([r["grad_equivalents"] for r in finals]),
            "example_grad_equivalents": _spread([r["example_grad_equivalents"] for r in finals]),
            "time_to_target": _spread([h["wall_clock"] if h else math.inf for h in hits]),
            "grad_equivalents_to_target": _spread(
                [h["grad_equivalents"] if h else math.inf for h in hits]),
            "example_grad_equivalents_to_target": _spread(
                [h["example_grad_equivalents"] if h else math.inf for h in hits]),
            "reached": sum(h is not None for h in hits),
            # (records written before warm-up accounting have none of these: nothing excluded)
            "warmup_seconds": _spread([r.get("warmup_seconds", 0.0) for r in finals]),
            "compile_seconds": _spread([r.get("compile_seconds", 0.0) for r in finals]),
            "compiled": sum(bool(r.get("compiled")) for r in finals),
            "compile_errors": sorted({r["compile_error"] for r in finals
                                      if r.get("compile_error")}),
        })
    return rows


def format_excluded_time(rows) -> str:
    """The time kept out of the training time, per optimiser, as Markdown ("" if none)."""
    if not any(row["warmup_seconds"]["max"] or row["compile_seconds"]["max"] for row in rows):
        return ""
    lines = ["| optimiser | warm-up (s) | compilation (s) | runs compiled | compile fell back |",
             "|---|---|---|---|---|"]
    for row in rows:
        fell_back = "; ".join(row["compile_errors"]) or "–"
        lines.append(f"| {row['optimizer']} | {_cell(row['warmup_seconds'], 3)} | "
                     f"{_cell(row['compile_seconds'], 3)} | {row['compiled']}/{row['seeds']} | "
                     f"{fell_back} |")
    return "\n".join(lines)


def _cell(spread, digits):
    def number(x):
        return "∞" if math.isinf(x) else f"{x:.{digits}g}"

    if spread["min"] == spread["max"]:
        return number(spread["median"])
    return f"{number(spread['median'])} [{number(spread['min'])}–{number(spread['max'])}]"


def format_table(rows, target_loss, target_split="val") -> str:
    """The summary rows as a Markdown table (``median [min–max]`` over seeds)."""
    target = f"{target_split} loss ≤ {target_loss:g}"
    header = ["optimiser", "seeds", "steps", "final test loss", "final test accuracy",
              "train time (s)", "grad-equivalents", "per-example grad-equiv.",
              f"time to {target} (s)", "grad-equiv. to target",
              "per-example grad-equiv. to target", "reached"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["optimizer"], str(row["seeds"]), _cell(row["steps"], 6),
                 _cell(row["test_loss"], 3), _cell(row["test_accuracy"], 3),
                 _cell(row["wall_clock"], 3), _cell(row["grad_equivalents"], 3),
                 _cell(row["example_grad_equivalents"], 3), _cell(row["time_to_target"], 3),
                 _cell(row["grad_equivalents_to_target"], 3),
                 _cell(row["example_grad_equivalents_to_target"], 3),
                 f"{row['reached']}/{row['seeds']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median_curve(runs, x, y):
    """Per evaluation index: median ``x``, and median, min and max ``y`` over the seeds."""
    length = min(len(run) for run in runs)
    points = []
    for i in range(length):
        ys = [run[i][y] for run in runs]
        if any(v is None for v in ys):
            continue
        points.append((statistics.median(run[i][x] for run in runs),
                       statistics.median(ys), min(ys), max(ys)))
    return [list(column) for column in zip(*points)] if points else None


def _draw_median(ax, runs, x, y, label, **style) -> bool:
    """Draw the median curve of ``y`` against ``x`` over seeds with its min–max band; whether
    there was anything to draw."""
    curve = _median_curve(runs, x, y)
    if curve is None:
        return False
    px, median, low, high = curve
    (line,) = ax.plot(px, median, label=label, **style)
    ax.fill_between(px, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    return True


LOG_AXES = ("wall_clock", "grad_equivalents", "example_grad_equivalents")
"""The x axes that :func:`plot_curves` draws on a log scale by default: costs."""


def plot_curves(records, y="test_loss", xs=("step", "wall_clock", "grad_equivalents"),
                log_y=None, log_x=LOG_AXES) -> Figure:
    """``y`` against each of ``xs``, one panel each: median over seeds and min–max band.

    The ``xs`` are record fields, e.g. those of :data:`AXES` (``"example_grad_equivalents"``
    for the work per example). ``log_y`` defaults to a log scale for losses. The ``xs`` named
    in ``log_x`` get a log axis, since costs of different optimisers differ by orders of
    magnitude (the point at ``x = 0``, step 0, is then not drawn). Optimisers for which ``y``
    is never defined are left out.
    """
    log_y = y.endswith("loss") if log_y is None else log_y
    figure = Figure(figsize=(4.2 * len(xs), 3.4), layout="constrained")
    axes = figure.subplots(1, len(xs), squeeze=False)[0]
    for index, (name, runs) in enumerate(_runs(records).items()):
        for ax, x in zip(axes, xs):
            _draw_median(ax, runs, x, y, name, color=f"C{index}")
    for ax, x in zip(axes, xs):
        ax.set_xlabel(AXES.get(x, x))
        ax.set_ylabel(y.replace("_", " "))
        if log_y:
            ax.set_yscale("log")
        if x in log_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # no crowded minor labels
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return figure


def plot_optimizer_stats(records, x="step") -> Figure:
    """λ, V, α and μ of the last step at each evaluation, per optimiser that has them.

    Median over seeds with min–max band; λ and V on a log scale.
    """
    figure = Figure(figsize=(8.4, 6.2), layout="constrained")
    axes = figure.subplots(2, 2).ravel()
    for ax, (key, label) in zip(axes, STATS.items()):
        for index, (name, runs) in enumerate(_runs(records).items()):
            _draw_median(ax, runs, x, key, name, color=f"C{index}", marker=".")
        if key in ("damping", "scale") and ax.lines:
            ax.set_yscale("log")
        ax.set_xlabel(AXES.get(x, x))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return figure


def plot_curvature(records, x="step") -> Figure:
    """The curvature diagnostics (``train.curvature_every``) against ``x``, per optimiser.

    Left: ``cos(Δ_series, Δ_exact)`` (solid; SeriesSFN) and ``cos(g, Δ_exact)`` (dashed), with
    ``Δ_exact = (|H| + λI)⁻¹g`` on the diagnostic batch: how much closer to exact saddle-free
    Newton the series gets than the gradient. Right, on a log scale: the series' ``V`` (solid)
    next to ``λ_max(H²) = max_i h_i²`` of the dense Hessian (dashed); the series converges
    where ``h² ≤ 2V`` and resolves ``|h| ≳ √(V/K)`` only. Median over seeds with min–max band;
    an optimiser's colour is its colour in every figure (legend on the right, for the
    optimisers drawn).
    """
    figure = Figure(figsize=(12.0, 3.8), layout="constrained")
    cosines, scales = figure.subplots(1, 2)
    panels = ((cosines, "cos_series_exact", "cos_gradient_exact", "cos(·, Δ_exact)",
               ("cos(Δ_series, Δ_exact)", "cos(g, Δ_exact)")),
              (scales, "scale", "lambda_max_squared", "V and λ_max(H²)",
               ("V (series)", "λ_max(H²) (dense H)")))
    drawn = {}
    for ax, solid, dashed, label, styles in panels:
        for index, (name, runs) in enumerate(_runs(records).items()):
            for y, linestyle in ((solid, "-"), (dashed, "--")):
                if _draw_median(ax, runs, x, y, None, color=f"C{index}", linestyle=linestyle,
                                marker="."):
                    drawn[name] = index
        if ax is scales and ax.lines:
            ax.set_yscale("log")
        ax.set_xlabel(AXES.get(x, x))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(handles=[Line2D([], [], color="k", linestyle=linestyle, label=style)
                           for linestyle, style in zip(("-", "--"), styles)], fontsize="small")
    figure.legend(handles=[Line2D([], [], color=f"C{index}", label=name)
                           for name, index in sorted(drawn.items(), key=lambda item: item[1])],
                  loc="outside right upper", fontsize="small")
    return figure


FIGURES = {
    "train_loss.png": lambda records: plot_curves(records, "train_loss"),
    "test_loss.png": lambda records: plot_curves(records, "test_loss"),
    "test_accuracy.png": lambda records: plot_curves(records, "test_accuracy"),
    "optimizer_stats.png": plot_optimizer_stats,
}
"""The figures :func:`write_report` always saves, by file name."""


def report_figures(records) -> dict:
    """The figures :func:`write_report` saves for ``records``, by file name: the
    :data:`FIGURES`, and ``curvature.png`` (:func:`plot_curvature`) when some record holds
    curvature diagnostics."""
    if any(record.get("lambda_max_squared") is not None for record in records):
        return {**FIGURES, "curvature.png": plot_curvature}
    return FIGURES


def _finite_or_none(rows):
    """The rows with ∞ (target never reached) as ``None``, for strict JSON."""
    return [
        {key: {k: None if math.isinf(v) else v for k, v in value.items()}
         if isinstance(value, dict) else value for key, value in row.items()}
        for row in rows
    ]


def write_report(out_dir, config, records, machine="", log=print) -> list[dict]:
    """Write ``summary.md``, ``summary.json`` and the figures (:func:`report_figures`) into
    ``out_dir``.

    ``config`` is the benchmark's :class:`~sfn_teach.bench.config.BenchmarkConfig` (for its
    name and target); ``machine`` says where the times were measured. Prints the table through
    ``log`` and returns the summary rows (:func:`summarise`).
    """
    out_dir = Path(out_dir)
    if not records:
        raise FileNotFoundError(f"{out_dir} holds no records yet")
    rows = summarise(records, config.target_loss, config.target_split)
    table = format_table(rows, config.target_loss, config.target_split)
    excluded = format_excluded_time(rows)
    if excluded:
        excluded = f"\nNot in the training time (first steps after each start):\n\n{excluded}\n"
    (out_dir / "summary.md").write_text(
        f"# {config.name}\n\nMedian [min–max] over seeds; times are training steps only"
        f"{', measured on ' + machine if machine else ''}.\n\n{table}\n{excluded}"
    )
    (out_dir / "summary.json").write_text(json.dumps(_finite_or_none(rows), indent=2) + "\n")
    figures = report_figures(records)
    for name, make in figures.items():
        make(records).savefig(out_dir / name, dpi=110)
    log(table)
    log(f"report: {out_dir / 'summary.md'} and {', '.join(figures)} in {out_dir}")
    return rows
