"""Set fields of a raw config by dotted paths: the CLI's ``--set optimizers[1].lr=0.1``.

A path is dot-separated field names, each optionally followed by list indices
(``optimizers[1]``). :func:`apply_overrides` sets the fields of a copy of the config before it
is validated, so an overridden value is checked like any other
(:func:`sfn_teach.bench.config.validate_config`); the tuner sets a trial's sampled
hyperparameters the same way.
"""

from __future__ import annotations

import copy
import re

from .fields import ConfigError

__all__ = ["apply_overrides"]


def _field_keys(path: str) -> list:
    """``"optimizers[1].lr"`` as ``["optimizers", 1, "lr"]``."""
    name = r"[A-Za-z_]\w*(\[\d+\])*"
    if not isinstance(path, str) or not re.fullmatch(rf"{name}(\.{name})*", path):
        raise ConfigError(str(path), "is not a field path like data.dir or optimizers[1].lr")
    return [int(index) if index else key
            for key, index in re.findall(r"([A-Za-z_]\w*)|\[(\d+)\]", path)]


def _step_into(node, key, path):
    """Check that ``node[key]`` can be read or set: a table for a name, a list entry for an int."""
    if isinstance(key, int):
        if not isinstance(node, list) or key >= len(node):
            raise ConfigError(path, f"has no list entry [{key}]")
    elif not isinstance(node, dict):
        raise ConfigError(path, f"{key!r} is inside a value that is not a table")


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """A copy of ``raw`` with ``{"data.dir": "/x", "optimizers[1].lr": 0.1, …}`` set.

    Missing tables are created, list entries must exist. The values are validated later, with
    the rest of the config.
    """
    raw = copy.deepcopy(raw)
    for path, value in overrides.items():
        *parents, last = _field_keys(path)
        node = raw
        for key in parents:
            _step_into(node, key, path)
            node = node[key] if isinstance(key, int) else node.setdefault(key, {})
        _step_into(node, last, path)
        node[last] = value
    return raw
