"""Ray Tune: its import, where the trials run, one trial, one optimiser's experiment.

Ray is an optional dependency (``pip install -e ".[tune]"``); :func:`import_ray_tune` imports
it when tuning starts, and nothing here imports it before.

**Where it runs.** By default Ray starts in this process with the machine's CPUs and GPUs,
and runs one trial per ``cpus_per_trial`` cores (and ``gpus_per_trial`` GPUs). ``address``
(``--address``) or ``RAY_ADDRESS`` attaches to a running Ray cluster (``HOST:PORT`` or
``ray://HOST:PORT``); it is checked with a TCP connection first, so an unreachable address fails
at once. On a cluster, every node needs sfn-teach installed, and the output directory must be on
storage that all nodes share (Ray's ``storage_path`` is ``out/ray``).

A trial (:func:`_train_trial`) is one run of the benchmark runner in its own run directory,
reporting every record to Ray Tune; :func:`tune_optimizer` runs the ASHA experiment of one
optimiser and :func:`summarise_trials` reads back how each of its trials ended.
"""

from __future__ import annotations

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

from ...checks import SfnTeachError
from ...optim import NonFiniteStepError
from ..config import validate_config
from ..fields import ConfigError
from ..overrides import apply_overrides
from ..rundir import CHECKPOINT_FILE, read_records
from ..runner import load_dataset, run_one
from .settings import TuneSettings
from .space import fixed_num_terms, tuned_raw

__all__ = [
    "INSTALL", "TRIAL_ENDS", "ClusterError", "RayNotInstalledError", "check_reachable",
    "check_resources", "connect", "import_ray_tune", "ray_address", "summarise_trials",
    "tune_optimizer"
]

INSTALL = 'pip install -e ".[tune]"'
TRIAL_ENDS = ("stopped", "budget", "completed", "diverged", "failed")
"""How a trial ended: stopped early by ASHA at a rung, stopped at the step that reached the
time budget, trained all its steps, gave up on non-finite steps, raised an error."""


class RayNotInstalledError(SfnTeachError, ImportError):
    """Ray Tune is needed for tuning but is not installed."""


class ClusterError(SfnTeachError, RuntimeError):
    """The Ray cluster to attach to cannot be reached."""


# --------------------------------------------------------------------------------------------
# Ray, and where it runs
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


def ray_address(address: str | None) -> tuple:
    """``(address, where it came from)``: ``address`` (``--address``), else ``RAY_ADDRESS``,
    else ``(None, None)``: start Ray in this process."""
    if address is not None:
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, None


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


def connect(ray, settings: TuneSettings, address: str | None, source: str | None) -> bool:
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


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------


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


def tune_optimizer(tune, config, index, settings, out_dir: Path, resume: bool):
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
        space = {name: distribution.to_ray(tune, rng, fixed_num_terms(spec))
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


def summarise_trials(grid, config, index, settings, trials_dir: Path) -> list:
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
