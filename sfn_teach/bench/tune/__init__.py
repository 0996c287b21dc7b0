"""The paper's tuning protocol on Ray Tune: every optimiser tuned by ASHA under the same budget.

    python -m sfn_teach.bench tune benchmarks/digits_tune.toml [--address ADDR] [--out DIR]
                                                               [--resume] [--fast]
    result = tune_benchmark("benchmarks/digits_tune.toml", "runs/digits_tune")
    plot_asha(result)                       # which trials ASHA stopped, and when

Ray is an optional dependency (``pip install -e ".[tune]"``); it is imported only when tuning
starts (:func:`~.backend.import_ray_tune`).

**Protocol** (the paper's). Each optimiser of the config is tuned on its own, in one Ray Tune
experiment, with the same budget as every other: ``num_samples`` configurations drawn from its
search space (:mod:`.space`), each trained by a *trial* for at most ``time_budget`` seconds of
training time. A trial is one run of the benchmark runner (:func:`sfn_teach.bench.run_one`,
seed ``seed``) in its own run directory, with ``train.time_budget = tune.time_budget`` (the
config's step budget stays the cap), and reports every record to Ray Tune. The run itself
stops after the first step at which its training time reaches the budget and records that
step, so no trial overruns its budget by more than one step, however far apart its
evaluations are. The ASHA scheduler (asynchronous successive halving) compares trials on
``<metric_split>_loss`` (minimised) at *rungs* of training time ``t_k = grace_period · η^k``
(``η`` = ``reduction_factor``, up to ``time_budget``): a trial that reaches a rung with a loss
outside the best ``1/η`` of those recorded there so far is stopped. Training time is the
records' ``wall_clock`` (training steps only: no evaluation, checkpoints or process start),
and trials report only at evaluations, so make ``train.evals`` frequent enough for the
rungs. A trial whose optimiser gives up (:class:`sfn_teach.optim.NonFiniteStepError`)
reports an infinite loss and ends; the tuning goes on. The best configuration of an
optimiser is the trial with the lowest loss at its last report. Each best configuration is
then re-run with :func:`sfn_teach.bench.run_benchmark` over ``reeval_seeds`` fresh seeds
``seed + 1, …, seed + N`` (not the seed the search selected on) under the same time budget
as the trials, which writes the usual table and figures (``tune.md`` states the budget). How
many steps fit in a time budget depends on the machine and its load, so neither a trial nor a
re-run is reproducible step for step.

**Modules.** :mod:`.space` (the search spaces, a trial's config), :mod:`.settings` (the
``[tune]`` table), :mod:`.backend` (Ray Tune: where it runs, one trial, one optimiser's
experiment), :mod:`.orchestrator` (:func:`tune_benchmark`: the whole protocol and the output
directory), :mod:`.report` (:func:`load_tuning`, the table, :func:`plot_asha`), :mod:`.archive`
(the results in one small file, ``tuning.json``, read back without Ray). Every public
name of them can be imported from here.
"""

from .archive import (
    ARCHIVE_FILE,
    KEPT_FIELDS,
    load_tuning_archive,
    write_tuning_archive,
)
from .backend import (
    INSTALL,
    TRIAL_ENDS,
    ClusterError,
    RayNotInstalledError,
    check_reachable,
    check_resources,
    import_ray_tune,
    ray_address,
)
from .orchestrator import tune_benchmark
from .report import TuneResult, format_tuning_table, load_tuning, plot_asha, write_tuning_report
from .settings import FAST_SETTINGS, SETTINGS, TuneSettings, tune_settings
from .space import (
    ADAM_BETAS,
    DEFAULT_SPACES,
    IMAGE_BATCH_SIZES,
    LAMBDA_SPACE,
    UNADAPTIVE_SPACE,
    Distribution,
    default_space,
    parse_distribution,
    tuned_raw,
)

__all__ = [
    "ADAM_BETAS", "ARCHIVE_FILE", "DEFAULT_SPACES", "FAST_SETTINGS", "IMAGE_BATCH_SIZES",
    "INSTALL", "KEPT_FIELDS", "LAMBDA_SPACE", "SETTINGS", "TRIAL_ENDS", "UNADAPTIVE_SPACE",
    "ClusterError", "Distribution", "RayNotInstalledError", "TuneResult", "TuneSettings",
    "check_reachable", "check_resources", "default_space", "format_tuning_table",
    "import_ray_tune", "load_tuning", "load_tuning_archive", "parse_distribution", "plot_asha",
    "ray_address", "tune_benchmark", "tune_settings", "tuned_raw", "write_tuning_archive",
    "write_tuning_report",
]
