"""The log-reader benchmark runs end to end on a tiny log, and its log is a real TensorBoard log."""

import math
import runpy
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "log_reader.py"


def test_tiny_run_measures_every_tool(tmp_path, capsys):
    bench_main = runpy.run_path(str(BENCHMARK))["main"]
    result = bench_main(
        ["--layers", "2", "--steps", "30", "--rules", "40", "--workdir", str(tmp_path)]
    )
    (row,) = result["sizes"]
    assert result["rules"]["rules"] == 40 and result["rules"]["cpu_seconds"] > 0
    assert row["points"] == 2 * 8 * 30
    assert set(row["tools"]) == {"check", "compare", "summary", "EventAccumulator"}
    for entry in row["tools"].values():
        assert math.isfinite(entry["seconds"]) and entry["seconds"] > 0
        assert 0 < entry["cpu_seconds"]
        assert 1 < entry["peak_mb"] < 2000
    out = capsys.readouterr().out
    assert "| points | file MB | check s (CPU s) / MB | compare s (CPU s) / MB" in out
    assert "check, 40 exact-tag rules on 40 tags x 3 steps (JSON report on): " in out

    accumulator = EventAccumulator(str(tmp_path / "log_2x8x30"), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert len(tags) == 16
    assert all([e.step for e in accumulator.Scalars(t)] == list(range(30)) for t in tags)
