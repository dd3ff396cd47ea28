"""One-line option checks shared by the modules that validate their own config sections, and
the parsing of comma-separated config values."""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable

from cpt_jax.errors import UserError

_WARNED: set[str] = set()
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated config value (``data.domains``, ``data.upstream``, ...),
    stripped, empty ones dropped, in order."""
    return [item.strip() for item in text.split(",") if item.strip()]


def choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise UserError(f"{name} '{value}' is not one of {', '.join(map(str, allowed))}")


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{name} must be positive, got {value}")


def at_least_zero(name: str, value: float, meaning: str = "") -> None:
    if not value >= 0:
        raise UserError(f"{name} must be >= 0{f' ({meaning})' if meaning else ''}, got {value}")


def unit_interval(name: str, value: float, closed_top: bool = True, meaning: str = "") -> None:
    """``value`` in [0, 1] (or [0, 1) when ``closed_top`` is False)."""
    ok = 0.0 <= value <= 1.0 if closed_top else 0.0 <= value < 1.0
    if not ok:
        span = "[0, 1]" if closed_top else "[0, 1)"
        raise UserError(f"{name} must be in {span}{f' ({meaning})' if meaning else ''}, got {value}")


def positive_number(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{name} must be a positive number, got {value}")


def dtype_name(name: str, value: Any, allowed: Iterable[str] = FLOAT_DTYPES) -> str:
    """A dtype given as ``jnp.float32``, ``np.float32``, ``np.dtype("float32")`` or ``"float32"``,
    as its name (``"float32"``); one ``UserError`` naming ``name`` when it is none of ``allowed``."""
    import numpy as np

    if isinstance(value, str):
        text = value
    else:
        try:
            text = np.dtype(value).name
        except TypeError:
            text = repr(value)
    choice(name, text, allowed)
    return text


def warn_once(message: str | None) -> None:
    """Print a warning line once per process (validation runs again for every derived config)."""
    if message and message not in _WARNED:
        _WARNED.add(message)
        print(message, file=sys.stderr)
