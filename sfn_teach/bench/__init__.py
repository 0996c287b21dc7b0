"""The benchmark runner: configs, resumable runs, the summary table and figures.

From Python (e.g. a notebook)::

    from sfn_teach.bench import run_benchmark, load_benchmark, plot_curves, plot_curvature
    result = run_benchmark("benchmarks/digits_mlp.toml", "runs/digits_mlp", fast=True)
    print(result.table)                        # median [min–max] over seeds
    plot_curves(result.records, "test_loss")   # a matplotlib Figure
    plot_curves(result.records, xs=("example_grad_equivalents",))   # against work per example
    plot_curvature(result.records)             # with [train] curvature_every (small models)
    config, records = load_benchmark("runs/digits_mlp")   # read a run directory back

    # one run by hand, e.g. from a tuner: a config with a field changed, its data, one seed
    config = validate_config(apply_overrides(read_config(path), {"optimizers[0].lr": 0.1}))
    records = run_one(config, config.optimizers[0], 0, load_dataset(config), "runs/x",
                      on_record=report)

``run_benchmark(config, out_dir, *, fast, resume, progress, log, warn, on_record,
process_group)`` takes a config file, a raw dict or a validated config; the fields of a record
are listed in :mod:`sfn_teach.bench.runner`. A run folder that cannot be written, or whose
``config.json`` or records are damaged beyond what a checkpoint can remake, raises
:class:`RunDirectoryError` naming the file.

    # the paper's tuning protocol: ASHA on Ray Tune for every optimiser, the bests re-run
    tuning = tune_benchmark("benchmarks/digits_tune.toml", "runs/digits_tune", fast=True)
    print(tuning.table)                        # how the trials ended, the best settings
    plot_asha(tuning)                          # which trials ASHA stopped, and when

From the shell: ``python -m sfn_teach.bench --help`` (:mod:`sfn_teach.bench.__main__`); one
run data-parallel: ``torchrun --standalone --nproc-per-node N -m sfn_teach.bench run CONFIG``.

Modules: :mod:`.config` (reading and validating configs), :mod:`.fields` (the checks of one
field, shared with the tuner), :mod:`.overrides` (setting fields by dotted paths, ``--set``),
:mod:`.runner` (training with checkpoints and resume, data parallelism), :mod:`.rundir` (the
run directory: ``config.json``, records), :mod:`.report` (table and figures from records),
:mod:`.tune` (tuning with Ray Tune, an optional dependency).
"""

from .config import (
    DTYPES,
    MODELS,
    BenchmarkConfig,
    OptimizerSpec,
    build_model,
    load_config,
    read_config,
    validate_config,
)
from .fields import ConfigError
from .overrides import apply_overrides
from .report import (
    format_table,
    plot_curvature,
    plot_curves,
    plot_optimizer_stats,
    summarise,
    write_report,
)
from .rundir import RunDirectoryError, read_records
from .runner import (
    BenchmarkResult,
    load_benchmark,
    load_dataset,
    report_benchmark,
    run_benchmark,
    run_id,
    run_one,
)
from .tune import (
    RayNotInstalledError,
    TuneResult,
    load_tuning,
    load_tuning_archive,
    plot_asha,
    tune_benchmark,
    tune_settings,
)

__all__ = [
    "DTYPES", "MODELS", "BenchmarkConfig", "BenchmarkResult", "ConfigError", "OptimizerSpec",
    "RayNotInstalledError", "RunDirectoryError", "TuneResult", "apply_overrides", "build_model",
    "format_table", "load_benchmark", "load_config", "load_dataset", "load_tuning",
    "load_tuning_archive", "plot_asha", "plot_curvature", "plot_curves", "plot_optimizer_stats",
    "read_config", "read_records", "report_benchmark", "run_benchmark", "run_id", "run_one",
    "summarise", "tune_benchmark", "tune_settings", "validate_config", "write_report",
]
