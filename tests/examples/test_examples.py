"""The examples, shortened: each runs as a script, prints its table, and the numbers in the table
are the ones in the event files it wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ln_diagnostics.tensorboard.reader import read_scalars

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=cwd,
    )
    return result.stdout


def table_rows(stdout: str, names: list[str]) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in names:
            rows[words[0]] = words
    return rows


def test_deep_mlp_gradients_vanish_without_normalization(tmp_path):
    out = run_example("deep_mlp.py", "--steps", "20", "--logdir", str(tmp_path))
    rows = table_rows(out, ["no_norm", "batchnorm", "layernorm"])
    assert set(rows) == {"no_norm", "batchnorm", "layernorm"}
    runs = read_scalars(tmp_path)
    for name, row in rows.items():
        # test accuracy: printed with 3 decimals, read back from test/acc
        assert float(row[1]) == pytest.approx(runs[name]["test/acc"][-1][1], abs=5e-4)
    ratio = {
        name: runs[name]["backprop/norm/net.0"][0][1] / runs[name]["backprop/norm/head"][0][1]
        for name in rows
    }
    assert float(rows["no_norm"][5]) == pytest.approx(ratio["no_norm"], rel=1e-2)
    assert ratio["no_norm"] < 1e-8  # 50 tanh layers: the input end gets (almost) nothing
    assert ratio["layernorm"] > 1e-2 and ratio["batchnorm"] > 1e-2


def test_small_batch_batchnorm_fails_at_batch_size_one_layernorm_trains(tmp_path):
    out = run_example("small_batch.py", "--steps", "20", "--logdir", str(tmp_path))
    names = ["bs32_batchnorm", "bs2_batchnorm", "bs2_layernorm", "bs1_batchnorm", "bs1_layernorm"]
    rows = table_rows(out, names)
    assert set(rows) == set(names)
    assert "Expected more than 1 value per channel" in " ".join(rows["bs1_batchnorm"])
    runs = read_scalars(tmp_path)
    assert "bs1_batchnorm" not in runs or "test/acc" not in runs["bs1_batchnorm"]
    for name in ("bs2_batchnorm", "bs2_layernorm", "bs1_layernorm"):
        assert float(rows[name][-1]) == pytest.approx(runs[name]["test/acc"][-1][1], abs=5e-4)
    # the swapped runs have LayerNorm where BatchNorm was
    assert "activations/std/features.1" in runs["bs1_layernorm"]


def test_transformer_depth_profile_and_step_zero_heatmap(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run_example(
        "transformer_depth.py", "--steps", "2", "--depths", "24", "--logdir", str(tmp_path)
    )
    rows = table_rows(out, ["post_ln_24", "pre_ln_24"])
    assert set(rows) == {"post_ln_24", "pre_ln_24"}
    runs = read_scalars(tmp_path)
    for name, row in rows.items():
        tags = runs[name]
        first = tags["gradients/norm/encoder.layers.0.linear2"][0][1]
        last = tags["gradients/norm/encoder.layers.23.linear2"][0][1]
        assert float(row[5]) == pytest.approx(last / first, abs=5e-3)
    # at initialization Post-LN gradients grow toward the output; Pre-LN do not
    assert float(rows["post_ln_24"][5]) > 1.2
    assert float(rows["pre_ln_24"][5]) < 1.0
    accumulator = EventAccumulator(str(tmp_path / "post_ln_24"), size_guidance={"images": 0})
    accumulator.Reload()
    images = accumulator.Images("heatmaps/backprop_log10_norm")
    assert images and images[0].step == 0


def test_plain_pytorch_table_matches_the_event_file(tmp_path):
    out = run_example("plain_pytorch.py", "--steps", "21", "--logdir", str(tmp_path))
    assert "last logging step: 20" in out
    rows = table_rows(out, ["0", "1", "12"])
    assert rows["1"][1] == "ReLU" and rows["0"][1] == "Linear"
    tags = read_scalars(tmp_path)["."]
    assert tags["gradients/norm/0"][-1][0] == 20
    assert float(rows["0"][4]) == pytest.approx(tags["gradients/norm/0"][-1][1], rel=1e-2)
    assert float(rows["1"][3]) == pytest.approx(tags["activations/zero_frac/1"][-1][1], abs=5e-4)
    # the head (6 × (Linear, ReLU), then Linear(128, 10)): its update ratio, printed as %.2e
    assert rows["12"][1] == "Linear"
    assert float(rows["12"][5]) == pytest.approx(tags["updates/ratio/12"][-1][1], rel=1e-2)


def test_fabric_ddp_prints_the_global_statistics_rank_0_wrote(tmp_path):
    out = run_example("fabric_ddp.py", "--steps", "51", "--logdir", str(tmp_path / "tb"))
    lines = [line.split() for line in out.splitlines() if line.startswith("step ")]
    assert [int(words[1]) for words in lines] == [0, 50]  # rank 0 only, once per logging step
    assert out.count("diagnosis (2 logging steps)") == 1
    assert "vanishing_gradients" in out  # a 12-layer tanh MLP without normalization
    runs = read_scalars(tmp_path / "tb")
    assert list(runs) == ["."]  # one writer: rank 0
    for words in lines:
        step, value = runs["."]["health/grad_norm_total"][lines.index(words)]
        assert step == int(words[1]) and float(words[3]) == pytest.approx(value, rel=1e-2)


def test_shift_depth_table_matches_the_event_files_and_layernorm_shifts_less(tmp_path):
    out = run_example("shift_depth.py", "--steps", "21", "--logdir", str(tmp_path))
    assert "shift/mean_init at the last probe (step 20)" in out
    linears = [str(i) for i in range(9)]
    rows = table_rows(out, [*linears, "health"])
    assert set(rows) == {*linears, "health"}
    runs = read_scalars(tmp_path)
    # Linear i is net.<2i> in (Linear, Tanh) blocks, net.<3i> in (Linear, LayerNorm, Tanh) blocks
    last = {}
    for column, (name, stride) in enumerate((("no_norm", 2), ("layernorm", 3)), start=1):
        for i in linears:
            step, value = runs[name][f"shift/mean_init/net.{int(i) * stride}"][-1]
            assert step == 20
            assert float(rows[i][column]) == pytest.approx(value, abs=5e-4), (name, i)
        last[name] = value
        health = runs[name]["health/shift_mean_init"][-1][1]
        assert float(rows["health"][column]) == pytest.approx(health, abs=5e-4), name
    # README: without normalization the shift at the last Linear is larger than with LayerNorm
    assert last["no_norm"] > last["layernorm"]


def test_cli_train_with_a_preset(tmp_path):
    out = run_example(
        "cli_train.py",
        "fit",
        "--config",
        str(ROOT / "callbacks" / "layer_diagnostics.yaml"),
        "--trainer.max_steps",
        "5",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    runs = read_scalars(tmp_path / "lightning_logs")
    tags = runs["version_0"]
    assert "gradients/norm/net.0" in tags
    row = table_rows(out, ["health/grad_norm_total"])["health/grad_norm_total"]
    assert float(row[1]) == pytest.approx(tags["health/grad_norm_total"][0][1], rel=1e-3)


def check(logdir: Path, thresholds: Path = EXAMPLES / "thresholds.toml", *extra: str):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ln_diagnostics",
            "check",
            str(logdir),
            "--thresholds",
            str(thresholds),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ci_gate_passes_a_healthy_run_and_fails_a_huge_learning_rate(tmp_path):
    healthy, broken = tmp_path / "healthy", tmp_path / "broken"
    run_example("cli_train.py", "--steps", "51", "--logdir", str(healthy))
    run_example("cli_train.py", "--steps", "51", "--logdir", str(broken), "--lr", "50")
    ok = check(healthy)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 failed" in ok.stdout
    failed = check(broken)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "no NaN or inf activations" in failed.stdout and "FAIL" in failed.stdout

    # the same two runs against a threshold file written from the healthy one
    generated = tmp_path / "generated.toml"
    made = subprocess.run(
        [sys.executable, "-m", "ln_diagnostics", "baseline", str(healthy), "--out", str(generated)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    ok = check(healthy, generated)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert " 0 failed" in ok.stdout.splitlines()[-1]
    failed = check(broken, generated, "--failures-only")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    rows = [line.split() for line in failed.stdout.splitlines()[1:-1]]
    assert rows and all(row[-1] == "FAIL" for row in rows)
    assert any("health/nonfinite_activations" in row for row in rows)
