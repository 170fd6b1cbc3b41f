"""Exceptions raised by ln-diagnostics."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ArgumentError", "ThresholdViolation"]

#: How many failing tags a ``ThresholdViolation`` message names before "and N more".
SHOWN_TAGS = 10


class ArgumentError(ValueError, TypeError):
    """A public constructor or function refused an argument.

    Every argument check of the package raises it, with one message for one bad value whichever
    constructor received it: the argument's name, what was expected and what was received. It
    is both a ``ValueError`` and a ``TypeError``, so ``except ValueError`` and
    ``except TypeError`` both catch it, whichever of the two the bad value suggests.

    Attributes:
        argument: the name of the refused argument (``"include"``, ``"exclude[1]"``...).

    Example:
        >>> from ln_diagnostics import swap_batchnorm
        >>> from torch import nn
        >>> try:
        ...     swap_batchnorm(nn.BatchNorm1d(2), copy_affine=0)
        ... except TypeError as error:  # or ValueError
        ...     print(error.argument, "|", error)
        copy_affine | copy_affine must be True or False; got 0
    """

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ArgumentError], tuple[str, str]]:
        # the default rebuilds from ``args`` (the message alone) and would lose ``argument``
        return type(self), (self.argument, str(self))


class ThresholdViolation(RuntimeError):
    """A logged diagnostic left the bounds set by a threshold rule.

    Attributes:
        rule: the rule's name (or its tag pattern when unnamed).
        tag: the scalar tag that violated the rule the most (the worst value).
        value: the offending value.
        bound: a human-readable bound, e.g. ``"max 10"`` or ``"max 10, over mean"``.
        step: the global step at which the value was logged.
        failing: every tag that fails the rule at that point, ``tag`` included, in the order
            the message names them (the first ``SHOWN_TAGS``, then a count).

    Example:
        >>> failing = ["g/n.2", "g/n.10"]
        >>> error = ThresholdViolation("g", "g/n.10", 50.0, "max 10", 3, failing=failing)
        >>> str(error)
        "threshold rule 'g' violated: g/n.10 = 50 at step 3 (max 10); 2 tags fail: g/n.2, g/n.10"
    """

    def __init__(
        self,
        rule: str,
        tag: str,
        value: float,
        bound: str,
        step: int,
        *,
        failing: Sequence[str] = (),
    ) -> None:
        self.rule = rule
        self.tag = tag
        self.value = value
        self.bound = bound
        self.step = step
        self.failing = tuple(failing) or (tag,)
        message = f"threshold rule {rule!r} violated: {tag} = {value:.6g} at step {step} ({bound})"
        if len(self.failing) > 1:
            more = len(self.failing) - SHOWN_TAGS
            message += f"; {len(self.failing)} tags fail: {', '.join(self.failing[:SHOWN_TAGS])}"
            message += f", and {more} more" if more > 0 else ""
        super().__init__(message)
