"""Raw benchmark configs for the tests of the runner, its CLI and the tuner, built in one place.

Small float64 MLPs on the digits (:func:`digits_config`), changed one field at a time
(:func:`changed`) and written to a file for the CLI (:func:`write_config`); and
:func:`without_timing` for comparing the records of runs that should be identical.
"""

import copy
import json

from sfn_teach.train import TIMING_FIELDS

ADAM = {"name": "Adam", "type": "adam"}
SERIES_ADAPTIVE = {"name": "SeriesSFN adaptive", "type": "series_sfn", "adaptive": True,
                   "damping_factor": 0.9}
"""The paper's adaptive SeriesSFN; its other hyperparameters at their defaults."""
REMOVE = object()
"""The value that makes :func:`changed` remove a field."""


def digits_config(name, optimizers, hidden, **train) -> dict:
    """A raw config named ``name``: an MLP with the ``hidden`` layer widths on the digits in
    float64, trained by each of ``optimizers`` (tables) as the ``[train]`` table ``train``
    says."""
    return {"name": name, "task": "digits", "dtype": "float64", "model": {"hidden": list(hidden)},
            "train": train, "optimizers": [dict(table) for table in optimizers]}


def changed(config, path, value) -> dict:
    """A copy of ``config`` with the field at ``path`` (a tuple of keys and list indices) set to
    ``value``, or removed if ``value`` is :data:`REMOVE`."""
    config = copy.deepcopy(config)
    *parents, last = path
    table = config
    for key in parents:
        table = table[key]
    if value is REMOVE:
        del table[last]
    else:
        table[last] = value
    return config


def write_config(folder, raw):
    """Write ``raw`` to ``<folder>/<its name>.json``; the file's path."""
    path = folder / f"{raw['name']}.json"
    path.write_text(json.dumps(raw))
    return path


def without_timing(records) -> list:
    """The records without :data:`sfn_teach.train.TIMING_FIELDS`, which differ between runs
    that are otherwise identical."""
    return [{k: v for k, v in record.items() if k not in TIMING_FIELDS} for record in records]
