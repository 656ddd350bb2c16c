"""Argument checks shared by the library: each raises ``ValueError`` naming the value.

One place for the messages, so that a bad count or learning rate reads the same wherever
it is given (a config, a sampler, a model, the training loop).
"""

from __future__ import annotations

import math
from collections.abc import Collection


def count(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in ``minimum..maximum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        limit = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name}={value!r} must be an integer {limit}.")
    return value


def positive_number(name: str, value: object) -> float:
    """``value`` if it is a finite number above zero (a learning rate, say)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{name}={value!r} must be a finite positive number.")
    return value


def finite_number(name: str, value: object) -> float:
    """``value`` if it is a finite number (a bias, say), of either sign."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number.")
    return value


def one_of(name: str, value: object, options: Collection) -> object:
    """``value`` if it is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name}={value!r} must be one of {tuple(options)}.")
    return value
