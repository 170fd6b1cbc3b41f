"""The run's text summary and its hyperparameters, for TensorBoard's Text and HParams tabs.

The text summary (Markdown, which the Text tab renders) lists the diagnostics options, the report
of a ``NormSwap`` callback when one ran, and the watched layers with their type and parameter
count. The options that differ from their defaults also go to the HParams tab, with the model's
own hyperparameters, so that runs compare by what they vary.
They are written with ``torch.utils.tensorboard.summary.hparams`` through the run's own file
writer: ``SummaryWriter.add_hparams`` would create a separate sub-run instead.

Example:
    >>> print(options_markdown({"every_n_steps": 10, "include": None}))
    | option | value |
    |---|---|
    | `every_n_steps` | `10` |
    | `include` | `None` |
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from tensorboard.compat.proto.summary_pb2 import Summary

from ln_diagnostics._table import markdown_table

__all__ = [
    "HPARAM_PREFIX",
    "LayerRow",
    "changed_options",
    "constructor_options",
    "find_swap_report",
    "hparam_value",
    "hparams_summaries",
    "layers_markdown",
    "options_markdown",
    "run_summary_markdown",
]

#: Options of the diagnostics appear in the HParams tab as ``ln_diagnostics/<option>``.
HPARAM_PREFIX = "ln_diagnostics/"
#: Longest layer table written to the text summary; the rest is counted.
MAX_TABLE_ROWS = 500


class LayerRow(NamedTuple):
    """One watched layer: qualified name, class name, trainable parameter count, tag group."""

    name: str
    type: str
    params: int
    group: str | None = None


def layers_markdown(rows: Sequence[LayerRow], *, max_rows: int = MAX_TABLE_ROWS) -> str:
    """A Markdown table of the watched layers, in selection order.

    Example:
        >>> print(layers_markdown([LayerRow("net.0", "Linear", 40)]))
        | # | layer | type | parameters |
        |---|---|---|---|
        | 0 | `net.0` | Linear | 40 |
    """
    grouped = any(row.group is not None for row in rows)
    header = ["#", "layer", "type", "parameters", *(["logged as"] if grouped else [])]
    cells = []
    for k, row in enumerate(rows[:max_rows]):
        cells.append([str(k), f"`{row.name}`", row.type, f"{row.params:,}"])
        if grouped:
            cells[-1].append(f"`{row.group}`" if row.group is not None else "")
    text = markdown_table(header, cells)
    if len(rows) > max_rows:
        text += f"\n\n… and {len(rows) - max_rows} more layers."
    return text


def options_markdown(options: Mapping[str, Any]) -> str:
    """A Markdown table of option names and values."""
    return markdown_table(
        ["option", "value"], [[f"`{k}`", f"`{hparam_value(v)}`"] for k, v in options.items()]
    )


def run_summary_markdown(
    rows: Sequence[LayerRow],
    options: Mapping[str, Any],
    *,
    swap_report: str | None = None,
    title: str = "Layer diagnostics",
) -> str:
    """The whole text summary: headline, options, NormSwap report (if any) and the layer table.

    Example:
        >>> text = run_summary_markdown([LayerRow("0", "Linear", 3)], {"every_n_steps": 1})
        >>> text.splitlines()[0]
        '## Layer diagnostics: 1 layer watched, 3 trainable parameters'
    """
    n_params = sum(row.params for row in rows)
    layers = "layer" if len(rows) == 1 else "layers"
    parts = [
        f"## {title}: {len(rows)} {layers} watched, {n_params:,} trainable parameters",
        "### Options",
        options_markdown(options),
    ]
    if swap_report:
        parts += ["### NormSwap", swap_report]
    parts += ["### Watched layers (forward hooks, in registration order)", layers_markdown(rows)]
    return "\n\n".join(parts)


def constructor_options(obj: object, *holders: object) -> dict[str, Any]:
    """The keyword arguments of ``type(obj).__init__`` with the values ``obj`` holds for them.

    A value is looked up as an attribute of ``obj``, of ``obj.options``, then of each of
    ``holders``; arguments stored under another name are left out. New constructor options show
    up without extra code.

    Example:
        >>> class Opts:
        ...     def __init__(self, *, every_n_steps: int = 1, secret: int = 0):
        ...         self.every_n_steps = every_n_steps
        >>> constructor_options(Opts(every_n_steps=5))
        {'every_n_steps': 5}
    """
    search = [obj, getattr(obj, "options", None), *holders]
    found: dict[str, Any] = {}
    for name, param in inspect.signature(type(obj).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        for holder in search:
            if holder is not None and hasattr(holder, name):
                found[name] = getattr(holder, name)
                break
    return found


def changed_options(obj: object, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` whose value differs from the default of ``type(obj).__init__``.

    What the HParams tab shows: runs then compare by what they vary, not by a wall of defaults.
    A value that cannot be compared with its default (a probe batch tensor) counts as changed.

    Example:
        >>> class Opts:
        ...     def __init__(self, *, every_n_steps: int | None = None, track: bool = True): ...
        >>> changed_options(Opts(), {"every_n_steps": 10, "track": True})
        {'every_n_steps': 10}
    """
    params = inspect.signature(type(obj).__init__).parameters
    changed = {}
    for name, value in options.items():
        default = params[name].default if name in params else inspect.Parameter.empty
        if default is inspect.Parameter.empty or not _equal(value, default):
            changed[name] = value
    return changed


