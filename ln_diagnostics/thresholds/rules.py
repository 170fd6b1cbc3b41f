"""Threshold rules: parse and validate the ``[[rule]]`` tables of a threshold file.

A threshold file is TOML with one ``[[rule]]`` table per rule:

.. code-block:: toml

    [[rule]]
    name = "no exploding gradients"   # optional label
    tag = "gradients/norm/*"          # required: glob over scalar tags ('*' may cross '/')
    max = 10.0                        # min and/or max, at least one
    over = "all"                      # all (default) | last | mean | max | min
    after_step = 0                    # only steps >= after_step count (warm-up)
    optional = false                  # a rule that matches no tag is an error unless optional
    severity = "error"                # error (default): a failure fails the check; warn: it
                                      # is reported as WARN and the check still passes

    [[rule]]
    finding = "vanishing_gradients"   # instead of tag/min/max: fail when the diagnosis finds
                                      # this kind (a glob: "*" is any finding but "healthy")

This module is pure Python (no Lightning, no TensorBoard) so the callback and the CLI share it.

Example:
    >>> rules = parse_rules([{"tag": "gradients/norm/*", "max": 10.0}], source="rules")
    >>> rules[0].label, rules[0].bound_text
    ('gradients/norm/*', 'max 10')
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from ln_diagnostics.tags import matches

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

Over = Literal["all", "last", "mean", "max", "min"]
OVER_CHOICES: tuple[str, ...] = ("all", "last", "mean", "max", "min")
Severity = Literal["error", "warn"]
SEVERITY_CHOICES: tuple[str, ...] = ("error", "warn")
#: Keys a ``finding`` rule cannot have (it has no bounds and reduces no series).
_SERIES_KEYS: tuple[str, ...] = ("tag", "min", "max", "over")
MAX_RULE_FILE_BYTES = 16 << 20  # ~300k rules: room for generated files, not for /dev/zero
_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")


class RuleError(ValueError):
    """A threshold file or rule list is malformed.

    The message names the file (or argument), the rule and key, what was expected and what was
    received, e.g. ``thresholds.toml:4: rule 1 ('grad'): key 'over' must be one of all, last,
    mean, max, min; got 'median'``.
    """


@dataclass(frozen=True)
class Rule:
    """One validated threshold rule.

    Attributes:
        tag: glob over scalar tags, matched with :func:`fnmatch.fnmatchcase` (``*`` crosses ``/``).
        min: lower bound (inclusive), or ``None``.
        max: upper bound (inclusive), or ``None``.
        over: how the logged steps of one tag are reduced: ``"all"`` checks every point,
            ``"last"``/``"mean"``/``"max"``/``"min"`` check one aggregate value.
        after_step: points logged at a step below this are ignored.
        optional: when ``False`` a rule that matches no tag is an error.
        severity: ``"error"`` (a failure fails the check or the training run) or ``"warn"``
            (a failure is reported as a warning and passes).
        name: an optional label; :attr:`label` falls back to the tag pattern.
        finding: for a finding rule, a glob over the diagnosis's finding kinds (then ``tag``
            is empty and there are no bounds): the rule fails when a matching finding holds at
            a step ``>= after_step``.

    Example:
        >>> Rule(tag="health/grad_norm_total", max=100.0, over="max").bound_text
        'max 100'
    """

    tag: str = ""
    min: float | None = None
    max: float | None = None
    over: Over = "all"
    after_step: int = 0
    optional: bool = False
    name: str = ""
    finding: str = ""
    severity: Severity = "error"

    @property
    def label(self) -> str:
        """The rule's name, or its tag pattern (``finding <kind>``) when unnamed."""
        return self.name or self.tag or f"finding {self.finding}"

    @property
    def bound_text(self) -> str:
        """The bounds in words, e.g. ``"min 0, max 10"`` (``"no finding"`` for a finding rule)."""
        if self.finding:
            return "no finding"
        parts = []
        if self.min is not None:
            parts.append(f"min {self.min:g}")
        if self.max is not None:
            parts.append(f"max {self.max:g}")
        return ", ".join(parts)

    @cached_property
    def key(self) -> str:
        """A stable identity used in callback state (label plus every setting; the default
        severity is left out, so the keys of older checkpoints still match)."""
        return (
            f"{self.label}|{self.tag}|{self.over}|{self.min}|{self.max}|"
            f"{self.after_step}|{self.optional}"
            + ("" if self.severity == "error" else f"|{self.severity}")
            + (f"|{self.finding}" if self.finding else "")
        )


