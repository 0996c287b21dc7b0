"""Validation of arguments: each check returns the value or raises an error that names it.

Shared by :mod:`sfn_teach.hvp`, :mod:`sfn_teach.update` and :mod:`sfn_teach.optim`, so that the
same mistake gets the same message everywhere.
"""

import math


def real(name, value, low, high=math.inf, *, low_open=False, high_open=False) -> float:
    """``value`` as a float if it is a finite real with ``low ≤ value ≤ high`` (``<`` where the
    interval is open); a TypeError for a non-number (``bool`` included), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if math.isnan(value) or too_low or too_high or math.isinf(value):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be finite and in {interval}, got {value}")
    return value


def integer(name, value, low) -> int:
    """``value`` if it is an int ``≥ low``; a TypeError for a non-int (``bool`` included), else
    a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return value


def flag(name, value) -> bool:
    """``value`` if it is ``True`` or ``False``, else a TypeError."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name, value, choices):
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
