"""The paper's tuning protocol on Ray Tune: every optimiser tuned by ASHA under the same budget.

    python -m sfn_teach.bench tune benchmarks/digits_tune.toml [--address ADDR] [--out DIR]
                                                               [--resume] [--fast]
    result = tune_benchmark("benchmarks/digits_tune.toml", "runs/digits_tune")
    plot_asha(result)                       # which trials ASHA stopped, and when

Ray is an optional dependency (``pip install -e ".[tune]"``); it is imported only here, when
tuning starts.

**Protocol** (the paper's). Each optimiser of the config is tuned on its own, in one Ray Tune
experiment, with the same budget as every other: ``num_samples`` configurations drawn from its
search space (below), each trained by a *trial* for at most ``time_budget`` seconds of
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

**Search spaces.** Written in a config like the defaults here (the paper's)::

    series_sfn    num_terms ~ U{1..20}; acceleration_order ~ U{0..⌊(K−1)/2⌋} given the trial's K;
                  damping (λ₀) ~ logU[1e-8, 1]; unadaptive also lr (α) ~ logU[1e-3, 5] and
                  momentum (μ) ~ logU[1e-3, 0.95]
    sgd           lr ~ logU[1e-6, 1e-1]
    adam          lr ~ logU[1e-6, 1]; eps ~ logU[1e-10, 10]; one_minus_beta1 (1 − β₁) ~
                  logU[1e-3, 1]; one_minus_beta2 (1 − β₂) ~ logU[1e-4, 1]
    exact_sfn,    damping (λ₀) ~ logU[1e-8, 1] (the paper gives none; SeriesSFN's range)
    newton
    image tasks   also batch_size ~ choice{50, 100, 200, 400, 800, 1600, 3200} (≤ N_train)

A parameter's distribution is a table with one key: ``loguniform = [a, b]``, ``uniform =
[a, b]``, ``randint = [a, b]`` (integers ``a..b``, both included), ``choice = [v, …]``, or for
``acceleration_order`` ``randint = [0, "max"]`` (``U{0..⌊(K−1)/2⌋}``). Every other
hyperparameter keeps the value in the optimiser's table.

**The ``[tune]`` table** (all optional)::

    [tune]
    metric_split = "val"         # minimise this split's loss: "val" or "train"
    num_samples = 100            # configurations per optimiser
    time_budget = 1800.0         # s of training time per trial and per re-run (ASHA's
                                 # max_t; it replaces the config's train.time_budget)
    grace_period = 30.0          # s before ASHA may stop a trial (the first rung)
    reduction_factor = 4.0       # η: rungs at grace_period·η^k; the best 1/η go on
    seed = 0                     # the trials' training seed and the search's random seed
    reeval_seeds = 10            # re-runs of each best configuration (seeds seed+1..seed+N)
    cpus_per_trial = 1           # resources of one trial (its torch threads)
    gpus_per_trial = 0           # default 1 if the config's device is CUDA
    max_concurrent_trials = 4    # default: as many as the resources allow
    [tune.fast]                  # --fast: num_samples = 2, time_budget = 1.0,
                                 # grace_period = 0.25, reeval_seeds = 1 (the re-runs also
                                 # take the config's [fast] step budget as their cap)
    [tune.space."SeriesSFN adaptive"]   # per optimiser (by name): replaces or adds parameters
    num_terms = { randint = [2, 10] }

**Output directory**::

    out/config.json                        the config (as in a run directory)
    out/ray/<optimiser>/                   Ray Tune's experiment (restored by --resume)
    out/trials/<optimiser>/<trial id>/     one run directory per trial (records, checkpoints)
    out/trials.json, out/best.json         every trial (parameters, how it ended), the bests
    out/best/                              the re-runs: a benchmark run directory
    out/tune.md, out/asha.png              the budget, the bests, the re-runs' table; the rungs

**Resume.** An interrupted tuning (Ctrl-C, exit status 130) continues with ``--resume``
(``resume=True``): each optimiser's experiment is restored with ``Tuner.restore``, which keeps
finished trials and restarts unfinished ones from their last Ray Tune checkpoint (a copy of the
trial's run directory, reported with every record); the re-runs resume as in the runner.

**Where it runs.** By default Ray starts in this process with the machine's CPUs and GPUs, and
runs one trial per ``cpus_per_trial`` cores (and ``gpus_per_trial`` GPUs). ``address``
(``--address``) or ``RAY_ADDRESS`` attaches to a running Ray cluster (``HOST:PORT`` or
``ray://HOST:PORT``); it is checked with a TCP connection first, so an unreachable address fails
at once. On a cluster, every node needs sfn-teach installed, and the output directory must be on
storage that all nodes share (Ray's ``storage_path`` is ``out/ray``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib import ticker
from matplotlib.figure import Figure

from ..data import DATASETS
from ..optim import NonFiniteStepError
from ..train import OPTIMIZERS
from .config import (
    ConfigError,
    _int,
    _positive_number,
    _table,
    apply_overrides,
    hyperparameter_names,
    validate_config,
)
from .report import format_table, summarise
from .runner import (
    CHECKPOINT_FILE,
    BenchmarkResult,
    as_config,
    fast_from_environment,
    load_benchmark,
    load_dataset,
    prepare_run_dir,
    read_records,
    read_run_config,
    run_benchmark,
    run_one,
)

INSTALL = 'pip install -e ".[tune]"'
IMAGE_BATCH_SIZES = [50, 100, 200, 400, 800, 1600, 3200]
LAMBDA_SPACE = {"damping": {"loguniform": [1e-8, 1.0]}}
DEFAULT_SPACES = {
    "series_sfn": {"num_terms": {"randint": [1, 20]}, "acceleration_order": {"randint": [0, "max"]},
                   **LAMBDA_SPACE},
    "sgd": {"lr": {"loguniform": [1e-6, 1e-1]}},
    "adam": {"lr": {"loguniform": [1e-6, 1.0]}, "eps": {"loguniform": [1e-10, 10.0]},
             "one_minus_beta1": {"loguniform": [1e-3, 1.0]},
             "one_minus_beta2": {"loguniform": [1e-4, 1.0]}},
    "exact_sfn": LAMBDA_SPACE,
    "newton": LAMBDA_SPACE,
}
"""The search space of each optimiser type (the paper's), in the config's notation."""
UNADAPTIVE_SPACE = {"lr": {"loguniform": [1e-3, 5.0]}, "momentum": {"loguniform": [1e-3, 0.95]}}
"""Added for SeriesSFN without ``adaptive``: its fixed α and μ are tuned too."""
ADAM_BETAS = {"one_minus_beta1": 0, "one_minus_beta2": 1}
"""Adam's search parameters ``1 − β`` and the index of the β in ``betas`` each one sets."""
SETTINGS = {"metric_split": "val", "num_samples": 100, "time_budget": 1800.0,
            "grace_period": 30.0, "reduction_factor": 4.0, "seed": 0, "reeval_seeds": 10,
            "cpus_per_trial": 1, "gpus_per_trial": None, "max_concurrent_trials": None}
"""The fields of ``[tune]`` and their defaults (``None``: decided from the config)."""
FAST_SETTINGS = {"num_samples": 2, "time_budget": 1.0, "grace_period": 0.25, "reeval_seeds": 1}
"""The fields of ``[tune.fast]`` and their defaults."""
TRIAL_ENDS = ("stopped", "budget", "completed", "diverged", "failed")
"""How a trial ended: stopped early by ASHA at a rung, stopped at the step that reached the
time budget, trained all its steps, gave up on non-finite steps, raised an error."""


class RayNotInstalledError(ImportError):
    """Ray Tune is needed for tuning but is not installed."""


class ClusterError(RuntimeError):
    """The Ray cluster to attach to cannot be reached."""


# --------------------------------------------------------------------------------------------
# Search spaces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """A search distribution as written in a config: ``kind`` and its ``values``.

    ``loguniform``/``uniform`` ``(a, b)``, ``randint`` ``(a, b)`` with both ends included (``b``
    may be ``"max"`` for ``acceleration_order``: the largest order that the trial's ``K``
    allows, ``⌊(K−1)/2⌋``), ``choice`` ``(v, …)``.
    """

    kind: str
    values: tuple

    def describe(self) -> str:
        """Its notation in the docs: ``logU[1e-06, 0.1]``, ``U{1..20}``, ``{50, 100}``."""
        low, high = (self.values + (None,))[:2]
        if self.kind == "loguniform":
            return f"logU[{low:g}, {high:g}]"
        if self.kind == "uniform":
            return f"U[{low:g}, {high:g}]"
        if self.kind == "randint":
            return f"U{{{low}..{'⌊(K−1)/2⌋' if high == 'max' else high}}}"
        return "{" + ", ".join(map(str, self.values)) + "}"

    def extremes(self, num_terms: int) -> tuple:
        """The smallest and largest value it can take (every value of a choice), given ``K``."""
        if self.kind == "choice":
            return self.values
        low, high = self.values
        return low, (num_terms - 1) // 2 if high == "max" else high

    def to_ray(self, tune, rng: random.Random, fixed_terms: int):
        """The Ray Tune domain; ``randint [0, "max"]`` reads the trial's ``num_terms`` (else
        ``fixed_terms``) and draws from ``rng``."""
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if high == "max":
            return tune.sample_from(
                lambda params: rng.randint(0, (params.get("num_terms", fixed_terms) - 1) // 2))
        return tune.randint(low, high + 1)  # Ray's upper end is excluded


def _number(value, path, integer):
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(path, f"must be {kind}, got {value!r}")
    return value if integer else float(value)


def parse_distribution(table, path, name) -> Distribution:
    """The :class:`Distribution` of the config table ``{kind = values}`` for parameter
    ``name``; :class:`ConfigError` naming ``path`` if it is not one."""
    kinds = ("loguniform", "uniform", "randint", "choice")
    _table(table, path, kinds)
    if len(table) != 1:
        raise ConfigError(path, f"must have exactly one of {', '.join(kinds)}, got {table!r}")
    (kind, values), = table.items()
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}.{kind}", f"must be a non-empty list, got {values!r}")
    if kind == "choice":
        return Distribution(kind, tuple(values))
    if len(values) != 2:
        raise ConfigError(f"{path}.{kind}", f"must be [low, high], got {values!r}")
    low = _number(values[0], f"{path}.{kind}[0]", kind == "randint")
    if kind == "randint" and values[1] == "max":
        if name != "acceleration_order" or low != 0:
            raise ConfigError(f"{path}.{kind}", "[0, \"max\"] (orders up to ⌊(K−1)/2⌋) is only "
                              f"for acceleration_order, got {values!r} for {name}")
        return Distribution(kind, (0, "max"))
    high = _number(values[1], f"{path}.{kind}[1]", kind == "randint")
    if not low < high or (kind == "loguniform" and low <= 0):
        rule = "0 < low < high" if kind == "loguniform" else "low < high"
        raise ConfigError(f"{path}.{kind}", f"must satisfy {rule}, got {values!r}")
    return Distribution(kind, (low, high))


def default_space(config, spec) -> dict:
    """The paper's search space for ``spec`` of ``config``, in the config's notation."""
    space = dict(DEFAULT_SPACES[spec.type])
    if spec.type == "series_sfn" and not spec.hyperparameters.get("adaptive", False):
        space.update(UNADAPTIVE_SPACE)
    if len(DATASETS[config.task].input_shape) == 3:
        space["batch_size"] = {"choice": [b for b in IMAGE_BATCH_SIZES
                                          if b <= config.sizes["train"]]}
    return space


def _space(config, index, overrides) -> dict:
    """``{parameter: Distribution}`` of optimiser ``index``: the default space, updated by the
    ``[tune.space."<name>"]`` table ``overrides``; checked at its extremes."""
    spec = config.optimizers[index]
    path = f"tune.space.{spec.name}"
    allowed = ["batch_size",
               *(p for p in hyperparameter_names(spec.type) if p != "betas"),
               *(ADAM_BETAS if spec.type == "adam" else ())]
    _table(overrides, path, allowed)
    tables = {**default_space(config, spec), **overrides}
    space = {name: parse_distribution(table, f"{path}.{name}", name)
             for name, table in tables.items()}
    terms = space.get("num_terms")
    fixed_terms = _fixed_terms(spec)
    for end in (0, -1):  # every parameter at its smallest, then at its largest value
        largest_terms = terms.extremes(0)[end] if terms else fixed_terms
        corner = {name: d.extremes(largest_terms)[end] for name, d in space.items()}
        _check_trial(config, index, corner, path, space)
    for name, distribution in space.items():
        if distribution.kind == "choice":
            for value in distribution.values:
                _check_trial(config, index, {name: value}, path, space)
    return space


def _fixed_terms(spec) -> int:
    """The optimiser's ``num_terms`` outside the search (its table's value or the default)."""
    if spec.type != "series_sfn":
        return 1
    default = inspect.signature(OPTIMIZERS["series_sfn"]).parameters["num_terms"].default
    return spec.hyperparameters.get("num_terms", default)


def _check_trial(config, index, params, path, space):
    """Raise :class:`ConfigError` if a trial with ``params`` would have an invalid config."""
    try:
        validate_config(tuned_raw(config.raw, {index: params}, [0]), config.name)
    except ConfigError as error:
        name = error.field.rpartition(".")[2]
        field = f"{path}.{name}" if name in space else error.field
        raise ConfigError(field, f"a trial with {params} would be refused: {error}") from None


def tuned_raw(raw: dict, chosen: dict, seeds, time_budget: float | None = None) -> dict:
    """The raw config of a trial or of the re-runs: only the optimisers ``chosen`` (``{index:
    params}``), each with its sampled ``params`` set, trained with ``seeds`` and, if
    ``time_budget`` is given, for at most ``time_budget`` s of training time each
    (``train.time_budget``; ``None`` keeps the config's).

    ``one_minus_beta1``/``one_minus_beta2`` set Adam's ``betas``; ``[fast]`` takes the same
    seeds and the ``[tune]`` table is dropped.
    """
    overrides = {"train.seeds": list(seeds), "fast.seeds": list(seeds)}
    if time_budget is not None:
        overrides["train.time_budget"] = time_budget
    for index, params in chosen.items():
        params = dict(params)
        if any(name in params for name in ADAM_BETAS):
            betas = list(raw["optimizers"][index].get("betas", _adam_default_betas()))
            for name, position in ADAM_BETAS.items():
                if name in params:
                    betas[position] = 1.0 - params.pop(name)
            params["betas"] = betas
        overrides.update({f"optimizers[{index}].{key}": value for key, value in params.items()})
    tuned = apply_overrides(raw, overrides)
    tuned["optimizers"] = [tuned["optimizers"][index] for index in chosen]
    tuned.pop("tune", None)
    return tuned


def _adam_default_betas():
    return inspect.signature(torch.optim.Adam).parameters["betas"].default


# --------------------------------------------------------------------------------------------
# The [tune] table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneSettings:
    """The validated ``[tune]`` table (module docstring), fast mode applied."""

    metric_split: str
    num_samples: int
    time_budget: float
    grace_period: float
    reduction_factor: float
    seed: int
    reeval_seeds: int
    cpus_per_trial: int
    gpus_per_trial: int
    max_concurrent_trials: int | None
    spaces: dict  # optimiser name -> {parameter: Distribution}

    @property
    def metric(self) -> str:
        """The record field ASHA minimises: ``<metric_split>_loss``."""
        return f"{self.metric_split}_loss"

    @property
    def rungs(self) -> list:
        """The training times at which ASHA compares trials: ``grace_period · η^k`` up to the
        budget (Ray Tune's rule)."""
        count = int(math.log(self.time_budget / self.grace_period)
                    / math.log(self.reduction_factor) + 1)
        return [self.grace_period * self.reduction_factor**k for k in range(count)]

    @property
    def reeval_seed_list(self) -> list:
        """The seeds of the re-runs: ``seed + 1, …, seed + reeval_seeds``."""
        return [self.seed + k for k in range(1, self.reeval_seeds + 1)]

    def budget(self) -> str:
        """The budget that every optimiser gets, in one line."""
        rungs = ", ".join(f"{t:g}" for t in self.rungs)
        return (f"{self.num_samples} samples × at most {self.time_budget:g} s of training time "
                f"each ({self.num_samples * self.time_budget:g} s); ASHA on {self.metric} "
                f"(min): grace period {self.grace_period:g} s, reduction factor "
                f"{self.reduction_factor:g}, rungs at {rungs} s; best re-run over "
                f"{self.reeval_seeds} seed{'s' if self.reeval_seeds > 1 else ''}, "
                f"{self.time_budget:g} s of training time each")


def _budget(table: dict, prefix: str) -> dict:
    """The budget fields (those of ``[tune.fast]``) of ``table``, checked, naming
    ``<prefix>.<field>``."""
    budget = {
        "num_samples": _int(table["num_samples"], f"{prefix}.num_samples", 1),
        "time_budget": _positive_number(table["time_budget"], f"{prefix}.time_budget"),
        "grace_period": _positive_number(table["grace_period"], f"{prefix}.grace_period"),
        "reeval_seeds": _int(table["reeval_seeds"], f"{prefix}.reeval_seeds", 1),
    }
    if budget["grace_period"] > budget["time_budget"]:
        raise ConfigError(f"{prefix}.grace_period", f"must be at most the time budget "
                          f"{budget['time_budget']:g} s, got {budget['grace_period']:g}")
    return budget


def tune_settings(config, fast: bool = False) -> TuneSettings:
    """The :class:`TuneSettings` of ``config``'s ``[tune]`` table (``[tune.fast]`` applied when
    ``fast``); raises :class:`ConfigError` naming the first bad field."""
    config = as_config(config)
    raw = _table(config.raw.get("tune", {}), "tune", (*SETTINGS, "fast", "space"))
    fields = {**SETTINGS, **{k: v for k, v in raw.items() if k not in ("fast", "space")}}
    budgets = {False: _budget(fields, "tune"),
               True: _budget({**FAST_SETTINGS, **_table(raw.get("fast", {}), "tune.fast",
                                                        tuple(FAST_SETTINGS))}, "tune.fast")}
    split = fields["metric_split"]
    if split not in ("val", "train"):
        raise ConfigError("tune.metric_split", f"must be 'val' or 'train' (tuning on the test "
                          f"set would report what was selected on), got {split!r}")
    reduction_factor = _positive_number(fields["reduction_factor"], "tune.reduction_factor")
    if reduction_factor <= 1:
        raise ConfigError("tune.reduction_factor", f"must be > 1, got {reduction_factor:g}")
    cuda = config.device.type == "cuda"
    gpus = fields["gpus_per_trial"]
    gpus = int(cuda) if gpus is None else _int(gpus, "tune.gpus_per_trial", 0)
    if cuda != (gpus > 0):
        raise ConfigError("tune.gpus_per_trial", f"must be >= 1 when device is CUDA and 0 "
                          f"when it is the CPU; device is {config.device}, got {gpus}")
    if cuda and config.device.index is not None:
        raise ConfigError("device", f"{str(config.device)!r} names one GPU, but Ray Tune gives "
                          "each trial its own: set device = 'cuda'")
    concurrent = fields["max_concurrent_trials"]
    spaces = _table(raw.get("space", {}), "tune.space", [s.name for s in config.optimizers])
    return TuneSettings(
        metric_split=split,
        **budgets[fast],
        reduction_factor=reduction_factor,
        seed=_int(fields["seed"], "tune.seed", 0, 2**31 - 1),
        cpus_per_trial=_int(fields["cpus_per_trial"], "tune.cpus_per_trial", 1),
        gpus_per_trial=gpus,
        max_concurrent_trials=None if concurrent is None else _int(
            concurrent, "tune.max_concurrent_trials", 1),
        spaces={spec.name: _space(config, index, spaces.get(spec.name, {}))
                for index, spec in enumerate(config.optimizers)},
    )


# --------------------------------------------------------------------------------------------
# Ray: import, where to run, one trial
# --------------------------------------------------------------------------------------------


def import_ray_tune():
    """``ray.tune``, imported now, with Ray's console output quiet and trials kept in the
    working directory; :class:`RayNotInstalledError` saying how to install it if missing."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no progress tables with verbose=0
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # relative paths work in trials
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON and CSV only, below
    try:
        from ray import tune
    except ImportError as error:
        raise RayNotInstalledError(f"tuning needs Ray Tune, which is not installed ({error}); "
                                   f"install it with: {INSTALL}") from None
    return tune


def check_reachable(address: str, source: str = "--address") -> None:
    """Raise :class:`ClusterError` unless a TCP connection to the Ray ``address``
    (``HOST:PORT`` or ``ray://HOST:PORT``) opens within 3 s (``"auto"`` is left to Ray)."""
    if address == "auto":
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ClusterError(f"{source} must be HOST:PORT, ray://HOST:PORT or 'auto', "
                           f"got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as error:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} (from {source}): "
            f"{error.strerror or error}. Start one there with `ray start --head`, or leave out "
            "--address and RAY_ADDRESS to run Ray in this process") from None


def check_resources(settings: TuneSettings, available: dict, where: str) -> None:
    """Raise :class:`ConfigError` if one trial needs more CPUs or GPUs than ``available``
    (``{"CPU": n, "GPU": m}``) has: its trials would wait for ever."""
    for key, field in (("CPU", "cpus_per_trial"), ("GPU", "gpus_per_trial")):
        wanted, have = getattr(settings, field), int(available.get(key, 0))
        if wanted > have:
            raise ConfigError(f"tune.{field}", f"each trial asks for {wanted} {key}(s), but "
                              f"{where} has {have}")


@dataclass(frozen=True)
class _TrialJob:
    """What a trial needs besides its sampled parameters (sent to Ray's workers)."""

    raw: dict
    name: str
    index: int
    seed: int
    metric: str
    trials_dir: str  # absolute: out/trials/<optimiser>
    threads: int
    time_budget: float  # s of training time (the run stops itself there)


def _finite_or_inf(value) -> float:
    """``value`` if it is a finite number, else ``inf``: ASHA must rank NaN losses last."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def _train_trial(params: dict, job: _TrialJob) -> None:
    """One Ray Tune trial: :func:`run_one` with the sampled ``params`` for at most
    ``job.time_budget`` s of training time, reporting every record.

    Every record is checkpointed, and reported with a Ray Tune checkpoint that holds a copy of
    the run's checkpoint file. A trial that Ray Tune restarts (``Tuner.restore``) puts that
    copy back in its run directory and resumes from it: the records after it are cut and made
    again, so the run directory continues exactly where Ray Tune's results end.
    """
    from ray import tune

    torch.set_num_threads(job.threads)
    raw = apply_overrides(tuned_raw(job.raw, {job.index: params}, [job.seed], job.time_budget),
                          {"train.checkpoint_every": 1})
    config = validate_config(raw, job.name)
    run_dir = Path(job.trials_dir) / tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:  # a fresh start (also after a kill before the first report)
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        with checkpoint.as_directory() as saved:
            shutil.copy(Path(saved) / CHECKPOINT_FILE, run_dir / CHECKPOINT_FILE)
    last = {"wall_clock": 0.0, "step": 0}

    def report(record):
        last.update(record)
        with tempfile.TemporaryDirectory() as staging:
            shutil.copy(run_dir / CHECKPOINT_FILE, staging)
            tune.report({**record, job.metric: _finite_or_inf(record[job.metric])},
                        checkpoint=tune.Checkpoint.from_directory(staging))

    try:
        run_one(config, config.optimizers[0], job.seed, load_dataset(config, progress=False),
                run_dir, resume=True, progress=False, log=lambda message: None,
                on_record=report)
    except NonFiniteStepError as error:
        tune.report({job.metric: math.inf, "wall_clock": last["wall_clock"],
                     "step": last["step"], "diverged": str(error)})


def _trial_dirname(trial) -> str:
    """Ray Tune's folder of a trial: its id, as the trial's run directory."""
    return trial.trial_id


# --------------------------------------------------------------------------------------------
# Tuning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneResult:
    """A tuning directory, read back: settings, every trial, the bests and their re-runs."""

    out_dir: Path
    config: object  # the BenchmarkConfig that was tuned
    settings: TuneSettings
    trials: list  # one dict per trial (trials.json), with its "records"
    best: dict  # optimiser name -> the best trial's summary and its optimiser table
    rerun: BenchmarkResult | None  # None when no optimiser had a finite best loss

    @property
    def table(self) -> str:
        """The tuning summary as a Markdown table (:func:`format_tuning_table`)."""
        return format_tuning_table(self.trials, self.best, self.settings)


def _summarise_trials(grid, config, index, settings, trials_dir: Path) -> list:
    """One dict per trial of the Ray Tune ``grid`` of optimiser ``index``: its parameters,
    how it ended (:data:`TRIAL_ENDS`), its last step, training time and loss."""
    spec = config.optimizers[index]
    summaries = []
    for result in sorted(grid, key=lambda result: Path(result.path).name):
        trial_id = Path(result.path).name
        records_path = trials_dir / trial_id / "records.jsonl"
        records = read_records(records_path) if records_path.exists() else []
        metrics = result.metrics or {}
        last = records[-1] if records else {"step": 0, "wall_clock": 0.0}
        trial_config = validate_config(tuned_raw(config.raw, {index: result.config}, [0]))
        if result.error is not None:
            end = "failed"
        elif "diverged" in metrics:
            end = "diverged"
        elif last["step"] >= trial_config.num_steps(trial_config.optimizers[0]):
            end = "completed"
        elif last["wall_clock"] >= settings.time_budget:
            end = "budget"
        else:
            end = "stopped"
        summaries.append({
            "optimizer": spec.name, "trial_id": trial_id, "params": result.config, "end": end,
            "step": last["step"], "wall_clock": last["wall_clock"],
            "metric": _finite_or_inf(metrics.get(settings.metric, math.inf)),
            "error": None if result.error is None else str(result.error).splitlines()[0][:300],
        })
    return summaries


def _best(trials: list, config) -> dict:
    """Per optimiser, the trial with the lowest finite loss at its last report, with the
    optimiser table it gives (optimisers whose trials all failed or diverged are left out)."""
    best = {}
    for index, spec in enumerate(config.optimizers):
        finite = [t for t in trials if t["optimizer"] == spec.name and math.isfinite(t["metric"])]
        if finite:
            trial = min(finite, key=lambda t: t["metric"])
            table = tuned_raw(config.raw, {index: trial["params"]}, [0])["optimizers"][0]
            best[spec.name] = {**trial, "index": index, "optimizer_table": table}
    return best


def _json_ready(value):
    """``inf`` as ``None``, for strict JSON."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


def ray_address(address: str | None) -> tuple:
    """``(address, where it came from)``: ``address`` (``--address``), else ``RAY_ADDRESS``,
    else ``(None, None)``: start Ray in this process."""
    if address is not None:
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, None


def _connect(ray, settings: TuneSettings, address: str | None, source: str | None) -> bool:
    """Start Ray here (``address`` None), or attach to ``address``; whether this call started
    or attached Ray (and so should shut it down). A Ray already running in this process (a
    notebook's) is used as it is. Checks that one trial fits the resources.
    """
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if ray.is_initialized():
        check_resources(settings, ray.cluster_resources(), "the running Ray instance")
        return False
    if address is None:  # "local": a new instance, even if `ray start` runs one on this machine
        ray.init(address="local", num_cpus=os.cpu_count() or 1,
                 num_gpus=torch.cuda.device_count(), include_dashboard=False, **quiet)
        return True
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as error:
        raise ClusterError(f"cannot attach to the Ray cluster at {address} (from {source}): "
                           f"{error}") from None
    check_resources(settings, ray.cluster_resources(), f"the Ray cluster at {address}")
    return True


def _tune_optimizer(tune, config, index, settings, out_dir: Path, resume: bool):
    """Run (or with ``resume`` restore and finish) the Ray Tune experiment of optimiser
    ``index``; its result grid. Raises ``KeyboardInterrupt`` if Ray Tune stopped early
    (Ctrl-C): unfinished trials are left for ``--resume``."""
    spec = config.optimizers[index]
    job = _TrialJob(raw=config.raw, name=config.name, index=index, seed=settings.seed,
                    metric=settings.metric, trials_dir=str(out_dir / "trials" / spec.slug),
                    threads=settings.cpus_per_trial, time_budget=settings.time_budget)
    trainable = tune.with_resources(tune.with_parameters(_train_trial, job=job),
                                    {"cpu": settings.cpus_per_trial,
                                     "gpu": settings.gpus_per_trial})
    path = out_dir / "ray" / spec.slug
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True)
    else:
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.basic_variant import BasicVariantGenerator

        rng = random.Random(settings.seed)
        space = {name: distribution.to_ray(tune, rng, _fixed_terms(spec))
                 for name, distribution in settings.spaces[spec.name].items()}
        scheduler = ASHAScheduler(time_attr="wall_clock", max_t=settings.time_budget,
                                  grace_period=settings.grace_period,
                                  reduction_factor=settings.reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                metric=settings.metric, mode="min", scheduler=scheduler,
                num_samples=settings.num_samples,
                search_alg=BasicVariantGenerator(random_state=settings.seed),
                max_concurrent_trials=settings.max_concurrent_trials, reuse_actors=True,
                trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=spec.slug, storage_path=str(out_dir / "ray"), verbose=0,
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    grid = tuner.fit()
    # a trial ended when it failed or its last result says done (the scheduler stopped it, or
    # it returned); Ray Tune's Ctrl-C handler ends fit() early and leaves the rest unfinished
    if any(r.error is None and not (r.metrics or {}).get("done") for r in grid):
        raise KeyboardInterrupt(f"tuning of {spec.name} stopped before all its trials ended")
    return grid


def tune_benchmark(config, out_dir, *, fast=None, resume=False, address=None, progress=True,
                   log=print) -> TuneResult:
    """Tune every optimiser of ``config`` with ASHA, re-run the bests, write the report.

    Args:
        config: a :class:`~sfn_teach.bench.BenchmarkConfig`, a config file or a raw dict;
            its ``[tune]`` table holds the settings (module docstring).
        out_dir: the tuning directory (refused if it holds one, unless ``resume``).
        fast: the ``[tune.fast]`` settings and the ``[fast]`` budget for the re-runs;
            ``None`` reads ``SFN_TEACH_FAST``.
        resume: continue an interrupted tuning in ``out_dir`` (the same config).
        address: a Ray cluster to attach to (default ``RAY_ADDRESS``, else Ray starts here).
        progress: log lines and the re-runs' progress bars; ``False`` is silent.
        log: where progress lines go.

    Everything is validated, the Ray address checked and one trial's resources compared with
    what there is before anything is written or any trial starts. Returns the
    :class:`TuneResult`.
    """
    config = as_config(config)
    fast = fast_from_environment() if fast is None else fast
    log = log if progress else (lambda message: None)
    settings = tune_settings(config, fast)
    out_dir = Path(out_dir).resolve()
    tune = import_ray_tune()
    import ray

    address, source = ray_address(address)
    if address is None:
        check_resources(settings, {"CPU": os.cpu_count() or 1,
                                   "GPU": torch.cuda.device_count()}, "this machine")
    else:
        check_reachable(address, source)
    started = _connect(ray, settings, address, source)
    trials = []
    try:
        prepare_run_dir(out_dir, config, fast, resume)
        log(f"tuning {config.name} -> {out_dir}{' (fast mode)' if fast else ''}")
        log(f"budget of every optimiser: {settings.budget()}")
        for index, spec in enumerate(config.optimizers):
            space = "; ".join(f"{name} ~ {d.describe()}"
                              for name, d in settings.spaces[spec.name].items())
            log(f"[{index + 1}/{len(config.optimizers)}] {spec.name}: {space}")
            grid = _tune_optimizer(tune, config, index, settings, out_dir, resume)
            summaries = _summarise_trials(grid, config, index, settings,
                                          out_dir / "trials" / spec.slug)
            counts = {end: sum(t["end"] == end for t in summaries) for end in TRIAL_ENDS}
            log("    " + ", ".join(f"{n} {end}" for end, n in counts.items() if n))
            trials += summaries
    finally:
        if started:
            ray.shutdown()
    best = _best(trials, config)
    (out_dir / "trials.json").write_text(json.dumps(_json_ready(trials), indent=2) + "\n")
    (out_dir / "best.json").write_text(json.dumps(_json_ready(best), indent=2) + "\n")
    for name, trial in best.items():
        log(f"best {name}: {settings.metric} {trial['metric']:.4g} with {trial['params']}")
    if best:
        rerun_raw = tuned_raw(config.raw, {t["index"]: t["params"] for t in best.values()},
                              settings.reeval_seed_list, settings.time_budget)
        rerun_raw["name"] = f"{config.name}-best"
        log(f"re-running the best settings over seeds {settings.reeval_seed_list}, "
            f"{settings.time_budget:g} s of training time each")
        run_benchmark(rerun_raw, out_dir / "best", fast=fast, resume=True, progress=progress,
                      log=log)
    result = load_tuning(out_dir)
    write_tuning_report(result)
    log(f"report: {out_dir / 'tune.md'} and {out_dir / 'asha.png'}")
    return result


# --------------------------------------------------------------------------------------------
# Reading back, the table and the ASHA figure
# --------------------------------------------------------------------------------------------


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
    return TuneResult(out_dir, config, settings, trials, best, rerun)


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
    how the trials ended (diverged trials have no finite loss to draw).
    """
    from matplotlib.lines import Line2D

    settings = result.settings
    names = list(dict.fromkeys(t["optimizer"] for t in result.trials))
    figure = Figure(figsize=(4.6 * len(names), 3.6), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
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
    settings, out_dir = result.settings, result.out_dir
    machine = read_run_config(out_dir).get("machine", "")
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