def _type_name(value: Any) -> str:
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Key:
    """How one rule key is validated: the default, what is expected, and a test of a value."""

    default: Any
    expected: str
    valid: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda value: value
    choices: tuple[str, ...] = ()


def _choice(default: str, choices: tuple[str, ...]) -> _Key:
    return _Key(default, f"one of {', '.join(choices)}", lambda v: v in choices, choices=choices)


def _number() -> _Key:
    return _Key(None, "a number", lambda v: _is_number(v) and not math.isnan(v), convert=float)


_REQUIRED = object()
# One entry per key of a [[rule]] table, in the order messages list them; a new key is one
# entry here and one field of ``Rule``.
_KEYS: dict[str, _Key] = {
    "name": _Key("", "a string", lambda v: isinstance(v, str)),
    "tag": _Key(
        _REQUIRED,
        "a non-empty string glob such as 'gradients/norm/*'",
        lambda v: isinstance(v, str) and bool(v.strip()),
    ),
    "min": _number(),
    "max": _number(),
    "over": _choice("all", OVER_CHOICES),
    "after_step": _Key(
        0,
        "a non-negative integer",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    ),
    "optional": _Key(False, "true or false", lambda v: isinstance(v, bool)),
    "severity": _choice("error", SEVERITY_CHOICES),
}
RULE_KEYS: tuple[str, ...] = (*_KEYS, "finding")  # a finding rule: see _parse_finding


def _value(raw: Mapping[str, Any], key: str, where: str) -> Any:
    spec = _KEYS[key]
    if key not in raw or (raw[key] is None and spec.default is None):
        return spec.default
    value = raw[key]
    if not spec.valid(value):
        got = repr(value) if spec.choices else f"{_type_name(value)} {value!r}"
        raise RuleError(f"{where}: key {key!r} must be {spec.expected}; got {got}")
    return spec.convert(value)


def _parse_one(raw: Any, where: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise RuleError(f"{where}: expected a table of rule keys; got {_type_name(raw)} {raw!r}")
    name = _value(raw, "name", where)
    if name:
        where = f"{where} ({name!r})"
    unknown = [key for key in raw if key not in RULE_KEYS]
    if unknown:
        raise RuleError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; valid keys: {', '.join(RULE_KEYS)}"
        )
    if "finding" in raw:
        return _parse_finding(raw, where, name)
    if "tag" not in raw:
        raise RuleError(f"{where}: missing required key 'tag' (a glob such as 'gradients/norm/*')")
    values = {key: _value(raw, key, where) for key in _KEYS}
    low, high = values["min"], values["max"]
    if low is None and high is None:
        raise RuleError(f"{where}: expected at least one of 'min' or 'max'; got neither")
    if low is not None and high is not None and low > high:
        raise RuleError(f"{where}: 'min' must not exceed 'max'; got min = {low:g} > max = {high:g}")
    return Rule(**values)


def _parse_finding(raw: Mapping[str, Any], where: str, name: str) -> Rule:
    from ln_diagnostics.diagnose import KINDS

    pattern = raw["finding"]
    if not isinstance(pattern, str) or not any(matches(k, [pattern]) for k in KINDS):
        raise RuleError(
            f"{where}: key 'finding' must be a finding kind or a glob over them "
            f"({', '.join(KINDS)}); got {_type_name(pattern)} {pattern!r}"
        )
    extra = [key for key in _SERIES_KEYS if key in raw]
    if extra:
        raise RuleError(
            f"{where}: a 'finding' rule has no {', '.join(repr(k) for k in extra)}; it fails "
            "when the diagnosis finds that kind (keep 'name', 'after_step', 'optional')"
        )
    # after_step and optional are checked as for any rule
    rest = {k: v for k, v in raw.items() if k in ("after_step", "optional", "severity")}
    rule = _parse_one({**rest, "tag": "*", "max": 0.0}, where)
    return Rule(
        finding=pattern,
        after_step=rule.after_step,
        optional=rule.optional,
        severity=rule.severity,
        name=name,
    )


