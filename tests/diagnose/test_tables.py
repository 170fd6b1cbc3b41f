"""The console findings table fits the terminal: long columns wrap, nothing is lost."""

import pytest

from ln_diagnostics.diagnose import LayerInfo, RunInfo, diagnose, findings_table
from ln_diagnostics.engine.diagnosis import console_report

BLOCKS = 24
NAMES = [
    "embed",
    *(f"encoder.layers.{i}.{sub}" for i in range(BLOCKS) for sub in ("linear1", "linear2")),
    "encoder.layers.3.activation",
    "head",
]


def realistic():
    """Findings of a sick 24-block encoder: long layer names, ranges, messages and advice."""
    layers = [LayerInfo(n, "ReLU" if n.endswith("activation") else "Linear", True) for n in NAMES]
    steps = range(0, 400, 50)
    series = {}
    for k, name in enumerate(NAMES[1:-2]):
        block = k // 2
        series[f"backprop/norm/{name}"] = [(s, 10 ** (-6 + 6 * block / BLOCKS)) for s in steps]
        series[f"updates/ratio/{name}"] = [(s, 0.5) for s in steps]
    series["activations/zero_frac/encoder.layers.3.activation"] = [(s, 1.0) for s in steps]
    series["health/grad_norm_total"] = [(s, 1e4 if s == 350 else 1.0) for s in steps]
    findings = diagnose(series, RunInfo(tuple(layers), batch_size=2))
    assert {"vanishing_gradients", "dead_units", "update_ratio_large", "gradient_spike"} <= {
        f.kind for f in findings
    }
    return findings


def columns(text):
    """Per finding, each column's text with its lines joined, read back by header position."""
    lines = text.splitlines()
    header = lines[0]
    starts = [header.index(name) for name in ("SEVERITY", "FINDING", "LAYER", "STEPS", "WHAT")]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in bounds]
        if cells[0]:
            rows.append([[c] for c in cells])
        else:
            for column, cell in zip(rows[-1], cells, strict=True):
                column.append(cell)
    return [[" ".join(c for c in column if c) for column in row] for row in rows]


def squeeze(text):
    return "".join(text.split())


@pytest.mark.parametrize("width", [80, 100, 120])
def test_no_line_is_wider_than_the_width_and_nothing_is_lost(width):
    findings = realistic()
    text = findings_table(findings, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert max(len(line) for line in findings_table(findings).splitlines()) > 200  # unwrapped
    rows = columns(text)
    assert len(rows) == len(findings)
    for row, f in zip(rows, findings, strict=True):
        cells = (f.severity, f.kind, f.layer or "(model)", f.steps)
        assert [squeeze(c) for c in row[:4]] == [squeeze(c) for c in cells]
        assert squeeze(row[4]) == squeeze(f"{f.message} -> {f.advice}")


def test_a_narrow_terminal_wraps_every_column_rather_than_overflow():
    findings = realistic()
    text = findings_table(findings, width=40)
    assert max(len(line) for line in text.splitlines()) <= 40


def test_the_console_report_fits_the_terminal(monkeypatch):
    findings = realistic()
    monkeypatch.setenv("COLUMNS", "80")
    assert max(len(line) for line in console_report(findings, 8).splitlines()) <= 80
    monkeypatch.delenv("COLUMNS")  # not a terminal under pytest: the fallback
    report = console_report(findings, 8)
    assert max(len(line) for line in report.splitlines()) <= 100
    assert console_report(findings, 8, width=120) != report
