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
        ["--quick", "--models", "encoder", "--configs", "plain,ours_every_1", "--json", str(out)]
    )

    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    assert set(data) >= {"environment", "results", "memory"}
    assert data["environment"]["threads"] == 1
    assert data["environment"]["accelerator"] == "cpu"
    assert data["environment"]["command"].startswith("python benchmarks/overhead.py --quick")
    assert data["memory"] is None
    assert data["environment"]["timed_steps"] == 3
    assert set(data["results"]) == {"encoder"}
    assert set(data["results"]["encoder"]) == {"plain", "ours_every_1"}
    for config, entry in data["results"]["encoder"].items():
        for measure in bench.MEASURES:
            for key in (f"{measure}_ms", f"{measure}_ratio", f"{measure}_ratio_q25"):
                assert math.isfinite(entry[key]) and entry[key] > 0, (config, key, entry[key])
            assert len(entry[f"{measure}_ms_rounds"]) == 1
        # the fit's wall clock holds every step and more
        assert entry["fit_ms"] > 3 * entry["mean_ms"] >= entry["step0_ms"]
    assert data["results"]["encoder"]["plain"]["mean_ratio"] == 1.0

    printed = capsys.readouterr().out
    assert "ours_every_1" in printed and "fit" in printed


def test_summary_counts_step_0_in_the_mean_and_not_in_the_warm_mean():
    bench = load_benchmark()
    plain = bench.FitTiming(steps=[0.010, 0.001, 0.001, 0.001], fit_s=0.1)
    ours = bench.FitTiming(steps=[0.050, 0.001, 0.002, 0.001], fit_s=0.2)
    summary = bench.summarize({"plain": [plain], "ours": [ours]}, warmup=1)["ours"]
    assert summary["mean_ms"] == pytest.approx(54 / 4)
    assert summary["mean_ratio"] == pytest.approx(54 / 13)
    assert summary["mean_warm_ratio"] == pytest.approx(4 / 3)
    assert summary["median_ratio"] == pytest.approx(1.5)
    assert summary["fit_ratio"] == pytest.approx(2.0)
    assert summary["step0_ms"] == pytest.approx(50)


def test_breakdown_times_step_0_and_the_logging_steps(tmp_path):
    bench = load_benchmark()
    out = bench.main(
        [
            "--breakdown",
            "ours_every_1_bare",
            "--models",
            "mlp",
            "--steps",
            "3",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    (part,) = out["breakdown"]
    assert part["logging_steps_after_0"] == [1, 2]
    phases = {row["phase"]: row for row in part["phases"]}
    for phase in ("activation statistics (forward hooks)", "host copy", "emit: event file"):
        assert phases[phase]["step0_ms"] > 0 and phases[phase]["logging_step_ms"] > 0, phase
    assert phases["HParams session"]["logging_step_ms"] == 0
    assert phases["histograms (activations, gradients)"]["total_ms"] == 0  # off in this config


def test_unknown_configuration_lists_the_valid_ones():
    bench = load_benchmark()
    with pytest.raises(SystemExit, match=r"nope.*ours_default"):
        bench.main(["--quick", "--configs", "plain,nope"])


def test_a_gpu_run_is_refused_with_the_reason(capsys):
    import torch

    bench = load_benchmark()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--accelerator", "gpu", "--memory-only"])  # RSS: a CPU measure
    assert exit_info.value.code == 2 and "peak RSS" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--quick", "--accelerator", "gpu"])
        assert exit_info.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err


def test_the_weighed_designs_compute_the_numbers_of_power_sums():
    """``--kernels`` times alternatives to ``power_sums``: they must compute the same sums."""
    import torch

    from ln_diagnostics.stats.moments import FIELDS, power_sums

    bench = load_benchmark()
    torch.manual_seed(0)
    outputs = [torch.randn(16, 48) + 3.0 for _ in range(5)]
    for x in outputs:
        x[0, :7] = 0.0
    want = [dict(zip(FIELDS, power_sums(x).tolist(), strict=True)) for x in outputs]

    gram = bench._gram_sums(outputs[0], torch.empty(5, outputs[0].numel())).tolist()
    g = torch.tensor(gram[1:26]).view(5, 5)  # rows 1, d, d², [x != 0], [non-finite]
    got = {"shift": gram[0], "s1": g[0, 1], "s2": g[1, 1], "s3": g[1, 2], "s4": g[2, 2]}
    got |= {"nonzero": g[0, 3], "nonfinite": g[0, 4], "min": gram[26], "max": gram[27]}
    for field, value in got.items():
        assert float(value) == pytest.approx(want[0][field], rel=1e-4, abs=1e-3), field

    fused = dict(
        zip([f for f in FIELDS if f != "saturated"], bench._fused_sums(outputs[0]), strict=True)
    )
    for field, value in fused.items():
        assert float(value) == pytest.approx(want[0][field], rel=1e-4, abs=1e-3), field

    work = torch.empty(3, 2 * outputs[0].numel())  # two outputs a block: three blocks
    rows = torch.cat(bench._batched_sums(outputs, work)).tolist()
    batched_fields = [f for f in FIELDS if f != "saturated"]
    for row, expected in zip(rows, want, strict=True):
        for field, value in zip(batched_fields, row, strict=True):
            assert value == pytest.approx(expected[field], rel=1e-4, abs=1e-3), field
