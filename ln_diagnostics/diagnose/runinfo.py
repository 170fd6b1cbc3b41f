"""What the diagnosis needs to know about a run besides its scalars: the watched layers in forward
order (name, module type, whether it owns parameters) and the per-device batch sizes of training
and of validation.

The callback knows these from the model; ``ln-diagnostics diagnose`` has only the event file. So
``LayerDiagnostics`` writes them once, at the first logging step (when forward order is known),
as the JSON text record ``diagnostics/layers``, and again at the next logging step (or at fit
end) when the first validation batch comes after it::

    {"version": 1, "layers": [["net.0", "Linear", true], ["net.1", "Tanh", false]],
     "batch_size": 64, "eval_batch_size": 1}

The newest record of a run is the one read; a record without ``eval_batch_size`` (older logs, or
a run without validation) leaves it unknown.

Without that record (logs from an older version, or from another writer) :meth:`RunInfo.from_tags`
rebuilds the forward order from the order in which the layers' tags were first written (the
collector writes a step's activations in forward order) and "owns parameters" from the presence
of ``parameters/norm/<layer>``; module types and the batch sizes are then unknown, so the rules
that need them (dead ReLU units, BatchNorm at a small batch) stay silent, and the diagnosis says
which source it used.

Example:
    >>> info = RunInfo((LayerInfo("net.0", "Linear", True), LayerInfo("net.1", "ReLU", False)), 32)
    >>> RunInfo.from_json(info.to_json()) == info
    True
    >>> [l.name for l in RunInfo.from_tags(["activations/std/a", "activations/std/b"]).layers]
    ['a', 'b']
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from ln_diagnostics.tags import LAYER_GROUPS, PARAMETERS, parse_tag

RECORD_VERSION = 1


@dataclass(frozen=True)
class LayerInfo:
    """One watched layer (or block, when statistics are grouped)."""

    name: str
    type: str
    has_params: bool


@dataclass(frozen=True)
class RunInfo:
    """The layers in forward order and the per-device batch sizes (``None``: unknown).

    Attributes:
        layers: the watched layers (or blocks) in forward order.
        batch_size: the per-device size of a training batch.
        source: where it came from: ``"record"`` (the ``diagnostics/layers`` text) or
            ``"tag order"`` (the fallback).
        eval_batch_size: the per-device size of the first validation batch.
    """

    layers: tuple[LayerInfo, ...]
    batch_size: int | None = None
    source: str = "record"
    eval_batch_size: int | None = None

    def to_json(self) -> str:
        """The ``diagnostics/layers`` record."""
        return json.dumps(
            {
                "version": RECORD_VERSION,
                "layers": [[layer.name, layer.type, layer.has_params] for layer in self.layers],
                "batch_size": self.batch_size,
                "eval_batch_size": self.eval_batch_size,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        """Parse a ``diagnostics/layers`` record.

        Raises:
            ValueError: the text is not such a record (the message says what was expected).
        """
        try:
            data = json.loads(text)
            layers = tuple(
                LayerInfo(str(name), str(kind), bool(owns)) for name, kind, owns in data["layers"]
            )
            batch = data.get("batch_size")
            eval_batch = data.get("eval_batch_size")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                "expected a JSON object with 'layers': [[name, type, has_params], ...] and "
                f"'batch_size'; got {text[:80]!r} ({error})"
            ) from None
        return cls(layers, _size(batch), eval_batch_size=_size(eval_batch))

    @classmethod
    def from_tags(cls, tags: Iterable[str]) -> RunInfo:
        """The fallback: layers in the order their tags were first written, types unknown."""
        order: dict[str, bool] = {}
        for value in tags:
            parsed = parse_tag(value)
            if parsed is None or parsed.layer is None or not value.startswith(parsed.group):
                continue  # health/, phase-prefixed (val/...) and foreign tags
            if parsed.group in LAYER_GROUPS:
                owns = order.get(parsed.layer, False)
                order[parsed.layer] = owns or parsed.group == PARAMETERS
        return cls(
            tuple(LayerInfo(name, "", owns) for name, owns in order.items()), None, "tag order"
        )


def _size(value: object) -> int | None:
    """A batch size read from a record: an integer, else unknown."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
