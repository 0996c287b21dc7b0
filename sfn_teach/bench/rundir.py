"""The run directory of a benchmark: its ``config.json`` and the records of each run.

``run_benchmark(config, out_dir)`` (:mod:`sfn_teach.bench.runner`) writes::

    out_dir/config.json              the config as read, whether fast mode was on, the machine
    out_dir/<optimiser>-seed<s>/     one folder per run:
        records.jsonl                one JSON record per evaluation (the runner's docstring)
        checkpoint.pt[.prev]         the newest (and the previous) checkpoint
    out_dir/summary.md, summary.json, *.png    the report (``report_benchmark``)

This module creates the folder and its ``config.json`` (atomically), checks on resume that the
config is the one that made it (:func:`prepare_run_dir`), and reads, checks and cuts back
``records.jsonl``. A file that is missing or damaged raises :class:`RunDirectoryError` naming
the file (and line).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoint import CheckpointError, write_atomically
from ..checks import SfnTeachError
from ..cpu import status as cpu_status
from ..distributed import rank, world_size
from .config import LOCATION_FIELDS, BenchmarkConfig
from .fields import ConfigError

__all__ = [
    "CHECKPOINT_FILE", "CONFIG_FILE", "RECORDS_FILE", "STORED_FIELDS", "RunDirectoryError",
    "check_records", "machine_description", "make_folder", "parse_json_object", "prepare_run_dir",
    "read_records", "read_run_config", "truncate_records"
]

CONFIG_FILE = "config.json"
RECORDS_FILE = "records.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
STORED_FIELDS = ("config", "name", "fast")  # what config.json always holds (and "machine")


class RunDirectoryError(SfnTeachError, RuntimeError):
    """A run directory cannot be written, or a file in it is missing or damaged."""


def read_records(path, count=None) -> list[dict]:
    """The records of one JSON Lines file, in order: all of them, or the first ``count``.

    Every line must be one JSON object; with ``count``, the first ``count`` lines must also be
    complete (end in a newline), as the records a checkpoint covers are. Raises
    :class:`RunDirectoryError` naming the file and the first line that is damaged or missing.
    """
    *complete, last = Path(path).read_bytes().split(b"\n")
    if count is None:
        lines = complete + [last] if last else complete
    elif len(complete) < count:
        raise RunDirectoryError(f"{path} has {len(complete)} complete lines, fewer than "
                                f"{count}: line {len(complete) + 1} is missing")
    else:
        lines = complete[:count]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(parse_json_object(line))
        except ValueError as error:
            raise RunDirectoryError(f"line {number} of {path} is damaged ({error})") from None
    return records


def parse_json_object(data: bytes) -> dict:
    """The JSON object that ``data`` (UTF-8) holds; a ValueError says why it holds none."""
    if not data.strip():
        raise ValueError("empty")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text: {error.reason} at byte {error.start}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} at character {error.pos}") from None
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


def check_records(records_path, state) -> None:
    """Refuse the checkpoint ``state`` (:class:`CheckpointError`) unless every record it
    covers is in ``records_path``, complete and readable; for ``load_latest_checkpoint``."""
    try:
        read_records(records_path, state["num_records"])
    except (RunDirectoryError, OSError) as error:
        raise CheckpointError(f"it covers {state['num_records']} records, but {error}") from None


def truncate_records(path: Path, count: int) -> None:
    """Cut the JSON Lines file ``path`` (created if missing) back to its first ``count`` lines.

    The caller has checked that it has that many (:func:`read_records`).
    """
    data = path.read_bytes() if path.exists() else b""
    end = sum(len(line) + 1 for line in data.split(b"\n")[:count])
    with open(path, "ab") as f:
        f.truncate(end)
        os.fsync(f.fileno())


def machine_description(device) -> str:
    """Where times are measured: the platform, torch version, CPU threads and how they wait
    (:func:`sfn_teach.cpu.status`), and the device."""
    where = f"device {device}"
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
    return (f"{platform.platform()}, {platform.machine()}, torch {torch.__version__}, "
            f"{cpu_status()}, {where}")


def _fields(value, path=""):
    """``{"train.seeds": [0, 1], "optimizers[0].lr": 0.1, …}``: the leaves of a config."""
    if isinstance(value, dict):
        items = [(f"{path}.{key}" if path else key, item) for key, item in value.items()]
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    else:
        return {path: value}
    return {field: leaf for key, item in items for field, leaf in _fields(item, key).items()}


def _differences(stored: dict, current: dict) -> list[str]:
    """The fields in which two configs (plus the fast flag) differ, location fields aside."""
    old, new = _fields(json.loads(json.dumps(stored))), _fields(json.loads(json.dumps(current)))
    return [f"{field} ({old.get(field, 'unset')!r} there, {new.get(field, 'unset')!r} now)"
            for field in sorted(old.keys() | new.keys())
            if field.removeprefix("config.") not in LOCATION_FIELDS
            and old.get(field) != new.get(field)]


def read_run_config(out_dir) -> dict:
    """The ``config.json`` of the run directory ``out_dir``: the fields of :data:`STORED_FIELDS`
    and the machine.

    Raises :class:`RunDirectoryError` naming the file when it is missing or damaged.
    """
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{out_dir} is not a run folder: it has no {CONFIG_FILE}")
    try:
        stored = parse_json_object(path.read_bytes())
    except ValueError as error:
        problem = str(error)
    else:
        if all(key in stored for key in STORED_FIELDS):
            return stored
        problem = f"a JSON object without the fields {', '.join(STORED_FIELDS)}"
    raise RunDirectoryError(f"{path} is damaged ({problem}); it says which config made the run "
                            f"folder {out_dir}: restore it, or delete the folder to start again")


def make_folder(folder: Path) -> None:
    """Create ``folder`` and its parents; raise :class:`RunDirectoryError` saying why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        in_the_way = next((path for path in (folder, *folder.parents)
                           if path.exists() and not path.is_dir()), None)
        reason = f"{in_the_way} is a file, not a folder" if in_the_way else error.strerror
        raise RunDirectoryError(f"cannot create the run folder {folder}: {reason}") from None


