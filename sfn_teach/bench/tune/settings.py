"""The ``[tune]`` table of a config: the budget every optimiser gets, and where trials run.

All its fields are optional::

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

:func:`tune_settings` validates the whole table, the search spaces included
(:mod:`.space`), before anything starts, and names the first bad field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..fields import ConfigError, check_int, check_positive_number, check_table
from ..runner import as_config
from .space import search_space

__all__ = ["FAST_SETTINGS", "SETTINGS", "TuneSettings", "tune_settings"]

SETTINGS = {"metric_split": "val", "num_samples": 100, "time_budget": 1800.0,
            "grace_period": 30.0, "reduction_factor": 4.0, "seed": 0, "reeval_seeds": 10,
            "cpus_per_trial": 1, "gpus_per_trial": None, "max_concurrent_trials": None}
"""The fields of ``[tune]`` and their defaults (``None``: decided from the config)."""
FAST_SETTINGS = {"num_samples": 2, "time_budget": 1.0, "grace_period": 0.25, "reeval_seeds": 1}
"""The fields of ``[tune.fast]`` and their defaults."""


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
        "num_samples": check_int(table["num_samples"], f"{prefix}.num_samples", 1),
        "time_budget": check_positive_number(table["time_budget"], f"{prefix}.time_budget"),
        "grace_period": check_positive_number(table["grace_period"], f"{prefix}.grace_period"),
        "reeval_seeds": check_int(table["reeval_seeds"], f"{prefix}.reeval_seeds", 1),
    }
    if budget["grace_period"] > budget["time_budget"]:
        raise ConfigError(f"{prefix}.grace_period", f"must be at most the time budget "
                          f"{budget['time_budget']:g} s, got {budget['grace_period']:g}")
    return budget


def tune_settings(config, fast: bool = False) -> TuneSettings:
    """The :class:`TuneSettings` of ``config``'s ``[tune]`` table (``[tune.fast]`` applied when
    ``fast``); raises :class:`ConfigError` naming the first bad field."""
    config = as_config(config)
    raw = check_table(config.raw.get("tune", {}), "tune", (*SETTINGS, "fast", "space"))
    fields = {**SETTINGS, **{k: v for k, v in raw.items() if k not in ("fast", "space")}}
    budgets = {False: _budget(fields, "tune"),
               True: _budget({**FAST_SETTINGS, **check_table(
                   raw.get("fast", {}), "tune.fast", tuple(FAST_SETTINGS))}, "tune.fast")}
    split = fields["metric_split"]
    if split not in ("val", "train"):
        raise ConfigError("tune.metric_split", f"must be 'val' or 'train' (tuning on the test "
                          f"set would report what was selected on), got {split!r}")
    reduction_factor = check_positive_number(fields["reduction_factor"], "tune.reduction_factor")
    if reduction_factor <= 1:
        raise ConfigError("tune.reduction_factor", f"must be > 1, got {reduction_factor:g}")
    cuda = config.device.type == "cuda"
    gpus = fields["gpus_per_trial"]
    gpus = int(cuda) if gpus is None else check_int(gpus, "tune.gpus_per_trial", 0)
    if cuda != (gpus > 0):
        raise ConfigError("tune.gpus_per_trial", f"must be >= 1 when device is CUDA and 0 "
                          f"when it is the CPU; device is {config.device}, got {gpus}")
    if cuda and config.device.index is not None:
        raise ConfigError("device", f"{str(config.device)!r} names one GPU, but Ray Tune gives "
                          "each trial its own: set device = 'cuda'")
    concurrent = fields["max_concurrent_trials"]
    spaces = check_table(raw.get("space", {}), "tune.space", [s.name for s in config.optimizers])
    return TuneSettings(
        metric_split=split,
        **budgets[fast],
        reduction_factor=reduction_factor,
        seed=check_int(fields["seed"], "tune.seed", 0, 2**31 - 1),
        cpus_per_trial=check_int(fields["cpus_per_trial"], "tune.cpus_per_trial", 1),
        gpus_per_trial=gpus,
        max_concurrent_trials=None if concurrent is None else check_int(
            concurrent, "tune.max_concurrent_trials", 1),
        spaces={spec.name: search_space(config, index, spaces.get(spec.name, {}))
                for index, spec in enumerate(config.optimizers)},
    )