def parse_rules(
    raw_rules: Any, *, source: str = "rules", lines: Sequence[int] | None = None
) -> tuple[Rule, ...]:
    """Validate a list of rule mappings.

    Args:
        raw_rules: a list of dicts with the keys of a ``[[rule]]`` table.
        source: what to call the input in messages (an argument name or a file path).
        lines: optional 1-based line of each rule's header, used in messages.

    Returns:
        The rules, in input order.

    Raises:
        RuleError: naming the source, the rule, the key, what was expected and what was received.

    Example:
        >>> parse_rules([{"tag": "health/*", "min": 0}])[0].min
        0.0
        >>> parse_rules([{"tag": "health/*"}])
        Traceback (most recent call last):
        ...
        ln_diagnostics.thresholds.rules.RuleError: rules: rule 1: expected at least one of \
'min' or 'max'; got neither
    """
    if isinstance(raw_rules, (str, bytes)) or not isinstance(raw_rules, Sequence):
        raise RuleError(
            f"{source}: expected a list of rules (tables with keys {', '.join(RULE_KEYS)}); "
            f"got {_type_name(raw_rules)}"
        )
    if not raw_rules:
        raise RuleError(f"{source}: expected at least one rule; got none")
    rules = []
    for index, raw in enumerate(raw_rules):
        line = f":{lines[index]}" if lines is not None and index < len(lines) else ""
        rules.append(_parse_one(raw, f"{source}{line}: rule {index + 1}"))
    return tuple(rules)


def load_rules(path: str | os.PathLike[str]) -> tuple[Rule, ...]:
    """Read and validate a TOML threshold file.

    Args:
        path: the threshold file.

    Returns:
        The rules, in file order.

    Raises:
        RuleError: the file is missing, over 16 MiB, not valid TOML (the message gives line and
            column), has keys other than ``rule``, or a rule is invalid.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "t.toml"
        >>> _ = file.write_text('[[rule]]\\ntag = "gradients/norm/*"\\nmax = 10.0\\n')
        >>> load_rules(file)[0].max
        10.0
    """
    file = Path(path)
    try:
        with open(file, "rb") as stream:  # not read_text: /dev/zero would fill the memory
            data = stream.read(MAX_RULE_FILE_BYTES + 1)
        if len(data) > MAX_RULE_FILE_BYTES:
            raise RuleError(
                f"threshold file '{file}' is larger than {MAX_RULE_FILE_BYTES >> 20} MiB; "
                "expected a TOML file of [[rule]] tables (is it the right path?)"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise RuleError(f"threshold file '{file}' does not exist") from None
    except IsADirectoryError:
        raise RuleError(f"threshold file '{file}' is a directory; expected a TOML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RuleError(f"cannot read threshold file '{file}': {error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RuleError(f"threshold file '{file}' is not valid TOML: {error}") from None
    unknown = [key for key in data if key != "rule"]
    if unknown:
        raise RuleError(
            f"{file}: unknown top-level key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; expected only [[rule]] tables"
        )
    if "rule" not in data:
        raise RuleError(f"{file}: expected at least one [[rule]] table; got none")
    raw_rules = data["rule"]
    if not isinstance(raw_rules, list):
        raise RuleError(
            f"{file}: 'rule' must be an array of tables written as [[rule]]; "
            f"got {_type_name(raw_rules)}"
        )
    headers = [n for n, line in enumerate(text.splitlines(), 1) if _RULE_HEADER.match(line)]
    lines = headers if len(headers) == len(raw_rules) else None
    return parse_rules(raw_rules, source=str(file), lines=lines)
