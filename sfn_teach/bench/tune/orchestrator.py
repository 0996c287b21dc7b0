"""Tuning a benchmark: every optimiser's ASHA experiment, the bests, their re-runs, the report.

:func:`tune_benchmark` validates everything and checks where Ray runs before anything is
written; then it tunes the optimisers one after the other (:mod:`.backend`), summarises their
trials, picks the best of each, re-runs the bests over fresh seeds with the benchmark runner
and writes the report (:mod:`.report`).

**Output directory**::

    out/config.json                        the config (as in a run directory)
    out/ray/<optimiser>/                   Ray Tune's experiment (restored by --resume)
    out/trials/<optimiser>/<trial id>/     one run directory per trial (records, checkpoints)
    out/trials.json, out/best.json         every trial (parameters, how it ended), the bests
    out/best/                              the re-runs: a benchmark run directory
    out/tune.md, out/asha.png              the budget, the bests, the re-runs' table; the rungs
    out/tuning.json                        all a reader needs, in one small file (:mod:`.archive`)

**Resume.** An interrupted tuning (Ctrl-C, exit status 130) continues with ``--resume``
(``resume=True``): each optimiser's experiment is restored with ``Tuner.restore``, which keeps
finished trials and restarts unfinished ones from their last Ray Tune checkpoint (a copy of the
trial's run directory, reported with every record); the re-runs resume as in the runner.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..rundir import prepare_run_dir
from ..runner import as_config, fast_from_environment, run_benchmark
from .archive import ARCHIVE_FILE, write_tuning_archive
from .backend import (
    TRIAL_ENDS,
    check_reachable,
    check_resources,
    connect,
    import_ray_tune,
    ray_address,
    summarise_trials,
    tune_optimizer,
)
from .report import TuneResult, load_tuning, write_tuning_report
from .settings import tune_settings
from .space import tuned_raw

__all__ = ["tune_benchmark"]


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


def tune_benchmark(config, out_dir, *, fast=None, resume=False, address=None, progress=True,
                   log=print) -> TuneResult:
    """Tune every optimiser of ``config`` with ASHA, re-run the bests, write the report.

    Args:
        config: a :class:`~sfn_teach.bench.BenchmarkConfig`, a config file or a raw dict;
            its ``[tune]`` table holds the settings (:mod:`.settings`).
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
    started = connect(ray, settings, address, source)
    trials = []
    try:
        prepare_run_dir(out_dir, config, fast, resume)
        log(f"tuning {config.name} -> {out_dir}{' (fast mode)' if fast else ''}")
        log(f"budget of every optimiser: {settings.budget()}")
        for index, spec in enumerate(config.optimizers):
            space = "; ".join(f"{name} ~ {d.describe()}"
                              for name, d in settings.spaces[spec.name].items())
            log(f"[{index + 1}/{len(config.optimizers)}] {spec.name}: {space}")
            grid = tune_optimizer(tune, config, index, settings, out_dir, resume)
            summaries = summarise_trials(grid, config, index, settings,
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
    write_tuning_archive(result)
    log(f"report: {out_dir / 'tune.md'} and {out_dir / 'asha.png'}; the results in one small "
        f"file: {out_dir / ARCHIVE_FILE}")
    return result
