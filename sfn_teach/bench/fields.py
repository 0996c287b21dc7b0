"""Checks of config fields: each returns the value or raises :class:`ConfigError` naming it.

A field is named by its dotted path in the config (``"train.steps"``, ``"optimizers[1].lr"``,
``"tune.space.SGD.lr"``), so that an error says exactly which line of the file to fix. The
checks are those of :mod:`sfn_teach.checks`, reported under the path; an
:class:`~sfn_teach.checks.ArgumentError` raised by the library for a table's entry (an
optimiser's hyperparameter, a model's width) becomes a :class:`ConfigError` of
``table.entry`` by :meth:`ConfigError.within`. The benchmark configs
(:mod:`sfn_teach.bench.config`) and the tuning settings (:mod:`sfn_teach.bench.tune`) share
these checks.
"""

from __future__ import annotations

import math

from .. import checks
from ..checks import ArgumentError

__all__ = ["ConfigError", "check_choice", "check_int", "check_number", "check_positive_number",
           "check_table"]


class ConfigError(ArgumentError):
    """A config field is missing, unknown, of the wrong type or out of range.

    ``field`` is the dotted path of the bad field, e.g. ``"optimizers[1].lr"``;
    ``str(error)`` is ``"config field '<field>': <problem>"``.
    """

    def describe(self) -> str:
        """The message: ``config field '<field>': <problem>``."""
        return f"config field '{self.field}': {self.problem}"

    @classmethod
    def within(cls, table: str, error: ArgumentError, context: str = "") -> ConfigError:
        """The error of ``error.field`` in the config table ``table`` (``"model"``,
        ``"optimizers[1]"``), its problem prefixed by ``context``."""
        return cls(f"{table}.{error.field}" if table else error.field, context + error.problem)


def _reported(check, path, *args, **kwargs):
    """``check(path, *args)`` of :mod:`sfn_teach.checks`, its error as a :class:`ConfigError`."""
    try:
        return check(path, *args, **kwargs)
    except ArgumentError as error:
        raise ConfigError(error.field, error.problem) from None


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
    return _reported(checks.integer, path, value, low, high)


def check_number(value, path) -> float:
    """``value`` as a float if it is a finite integer or float (not a bool)."""
    return _reported(checks.real, path, value)


def check_positive_number(value, path, allow_zero=False) -> float:
    """``value`` as a float if it is a finite number > 0 (>= 0 with ``allow_zero``)."""
    return _reported(checks.real, path, value, 0.0, low_open=not allow_zero)


def check_choice(value, path, choices) -> str:
    """``value`` if it is one of the strings ``choices``."""
    return _reported(checks.choice, path, value, choices)
