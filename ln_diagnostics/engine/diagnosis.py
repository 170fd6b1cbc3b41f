"""Glue between ``LayerDiagnostics`` and :mod:`ln_diagnostics.diagnose`: the bounded history of
the logged scalars, the run-info record written at the first logging step (and again once the
first validation batch's size is known), the ``diagnosis`` text refreshed with the heat maps, the
findings table printed at fit end, and the checkpoint state that lets a resumed run diagnose its
whole history."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ln_diagnostics._table import terminal_width
from ln_diagnostics.collect.records import StepReport
from ln_diagnostics.collect.selection import module_parameters
from ln_diagnostics.diagnose import (
    Finding,
    History,
    LayerInfo,
    RunInfo,
    diagnose,
    findings_table,
)
from ln_diagnostics.tensorboard.diagnosis import write_findings, write_run_info


def batch_size(batch: Any) -> int | None:
    """The leading size of the batch's first tensor (Lightning's own inference), or ``None``."""
    from pytorch_lightning.utilities.data import extract_batch_size

    try:
        return int(extract_batch_size(batch))
    except Exception:  # no tensor in the batch, or one without a batch dimension
        return None


def run_info(
    collector: Any, report: StepReport, batch: int | None, eval_batch: int | None = None
) -> RunInfo:
    """Layers in the forward order of the first report, typed from the watched modules.

    With grouped statistics a block's type is its modules' type when they share one, else
    ``"block"``; it owns parameters when any of its modules does.
    """
    groups = collector.group_names or collector.names
    types: dict[str, set[str]] = {}
    owns: dict[str, bool] = {}
    for name, module in zip(groups, collector.modules, strict=True):
        types.setdefault(name, set()).add(type(module).__name__)
        owns[name] = owns.get(name, False) or bool(module_parameters(module))
    ordered = [layer.name for layer in RunInfo.from_tags(report.scalars).layers]
    ordered += [name for name in types if name not in ordered]  # never ran: order unknown
    return RunInfo(
        tuple(
            LayerInfo(
                name,
                next(iter(types[name])) if len(types.get(name, ())) == 1 else "block",
                owns.get(name, False),
            )
            for name in ordered
        ),
        batch,
        eval_batch_size=eval_batch,
    )


class Diagnosis:
    """The diagnosis of one ``LayerDiagnostics`` run (every rank keeps it; rank 0 writes).

    Example:
        >>> diagnosis = Diagnosis()
        >>> diagnosis.load_state_dict(diagnosis.state_dict())
        >>> diagnosis.findings()
        []
    """

    def __init__(self) -> None:
        self.history = History()
        self.info: RunInfo | None = None
        self.batch_size: int | None = None
        self.eval_batch_size: int | None = None
        self._unwritten = False  # the record lacks what is now known (or was never written)
        self._cache: list[Finding] | None = None
        #: wall-clock seconds of the last diagnosis (for the cost figures in the README)
        self.last_seconds = 0.0

    def batch_start(self, batch: Any) -> None:
        """Note the per-device batch size of a logging step until the record is written."""
        if self.info is None:
            self.batch_size = batch_size(batch)

    def eval_batch(self, batch: Any) -> None:
        """Note the per-device size of the first validation batch; when the run-info record is
        already written, it is written again (with it) at the next logging step or fit end."""
        if self.eval_batch_size is not None:
            return
        self.eval_batch_size = batch_size(batch)
        if self.eval_batch_size is not None and self.info is not None:
            self.info = replace(self.info, eval_batch_size=self.eval_batch_size)
            self._unwritten = True
            self._cache = None

    def _write_info(self, writer: Any | None, step: int) -> None:
        if self._unwritten and self.info is not None and writer is not None:
            write_run_info(writer, self.info, step=step)
            self._unwritten = False

    def record(self, report: StepReport, collector: Any | None, writer: Any | None) -> None:
        """Keep a logging step's scalars; write the run-info record at the first one."""
        self.history.add(report.step, report.scalars)
        self._cache = None
        if self.info is None and collector is not None and report.scalars:
            self.info = run_info(collector, report, self.batch_size, self.eval_batch_size)
            self._unwritten = True
        self._write_info(writer, report.step)

    def findings(self) -> list[Finding]:
        """The findings on the history so far (recomputed only after a new logging step)."""
        if self._cache is None:
            start = time.perf_counter()
            self._cache = diagnose(self.history, self.info)
            self.last_seconds = time.perf_counter() - start
        return self._cache

    def write(self, writer: Any | None, step: int) -> list[Finding]:
        """Diagnose and write the ``diagnosis`` text (when there is a writer)."""
        findings = self.findings()
        self._write_info(writer, step)
        if writer is not None and findings:
            write_findings(writer, findings, step=step)
        return findings

    def update(self, report: StepReport, collector: Any, writer: Any, dashboard: Any) -> None:
        """Record a logging step; rewrite the ``diagnosis`` text when the heat maps redraw."""
        self.record(report, collector, writer)
        every = getattr(dashboard, "heatmap_every_n_steps", 0)
        if writer is not None and every and report.step > 0 and report.step % every == 0:
            self.write(writer, report.step)

    def state_dict(self) -> dict[str, Any]:
        """The history, run info and batch sizes as plain values (``torch.load(weights_only=
        True)`` reads them); as bounded as the history."""
        return {
            "history": self.history.state_dict(),
            "info": None if self.info is None else json.loads(self.info.to_json()),
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (missing keys: as at the start of a run). The run-info
        record is written again at the next logging step: a resumed run may log elsewhere."""
        self.history = History()
        if "history" in state:
            self.history.load_state_dict(state["history"])
        info = state.get("info")
        self.info = None if info is None else RunInfo.from_json(json.dumps(info))
        self.batch_size = state.get("batch_size")
        self.eval_batch_size = state.get("eval_batch_size")
        self._unwritten = self.info is not None
        self._cache = None


def console_report(
    findings: list[Finding],
    steps: int,
    *,
    width: int | None = None,
    title: str = "LayerDiagnostics",
) -> str:
    """What a front end (``title``) prints at the end of the run: no line wider than ``width``
    (default: the terminal's, 100 columns when unknown)."""
    if not findings:
        return f"{title} diagnosis: no statistics were logged"
    table = findings_table(findings, width=width or terminal_width())
    return f"{title} diagnosis ({steps} logging steps):\n{table}"
