"""The diagnosis in TensorBoard: the findings table (text ``diagnosis``), the run-info record
(text ``diagnostics/layers``) and the diagnosis of every run under a log directory.

Example:
    >>> import tempfile
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> from ln_diagnostics.diagnose import LayerInfo, RunInfo
    >>> logdir = tempfile.mkdtemp()
    >>> info = RunInfo((LayerInfo("net.0", "Linear", True),), batch_size=8)
    >>> with SummaryWriter(logdir) as writer:
    ...     write_run_info(writer, info, step=0)
    ...     writer.add_scalar("health/grad_norm_total", 1.0, 0)
    >>> read_run_info(logdir) == info
    True
    >>> [f.kind for f in diagnose_logdir(logdir)["."].findings]
    ['healthy']
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ln_diagnostics._table import terminal_width
from ln_diagnostics.diagnose import (
    Finding,
    History,
    RunInfo,
    Thresholds,
    diagnose,
    findings_markdown,
    findings_table,
    worst_severity,
)
from ln_diagnostics.tags import DIAGNOSIS_TEXT_TAG, LAYERS_TEXT_TAG
from ln_diagnostics.tensorboard.reader import (
    EVENT_FILE_GLOB,
    LogDirError,
    find_runs,
    run_name,
    scan_run,
)
from ln_diagnostics.thresholds.findings import evaluate_findings
from ln_diagnostics.thresholds.rules import Rule

__all__ = [
    "RunDiagnosis",
    "diagnose_logdir",
    "finding_results",
    "findings_markdown",
    "logdir_json",
    "logdir_report",
    "read_run_info",
    "write_findings",
    "write_run_info",
]


def write_run_info(writer: Any, info: RunInfo, *, step: int, prefix: str = "") -> None:
    """Write the ``diagnostics/layers`` record through a ``SummaryWriter``."""
    writer.add_text(f"{prefix}{LAYERS_TEXT_TAG}", info.to_json(), step)


def write_findings(
    writer: Any, findings: Sequence[Finding], *, step: int, prefix: str = ""
) -> None:
    """Write the findings table as the text ``diagnosis`` (a markdown table)."""
    writer.add_text(f"{prefix}{DIAGNOSIS_TEXT_TAG}", findings_markdown(findings), step)


def read_run_info(run_dir: str | os.PathLike[str]) -> RunInfo | None:
    """The newest ``diagnostics/layers`` record of a run directory; ``None`` when it has none.

    Raises:
        LogDirError: the record is there but is not valid (the message names the directory).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    directory = Path(run_dir)
    if not any(directory.glob(EVENT_FILE_GLOB)):
        return None
    guidance = {"tensors": 0, "scalars": 1, "histograms": 1, "images": 1, "audio": 1}
    accumulator = EventAccumulator(str(directory), size_guidance=guidance)
    tb_logger = logging.getLogger("tensorboard")
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)
    try:
        accumulator.Reload()
        # SummaryWriter.add_text stores text under "<tag>/text_summary"
        names = [f"{LAYERS_TEXT_TAG}/text_summary", LAYERS_TEXT_TAG]
        found = [n for n in names if n in accumulator.Tags().get("tensors", [])]
        if not found:
            return None
        event = accumulator.Tensors(found[0])[-1]
        text = tensor_util.make_ndarray(event.tensor_proto).reshape(-1)[0]
    except Exception as error:  # TensorBoard raises assorted errors on damaged files
        raise LogDirError(f"cannot read the event files in '{directory}': {error}") from None
    finally:
        tb_logger.setLevel(level)
    try:
        return RunInfo.from_json(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    except (ValueError, UnicodeDecodeError) as error:
        raise LogDirError(
            f"'{directory}': text record '{LAYERS_TEXT_TAG}' is invalid: {error}"
        ) from None


@dataclass(frozen=True)
class RunDiagnosis:
    """The diagnosis of one run: where its layer info came from, the ranked findings, and the
    event files read only up to an incomplete last record (``allow_partial``)."""

    run: str
    info: RunInfo
    findings: list[Finding]
    partial: tuple[tuple[Path, int], ...] = ()


def diagnose_logdir(
    logdir: str | os.PathLike[str],
    thresholds: Thresholds | None = None,
    *,
    allow_partial: bool = False,
    merge: bool = False,
) -> dict[str, RunDiagnosis]:
    """Diagnose every run under ``logdir`` (keyed like :func:`read_scalars`).

    Each run's points go through the same bounded :class:`History` as in ``LayerDiagnostics``
    and its layers come from the ``diagnostics/layers`` record (or, without one, from tag order),
    so a run gets the findings the callback reported at fit end. ``allow_partial`` and ``merge``
    read event files as :func:`scan_run` does.

    Raises:
        LogDirError: the directory is missing or empty, a file is unreadable, corrupt or ends
            inside a record (without ``allow_partial``), files overlap (without ``merge``), or a
            run holds no statistic the diagnosis reads (the message names the run).
    """
    root = Path(logdir)
    out: dict[str, RunDiagnosis] = {}
    for run_dir in find_runs(root):
        scalars: dict[str, list[tuple[int, float]]] = {}

        def sink_for(tag: str, scalars: dict[str, Any] = scalars) -> Any:
            points = scalars[tag] = []
            return lambda step, value: points.append((step, value))

        scan = scan_run(run_dir, sink_for, allow_partial=allow_partial, merge=merge)
        if not scalars:
            continue
        info = read_run_info(run_dir) or RunInfo.from_tags(scalars)
        findings = diagnose(History.from_series(scalars), info, thresholds)
        if not findings:
            raise LogDirError(
                f"run '{run_dir}' holds no ln-diagnostics statistic the diagnosis reads "
                "(activations/, backprop/, gradients/, updates/, health/); was it written by "
                "LayerDiagnostics or attach()?"
            )
        run = run_name(root, run_dir)
        out[run] = RunDiagnosis(run, info, findings, tuple(scan.partial))
    if not out:
        raise LogDirError(f"the event files under '{root}' hold no scalars")
    return out


def logdir_report(results: dict[str, RunDiagnosis], *, width: int | None = None) -> str:
    """The console text of ``ln-diagnostics diagnose``: one findings table per run, no line
    wider than ``width`` (default: the terminal's, 100 columns when unknown)."""
    width = width or terminal_width()
    blocks = []
    for run, result in results.items():
        note = "" if result.info.source == "record" else " (layers from tag order: no record)"
        title = textwrap.fill(f"run: {run}{note}", width, break_on_hyphens=False)
        blocks.append(f"{title}\n{findings_table(result.findings, width=width)}")
    return "\n\n".join(blocks)


def logdir_json(results: dict[str, RunDiagnosis]) -> dict[str, Any]:
    """The JSON report of ``ln-diagnostics diagnose``."""
    return {
        "runs": [
            {
                "run": run,
                "layers_source": result.info.source,
                "worst": worst_severity(result.findings),
                "findings": [finding.to_dict() for finding in result.findings],
            }
            for run, result in results.items()
        ]
    }


def finding_results(
    rules: Sequence[Rule],
    logdir: str | os.PathLike[str],
    *,
    allow_partial: bool = False,
    merge: bool = False,
) -> list[tuple[str, Any]]:
    """``(run, RuleResult)`` of the ``finding`` rules on every run's diagnosis (none: ``[]``);
    the event files are read as :func:`diagnose_logdir` reads them."""
    if not any(rule.finding for rule in rules):
        return []
    runs = diagnose_logdir(logdir, allow_partial=allow_partial, merge=merge)
    return [
        (run, result)
        for run, diagnosis in runs.items()
        for result in evaluate_findings(rules, diagnosis.findings)
    ]
