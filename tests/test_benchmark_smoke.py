"""The overhead benchmark runs end to end in --quick mode and writes well-formed JSON."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("ln_diagnostics_overhead_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_positive_finite_times(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "overhead.json"
    returned = bench.main(
        ["--quick", "--models", "mlp", "--configs", "plain,ours_every_step", "--json", str(out)]
    )

    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    assert set(data) >= {"environment", "results", "memory"}
    assert data["environment"]["threads"] == 1
    assert data["environment"]["command"].startswith("python benchmarks/overhead.py --quick")
    assert data["memory"] is None
    assert set(data["results"]) == {"mlp"}
    assert set(data["results"]["mlp"]) == {"plain", "ours_every_step"}
    for config, entry in data["results"]["mlp"].items():
        for key in ("ms_per_step", "median_step_ms", "ratio", "ratio_q25", "ratio_q75"):
            assert math.isfinite(entry[key]) and entry[key] > 0, (config, key, entry[key])
        assert len(entry["ms_per_step_rounds"]) == 1
    assert data["results"]["mlp"]["plain"]["ratio"] == 1.0

    printed = capsys.readouterr().out
    assert "ours_every_step" in printed and "ratio" in printed


def test_unknown_configuration_lists_the_valid_ones():
    bench = load_benchmark()
    with pytest.raises(SystemExit, match=r"nope.*ours_default"):
        bench.main(["--quick", "--configs", "plain,nope"])
