"""Checks of config fields: each returns the value or raises :class:`ConfigError` naming it.

A field is named by its dotted path in the config (``"train.steps"``, ``"optimizers[1].lr"``,
``"tune.space.SGD.lr"``), so that an error says exactly which line of the file to fix. The
benchmark configs (:mod:`sfn_teach.bench.config`) and the tuning settings
(:mod:`sfn_teach.bench.tune`) share these checks.
"""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """A config field is missing, unknown, of the wrong type or out of range.

    ``field`` is the dotted path of the bad field, e.g. ``"optimizers[1].lr"``.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"config field '{field}': {message}")
        self.field = field


def check_table(value, path, allowed, required=()) -> dict:
    """``value`` if it is a table whose keys are all ``allowed`` and include ``required``."""
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be a table, got {type(value).__name__} {value!r}")
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}" if path else key,
                              f"unknown field (valid: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise ConfigError(f"{path}.{key}" if path else key, "missing (required)")
    return value


def check_int(value, path, low=-math.inf, high=math.inf) -> int:
    """``value`` if it is an integer (not a bool) with ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        bound = f"between {low} and {high}" if high < math.inf else f">= {low}"
        raise ConfigError(path, f"must be an integer {bound}, got {value}")
    return value


def check_number(value, path) -> float:
    """``value`` as a float if it is an integer or a float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_positive_number(value, path, allow_zero=False) -> float:
    """``value`` as a float if it is a finite number > 0 (>= 0 with ``allow_zero``)."""
    number = check_number(value, path)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(path, f"must be a finite number {'>=' if allow_zero else '>'} 0, "
                                f"got {value}")
    return number


def check_choice(value, path, choices) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(path, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
