"""The benchmark runner: configs, resumable runs, the summary table and figures.

From Python (e.g. a notebook)::

    from sfn_teach.bench import run_benchmark, load_benchmark, plot_curves
    result = run_benchmark("benchmarks/digits_mlp.toml", "runs/digits_mlp", fast=True)
    print(result.table)                        # median [min–max] over seeds
    plot_curves(result.records, "test_loss")   # a matplotlib Figure
    config, records = load_benchmark("runs/digits_mlp")   # read a run directory back

From the shell: ``python -m sfn_teach.bench --help`` (:mod:`sfn_teach.bench.__main__`).

Modules: :mod:`.config` (reading and validating configs), :mod:`.runner` (the run directory,
training with checkpoints and resume), :mod:`.report` (table and figures from records).
"""

from .config import (
    DTYPES,
    MODELS,
    BenchmarkConfig,
    ConfigError,
    OptimizerSpec,
    build_model,
    load_config,
    validate_config,
)
from .report import format_table, plot_curves, plot_optimizer_stats, summarise, write_report
from .runner import (
    BenchmarkResult,
    load_benchmark,
    read_records,
    report_benchmark,
    run_benchmark,
    run_id,
    run_one,
)

__all__ = [
    "DTYPES", "MODELS", "BenchmarkConfig", "BenchmarkResult", "ConfigError", "OptimizerSpec",
    "build_model", "format_table", "load_benchmark", "load_config", "plot_curves",
    "plot_optimizer_stats", "read_records", "report_benchmark", "run_benchmark", "run_id",
    "run_one", "summarise", "validate_config", "write_report",
]
