"""Host-side diagnosis: logged series in, findings out (no torch or Lightning import).

``diagnose(series, info)`` reads the scalars a run logged (``{tag: [(step, value)]}``) and the
run's layers in forward order, and says what is wrong, in which layer, since which step, and
what to try. ``LayerDiagnostics`` runs it on its own history during training and at fit end;
``ln-diagnostics diagnose LOGDIR`` runs it on event files; threshold rules can name a finding kind.

Example:
    >>> from ln_diagnostics.diagnose import diagnose
    >>> [f.kind for f in diagnose({"health/grad_norm_total": [(0, 1.0), (10, 0.9)]})]
    ['healthy']
"""

from ln_diagnostics.diagnose.findings import (
    SEVERITIES,
    Finding,
    findings_markdown,
    findings_table,
    severity_rank,
    worst_severity,
)
from ln_diagnostics.diagnose.history import History
from ln_diagnostics.diagnose.rules import KINDS, diagnose
from ln_diagnostics.diagnose.runinfo import LayerInfo, RunInfo
from ln_diagnostics.diagnose.thresholds import Thresholds

__all__ = [
    "KINDS",
    "SEVERITIES",
    "Finding",
    "History",
    "LayerInfo",
    "RunInfo",
    "Thresholds",
    "diagnose",
    "findings_markdown",
    "findings_table",
    "severity_rank",
    "worst_severity",
]
