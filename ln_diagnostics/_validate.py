"""Argument checks shared by the public constructors: messages name the argument, what was
expected and what was received."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Return ``value`` if it is an int ``>= minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def check_optional_int(name: str, value: Any, *, minimum: int) -> int | None:
    """Like :func:`check_int`, but ``None`` passes through."""
    return None if value is None else check_int(name, value, minimum=minimum)


def check_globs(name: str, value: Any) -> tuple[str, ...]:
    """A string or a sequence of strings, returned as a tuple of glob patterns."""
    if value is None:
        return ()
    if isinstance(value, str):
        if value:
            return (value,)
    elif isinstance(value, Sequence) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError(
        f"{name} must be a glob string or a list of non-empty glob strings; got {value!r}"
    )


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value