def prepare_run_dir(out_dir, config: BenchmarkConfig, fast: bool, resume: bool,
                    process_group=None) -> None:
    """Create ``out_dir`` with its ``config.json``, or check it matches when resuming.

    The fields of :data:`~sfn_teach.bench.config.LOCATION_FIELDS` may differ (where the
    verified data is found); the ``config.json`` of the first run is kept. Data-parallel, every
    rank checks and rank 0 writes, after all have checked. ``config.json`` is written
    atomically; a folder that cannot be written raises :class:`RunDirectoryError` (nothing
    is trained before).
    """
    out_dir = Path(out_dir)
    stored = {"config": config.raw, "name": config.name, "fast": fast}
    path = out_dir / CONFIG_FILE
    exists = path.exists()
    if exists:
        if not resume:
            raise FileExistsError(
                f"{out_dir} already holds a benchmark; pass --resume (resume=True) to continue "
                "it, or choose another output folder"
            )
        found = read_run_config(out_dir)
        differences = _differences({key: found.get(key) for key in stored}, stored)
        if differences:
            raise ConfigError(
                "file", f"{out_dir} was made with a different config or fast setting; resume "
                f"with the same one, or choose another output folder. Differences: "
                f"{'; '.join(differences)}"
            )
    if process_group is not None:
        dist.barrier(process_group)
    if exists or rank(process_group) != 0:
        return
    make_folder(out_dir)
    stored["machine"] = machine_description(config.device)
    if process_group is not None:
        stored["machine"] += (f", data-parallel over {world_size(process_group)} ranks "
                              f"({dist.get_backend(process_group)})")
    try:
        write_atomically(path, (json.dumps(stored, indent=2) + "\n").encode(), "config-write")
    except OSError as error:
        raise RunDirectoryError(f"cannot write {path}: {error.strerror}") from None
