"""A tuning directory read back: every trial and the bests, their table and the ASHA figure.

:func:`load_tuning` reads what :func:`sfn_teach.bench.tune.tune_benchmark` wrote
(``config.json``, ``trials.json``, ``best.json``, each trial's records and the re-runs'
benchmark directory ``best/``) as a :class:`TuneResult`; :func:`write_tuning_report` writes
``tune.md`` (the budget, how the trials ended, the bests and the re-runs' table) and
``asha.png`` (:func:`plot_asha`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib import ticker
from matplotlib.figure import Figure

from ..config import validate_config
from ..report import format_table, summarise
from ..rundir import read_records, read_run_config
from ..runner import BenchmarkResult, load_benchmark
from .backend import TRIAL_ENDS
from .settings import TuneSettings, tune_settings

__all__ = ["PANELS_PER_ROW", "TuneResult", "format_tuning_table", "load_tuning", "plot_asha",
           "write_tuning_report"]

#: the ASHA figure's panels per row
PANELS_PER_ROW = 4


@dataclass(frozen=True)
class TuneResult:
    """A tuning directory, read back: settings, every trial, the bests and their re-runs."""

    out_dir: Path
    config: object  # the BenchmarkConfig that was tuned
    settings: TuneSettings
    trials: list  # one dict per trial (trials.json), with its "records"
    best: dict  # optimiser name -> the best trial's summary and its optimiser table
    rerun: BenchmarkResult | None  # None when no optimiser had a finite best loss
    machine: str = ""  # where it ran: platform, torch, threads (as the run folders record it)

    @property
    def table(self) -> str:
        """The tuning summary as a Markdown table (:func:`format_tuning_table`)."""
        return format_tuning_table(self.trials, self.best, self.settings)


def load_tuning(out_dir) -> TuneResult:
    """The :class:`TuneResult` of a finished tuning directory (each trial with its records)."""
    out_dir = Path(out_dir)
    stored = read_run_config(out_dir)
    config = validate_config(stored["config"], stored["name"])
    settings = tune_settings(config, stored["fast"])
    slugs = {spec.name: spec.slug for spec in config.optimizers}
    trials = json.loads((out_dir / "trials.json").read_text())
    for trial in trials:
        trial["metric"] = math.inf if trial["metric"] is None else trial["metric"]
        path = out_dir / "trials" / slugs[trial["optimizer"]] / trial["trial_id"] / "records.jsonl"
        trial["records"] = read_records(path) if path.exists() else []
    best = json.loads((out_dir / "best.json").read_text())
    rerun = None
    if (out_dir / "best" / "config.json").exists():
        rerun_config, records = load_benchmark(out_dir / "best")
        rerun = BenchmarkResult(out_dir / "best", rerun_config, records, summarise(
            records, rerun_config.target_loss, rerun_config.target_split))
    return TuneResult(out_dir, config, settings, trials, best, rerun, stored.get("machine", ""))


def format_tuning_table(trials, best, settings) -> str:
    """Per optimiser: how its trials ended, the best loss and the best hyperparameters."""
    lines = [f"| optimiser | trials | {' | '.join(TRIAL_ENDS)} | best {settings.metric} | "
             "best hyperparameters |", "|" + "---|" * (len(TRIAL_ENDS) + 4)]
    for name in dict.fromkeys(t["optimizer"] for t in trials):
        own = [t for t in trials if t["optimizer"] == name]
        ends = " | ".join(str(sum(t["end"] == end for t in own)) for end in TRIAL_ENDS)
        if name in best:
            params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                               for k, v in best[name]["params"].items())
            found = f"{best[name]['metric']:.4g} | {params}"
        else:
            found = "– | none finite"
        lines.append(f"| {name} | {len(own)} | {ends} | {found} |")
    return "\n".join(lines)


def plot_asha(result: TuneResult) -> Figure:
    """The ASHA rungs: each trial's loss against training time, one panel per optimiser.

    Trials that ASHA stopped early end in a grey ×, the others in a dot; the best trial is
    drawn thick; dashed lines are the rungs, the solid line the time budget. The title counts
    how the trials ended (diverged trials have no finite loss to draw). At most
    :data:`PANELS_PER_ROW` panels a row.
    """
    from matplotlib.lines import Line2D

    settings = result.settings
    names = list(dict.fromkeys(t["optimizer"] for t in result.trials))
    columns = min(len(names), PANELS_PER_ROW)
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for index, (ax, name) in enumerate(zip(axes, names)):
        own = [t for t in result.trials if t["optimizer"] == name]
        best_id = result.best.get(name, {}).get("trial_id")
        for trial in own:
            points = [(r["wall_clock"], r[settings.metric]) for r in trial["records"]
                      if r["step"] > 0 and math.isfinite(r[settings.metric])]
            if not points:
                continue
            x, y = zip(*points)
            stopped = trial["end"] == "stopped"
            colour = "0.6" if stopped else f"C{index}"
            width = 2.6 if trial["trial_id"] == best_id else 1.0
            ax.plot(x, y, color=colour, linewidth=width, alpha=0.9)
            ax.plot(x[-1], y[-1], "x" if stopped else "o", color=colour, markersize=6)
        for rung in settings.rungs:
            ax.axvline(rung, color="k", linestyle="--", linewidth=0.7, alpha=0.6)
        ax.axvline(settings.time_budget, color="k", linewidth=1.0)
        ends = ", ".join(f"{n} {end}" for end in TRIAL_ENDS
                         if (n := sum(t["end"] == end for t in own)))
        ax.set_title(f"{name}\n{len(own)} trials: {ends}", fontsize="medium")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel(settings.metric.replace("_", " "))
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())  # no crowded minor labels
        ax.grid(alpha=0.3)
    axes[0].legend(handles=[
        Line2D([], [], color="0.6", marker="x", label="stopped early by ASHA"),
        Line2D([], [], color="C0", marker="o", label="ran on (thick: best)"),
        Line2D([], [], color="k", linestyle="--", linewidth=0.7, label="rungs"),
        Line2D([], [], color="k", linewidth=1.0, label="time budget"),
    ], fontsize="small")
    return figure


def write_tuning_report(result: TuneResult) -> None:
    """Write ``tune.md`` (budget, trials, bests, the re-runs' table) and ``asha.png``."""
    settings, out_dir, machine = result.settings, result.out_dir, result.machine
    rerun = ""
    if result.rerun is not None:
        config = result.rerun.config
        table = format_table(result.rerun.summary, config.target_loss, config.target_split)
        rerun = (f"\n## The best settings re-run over seeds {list(config.seeds)}\n\n"
                 f"Each run trained for at most {config.time_budget:g} s of training time, the "
                 f"trials' budget (or until its last step, if sooner; how many steps fit "
                 f"depends on the machine). Median [min–max] over seeds "
                 f"({out_dir.name}/best).\n\n{table}\n")
    (out_dir / "tune.md").write_text(
        f"# Tuning {result.config.name}\n\nBudget of every optimiser: {settings.budget()}."
        f"\nTimes are training time, measured on {machine} (trials with "
        f"{settings.cpus_per_trial} CPU thread{'s' if settings.cpus_per_trial > 1 else ''} "
        "each).\n\n"
        f"{result.table}\n{rerun}\n![ASHA rungs](asha.png)\n")
    plot_asha(result).savefig(out_dir / "asha.png", dpi=110)
