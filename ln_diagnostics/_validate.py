"""The argument checks of every public constructor and function, one function per kind of check.

Each raises :class:`~ln_diagnostics.errors.ArgumentError` (a ``ValueError`` and a ``TypeError``)
with a message that names the argument, what was expected and what was received, so one bad
value gets one message whichever constructor received it.

Example:
    >>> check_globs("include", ["encoder.*"])
    ('encoder.*',)
    >>> check_globs("exclude", 5)
    Traceback (most recent call last):
    ...
    ln_diagnostics.errors.ArgumentError: exclude must be a glob string or a list of non-empty glob strings; got 5
"""  # noqa: E501

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from typing import Any

from ln_diagnostics.errors import ArgumentError

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def describe(value: Any) -> str:
    """``repr(value)``, shortened for long strings and containers.

    Example:
        >>> describe(list(range(100)))
        '[0, 1, 2, 3, 4, 5, 6, 7, ...]'
    """
    return _REPR.repr(value)


def argument_error(name: str, expected: str, got: str) -> ArgumentError:
    """The error for argument ``name``: ``"{name} must be {expected}; got {got}"``.

    Example:
        >>> str(argument_error("types", "None or a non-empty list of classes", describe([])))
        'types must be None or a non-empty list of classes; got []'
    """
    return ArgumentError(name, f"{name} must be {expected}; got {got}")


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Return ``value`` if it is an int ``>= minimum`` (bools are refused).

    Example:
        >>> check_int("every_n_steps", True, minimum=1)
        Traceback (most recent call last):
        ...
        ln_diagnostics.errors.ArgumentError: every_n_steps must be an integer >= 1; got True
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise argument_error(name, f"an integer >= {minimum}", describe(value))
    return value


def check_optional_int(name: str, value: Any, *, minimum: int) -> int | None:
    """Like :func:`check_int`, but ``None`` passes through."""
    return None if value is None else check_int(name, value, minimum=minimum)


def check_number(name: str, value: Any, *, minimum: float, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite int or float ``>= minimum`` (``> minimum``
    when ``strict``); bools are refused.

    Example:
        >>> check_number("eps", -1.0, minimum=0)
        Traceback (most recent call last):
        ...
        ln_diagnostics.errors.ArgumentError: eps must be a finite number >= 0; got -1.0
    """
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise argument_error(
            name, f"a finite number {'>' if strict else '>='} {minimum:g}", describe(value)
        )
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (``0`` and ``1`` are refused)."""
    if not isinstance(value, bool):
        raise argument_error(name, "True or False", describe(value))
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices`` (the message lists them).

    Example:
        >>> check_choice("target", "bn", ("layernorm", "rmsnorm"))
        Traceback (most recent call last):
        ...
        ln_diagnostics.errors.ArgumentError: target must be one of 'layernorm', 'rmsnorm'; got 'bn'
    """
    if not isinstance(value, str) or value not in choices:
        raise argument_error(name, f"one of {', '.join(repr(c) for c in choices)}", describe(value))
    return value


def check_globs(name: str, value: Any, *, allow_empty: bool = True) -> tuple[str, ...]:
    """A glob string or a list (any sequence) of non-empty glob strings, returned as a tuple;
    ``None`` gives ``()``. An empty list gives ``()`` too, unless ``allow_empty`` is false
    (for an option where ``None`` means "no filter" and ``[]`` would match nothing).

    Sets are refused: their order changes from run to run, and the patterns' order is part of
    a callback's checkpoint key.

    Example:
        >>> check_globs("include", "encoder.*"), check_globs("exclude", None)
        (('encoder.*',), ())
    """
    if value is None:
        return ()
    if isinstance(value, str):
        if value:
            return (value,)
    elif isinstance(value, Sequence) and all(isinstance(v, str) and v for v in value):
        if value or allow_empty:
            return tuple(value)
        raise argument_error(
            name, "None or a glob string or a non-empty list of glob strings", describe(value)
        )
    raise argument_error(name, "a glob string or a list of non-empty glob strings", describe(value))


def check_callable(name: str, value: Any, signature: str) -> Any:
    """Return ``value`` if it is ``None`` or callable; ``signature`` describes the call.

    Example:
        >>> check_callable("ics_loss", 1, "(module, batch) -> scalar loss tensor")
        Traceback (most recent call last):
        ...
        ln_diagnostics.errors.ArgumentError: ics_loss must be a callable (module, batch) -> scalar loss tensor or None; got 1
    """  # noqa: E501
    if value is not None and not callable(value):
        raise argument_error(name, f"a callable {signature} or None", describe(value))
    return value


def check_instance(name: str, value: Any, cls: type | tuple[type, ...], expected: str) -> Any:
    """Return ``value`` if it is an instance of ``cls``; ``expected`` names it in the message,
    which reports the type received (the repr of a wrong object, a model say, is rarely short).

    Example:
        >>> check_instance("model", {}, int, "an int")
        Traceback (most recent call last):
        ...
        ln_diagnostics.errors.ArgumentError: model must be an int; got dict
    """
    if not isinstance(value, cls):
        raise argument_error(name, expected, type(value).__name__)
    return value
