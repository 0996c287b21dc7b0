"""A finished tuning in one small file, to keep in a repository and to read back without Ray.

A tuning directory holds Ray's experiments, a checkpoint per trial and every record: tens of
megabytes. What a reader needs — the settings, how every trial ended, its loss against training
time (the ASHA figure), the bests and the re-runs' curves (the table and the figures against
steps, wall-clock and gradient-equivalents) — fits in a few hundred kilobytes of JSON.
:func:`write_tuning_archive` writes it as ``tuning.json`` next to ``tune.md``;
:func:`load_tuning_archive` reads it back as the :class:`~.report.TuneResult` that
:func:`~.report.load_tuning` gives for the directory, with the records thinned and cut to what
is drawn and their numbers to :data:`SIGNIFICANT_DIGITS` significant digits; the tables are those
of the full records.

Notebook 04 reads ``benchmarks/results/digits_tune.json`` this way: the tuning takes minutes,
the notebook seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...files import atomic_write
from ..config import validate_config
from ..rundir import read_run_config
from ..runner import BenchmarkResult
from .report import TuneResult
from .settings import tune_settings

__all__ = ["ARCHIVE_FILE", "ARCHIVE_FORMAT", "KEPT_FIELDS", "POINTS_PER_RUN",
           "SIGNIFICANT_DIGITS",
           "load_tuning_archive", "write_tuning_archive"]

ARCHIVE_FILE = "tuning.json"
ARCHIVE_FORMAT = 1
SIGNIFICANT_DIGITS = 5
#: at most this many records of a run are kept for its curves (evenly spaced, the last always)
POINTS_PER_RUN = 40

#: the fields of a re-run's record that the tables and figures read (the others are left out)
KEPT_FIELDS = (
    "run_id", "optimizer", "seed", "step", "epoch", "wall_clock", "warmup_seconds",
    "compile_seconds", "compiled", "compile_error", "grad_equivalents",
    "example_grad_equivalents", "val_loss", "test_loss", "test_accuracy",
)


def _short(value):
    """A float to :data:`SIGNIFICANT_DIGITS` significant digits; anything else unchanged."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}") if isinstance(value, float) else value


def _table(records: list, fields) -> dict:
    """``records`` as ``{"fields": [...], "rows": [[...], ...]}``: the names once, not per row."""
    fields = [key for key in fields if records and key in records[0]]
    return {"fields": fields, "rows": [[_short(record[key]) for key in fields]
                                       for record in records]}


def _thinned(records: list) -> list:
    """Every ``k``-th record of one run, and its last, so that at most about
    :data:`POINTS_PER_RUN` remain."""
    stride = -(-len(records) // POINTS_PER_RUN)
    kept = records[::stride]
    return kept + records[-1:] if records and kept[-1] is not records[-1] else kept


def _runs_thinned(records: list) -> list:
    """:func:`_thinned` applied to each run (``run_id``) of a re-run's records, in order."""
    runs = {}
    for record in records:
        runs.setdefault(record["run_id"], []).append(record)
    return [kept for run in runs.values() for kept in _thinned(run)]


def _records(table: dict) -> list:
    """The records of a :func:`_table`."""
    return [dict(zip(table["fields"], row)) for row in table["rows"]]


def write_tuning_archive(result: TuneResult) -> Path:
    """Write ``tuning.json`` into the tuning directory of ``result``; return its path.

    It holds the tuned config as stored (with the machine), ``best.json``, every trial (its
    parameters, how it ended, its loss against step and training time, what the ASHA figure
    draws) and, if there were re-runs, their stored config, their summary (from every record)
    and their records cut to :data:`KEPT_FIELDS`; the records of every run thinned to about
    :data:`POINTS_PER_RUN`.
    """
    out_dir = Path(result.out_dir)
    trial_fields = ("step", "wall_clock", result.settings.metric)
    archive = {
        "format": ARCHIVE_FORMAT,
        "run_config": read_run_config(out_dir),
        "best": result.best,
        "trials": [{**trial, "metric": _short(trial["metric"]),
                    "records": _table(_thinned(trial["records"]), trial_fields)}
                   for trial in result.trials],
        "rerun": None if result.rerun is None else {
            "run_config": read_run_config(result.rerun.out_dir),
            "summary": result.rerun.summary,
            "records": _table(_runs_thinned(result.rerun.records), KEPT_FIELDS),
        },
    }
    path = out_dir / ARCHIVE_FILE
    text = json.dumps(archive, separators=(",", ":"), allow_nan=True)
    atomic_write(path, lambda file: file.write(text.encode()))
    return path


def load_tuning_archive(path) -> TuneResult:
    """The :class:`~.report.TuneResult` stored by :func:`write_tuning_archive` at ``path``
    (``out_dir`` is ``path``; records thinned to :data:`POINTS_PER_RUN` a run, the re-runs'
    summary as computed from all their records)."""
    path = Path(path)
    archive = json.loads(path.read_text())
    if archive.get("format") != ARCHIVE_FORMAT:
        raise ValueError(f"{path} is not a tuning archive of format {ARCHIVE_FORMAT}")
    stored = archive["run_config"]
    config = validate_config(stored["config"], stored["name"])
    rerun = None
    if archive["rerun"] is not None:
        rerun_stored = archive["rerun"]["run_config"]
        rerun_config = validate_config(rerun_stored["config"], rerun_stored["name"])
        if rerun_stored["fast"]:
            rerun_config = rerun_config.fast_version()
        rerun = BenchmarkResult(path, rerun_config, _records(archive["rerun"]["records"]),
                                archive["rerun"]["summary"])
    trials = [{**trial, "records": _records(trial["records"])} for trial in archive["trials"]]
    return TuneResult(path, config, tune_settings(config, stored["fast"]), trials,
                      archive["best"], rerun, stored.get("machine", ""))

