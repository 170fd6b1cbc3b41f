"""The conformance suite's table: one row per case, one column per check, printed at the end of
the pytest run (also written to ``.pytest_cache/d/conformance/table.txt``)."""

import sys
from pathlib import Path

import pytest

# test_conformance.py and ddp_worker.py (run as a script by each DDP rank) share these modules
sys.path.insert(0, str(Path(__file__).parent))

from conformance_harness import CHECKS, OK

RESULTS = pytest.StashKey[dict]()


@pytest.fixture
def record_row(request):
    """``record_row(case, results)``: add a row to the table printed after the run."""
    table = request.config.stash.setdefault(RESULTS, {})
    return table.__setitem__


def format_table(table: dict[str, dict[str, str]]) -> str:
    """Columns hold ``ok``, ``FAIL`` or ``-``; the reasons and notes follow the table."""
    rows = [["case", *CHECKS]]
    rows += [
        [case, *(results[c].split(" ", 1)[0] for c in CHECKS)] for case, results in table.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    checks_of: dict[tuple[str, str], list[str]] = {}  # one line per case and distinct reason
    for case, results in table.items():
        for check, value in results.items():
            if value not in (OK, "-"):
                checks_of.setdefault((case, value), []).append(check)
    notes = [
        f"{case} / {', '.join(checks)}: {value}" for (case, value), checks in checks_of.items()
    ]
    return "\n".join([*lines, "", *notes] if notes else lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    table = config.stash.get(RESULTS, None)
    if not table:
        return
    text = format_table(table)
    terminalreporter.section("conformance: model x check")
    terminalreporter.write_line(text)
    if getattr(config, "cache", None) is not None:  # absent with -p no:cacheprovider
        (config.cache.mkdir("conformance") / "table.txt").write_text(text + "\n")
