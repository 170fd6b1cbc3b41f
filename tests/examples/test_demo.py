"""The demo, shortened: it trains both runs, writes event files and prints the table."""

import subprocess
import sys
from pathlib import Path

import pytest

from ln_diagnostics.tensorboard.reader import read_scalars

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_reports_vanishing_gradients_without_normalization(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "demo.py"),
            "--steps",
            "30",
            "--logdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert f"tensorboard --logdir {tmp_path}" in result.stdout
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith(("no_norm ", "layernorm "))
    }
    assert set(rows) == {"no_norm", "layernorm"}
    runs = read_scalars(tmp_path)
    depth = {name: runs[name]["health/backprop_depth_log10"][0][1] for name in rows}
    # at initialization a 16-layer tanh MLP loses orders of magnitude of gradient; LN does not
    assert depth["no_norm"] < -2.0
    assert abs(depth["layernorm"]) < 1.0
    assert float(rows["no_norm"][5]) == round(depth["no_norm"], 2)
    # the last column, first / last backprop norm of the hidden stack read from the per-layer
    # tags, is the same depth computed another way
    for name, depth_log10 in depth.items():
        assert float(rows[name][7]) == pytest.approx(10**depth_log10, rel=5e-3)
