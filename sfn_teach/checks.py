"""Validation of arguments, and the errors of the package.

Every check returns the value (normalised) or raises an :class:`ArgumentError` that names the
argument in its ``field`` and says what is valid, so that the same mistake gets the same message
in every layer: the optimisers, the series, the models, the data, and the benchmark configs
(:mod:`sfn_teach.bench.fields` reports the same errors under the config field's dotted path).

Every error the package raises on purpose derives from :class:`SfnTeachError`, so that a caller
(the benchmark CLI) catches them all with one ``except``.
"""

from __future__ import annotations

import math

__all__ = [
    "ArgumentError", "ArgumentTypeError", "SfnTeachError",
    "choice", "flag", "integer", "real",
]


class SfnTeachError(Exception):
    """The base of every error sfn-teach raises on purpose (bad arguments, corrupt data,
    optimisers that give up, unusable run directories)."""


class ArgumentError(SfnTeachError, ValueError):
    """An argument is invalid: ``field`` names it, ``problem`` says what is wrong with it.

    ``str(error)`` is ``"<field> <problem>"``, e.g. ``"lr must be finite and > 0, got -1.0"``.
    """

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(self.describe())

    def describe(self) -> str:
        """The message: the field, then the problem."""
        return f"{self.field} {self.problem}"

    def __reduce__(self):  # pickled (e.g. by a worker process) as (field, problem)
        return type(self), (self.field, self.problem)


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument is of the wrong type (also a ``TypeError``)."""


def _finite_in(low, high, low_open, high_open) -> str:
    """``"finite and > 0"``, ``"finite and in [0, 1)"``: the valid range of a real, in words."""
    if high == math.inf:
        return f"finite and {'>' if low_open else '>='} {low:g}" if low > -math.inf else "finite"
    if low == -math.inf:
        return f"finite and {'<' if high_open else '<='} {high:g}"
    return f"finite and in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def real(name, value, low=-math.inf, high=math.inf, *, low_open=False, high_open=False) -> float:
    """``value`` as a float if it is a finite real with ``low ≤ value ≤ high`` (``<`` where the
    interval is open); an :class:`ArgumentTypeError` for a non-number (``bool`` included), else
    an :class:`ArgumentError` stating the interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(name, f"must be a real number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        raise ArgumentError(name, f"must be {_finite_in(low, high, low_open, high_open)}, "
                                  f"got {value}")
    return value


def integer(name, value, low=-math.inf, high=math.inf) -> int:
    """``value`` if it is an int with ``low ≤ value ≤ high``; an :class:`ArgumentTypeError` for
    a non-int (``bool`` included), else an :class:`ArgumentError`."""
    valid = f">= {low}" if high == math.inf else f"between {low} and {high}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(name, f"must be an int {valid}, got {value!r}")
    if not low <= value <= high:
        raise ArgumentError(name, f"must be an int {valid}, got {value}")
    return value


def flag(name, value) -> bool:
    """``value`` if it is ``True`` or ``False``, else an :class:`ArgumentTypeError`."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(name, f"must be True or False, got {value!r}")
    return value


def choice(name, value, choices):
    """``value`` if it is one of ``choices``, else an :class:`ArgumentError` listing them."""
    if value not in choices:
        raise ArgumentError(name, f"must be one of {tuple(choices)}, got {value!r}")
    return value