def _equal(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if default is None:  # a ``None`` default may be stored as an empty tuple (no globs)
        return isinstance(value, (tuple, list)) and not value
    if value is None:
        return False
    try:
        return bool(value == default)
    except (TypeError, ValueError, RuntimeError):  # e.g. a tensor compared element-wise
        return False


def find_swap_report(callbacks: Iterable[Any]) -> Any | None:
    """The report of the first callback that swapped normalization layers, or ``None``.

    Recognised by what it offers (a ``report`` with ``swapped`` and ``to_markdown``), so any
    Lightning package's ``NormSwap`` qualifies.
    """
    for callback in callbacks:
        report = getattr(callback, "report", None)
        if hasattr(report, "swapped") and callable(getattr(report, "to_markdown", None)):
            return report
    return None


def hparam_value(value: Any) -> bool | int | float | str:
    """A short value the HParams plugin accepts.

    Numbers, bools and strings stay as they are; ``None`` becomes ``"None"``, classes and
    functions their qualified name, lists and tuples a comma-separated string, anything else
    (a probe batch tensor, say) its type name in angle brackets.

    Example:
        >>> hparam_value(["net.*", "head"]), hparam_value(None), hparam_value(3)
        ('net.*,head', 'None', 3)
    """
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):  # an empty one is how a ``None`` glob list is kept
        return ",".join(str(hparam_value(v)) for v in value) if value else "None"
    qualname = getattr(value, "__qualname__", None)
    if isinstance(qualname, str):
        return f"{getattr(value, '__module__', '')}.{qualname}".lstrip(".")
    return f"<{type(value).__name__}>"


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def hparams_summaries(
    options: Mapping[str, Any],
    metrics: Sequence[str],
    *,
    model_hparams: Mapping[str, Any] | None = None,
) -> list[Summary]:
    """The three ``Summary`` protos of an HParams session for this run.

    Args:
        options: the diagnostics options; logged as ``ln_diagnostics/<name>``.
        metrics: scalar tags the HParams tab shows next to the options (last value per run).
        model_hparams: the model's own hyperparameters (e.g. ``LightningModule.hparams_initial``),
            kept under their own names. TensorBoard keeps the first HParams session of a run, so
            a session written before Lightning's must carry the model's hyperparameters too.

    Example:
        >>> exp, start, end = hparams_summaries({"every_n_steps": 5}, ["health/grad_norm_total"])
        >>> start.value[0].tag
        '_hparams_/session_start_info'
    """
    from torch.utils.tensorboard.summary import hparams

    flat = {k: hparam_value(v) for k, v in _flatten(model_hparams or {}).items()}
    flat.update({f"{HPARAM_PREFIX}{k}": hparam_value(v) for k, v in options.items()})
    return list(hparams(flat, dict.fromkeys(metrics, 0.0)))
