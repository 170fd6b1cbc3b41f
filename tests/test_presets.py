"""The LightningCLI presets in callbacks/ build, through LightningCLI itself, every callback they
name with every option they set (list-valued ones included), and train with them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from ln_diagnostics.tensorboard.reader import read_scalars
from ln_diagnostics.thresholds.rules import parse_rules

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))


def load_cli_train():
    spec = importlib.util.spec_from_file_location("cli_train", ROOT / "examples" / "cli_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def option(callback, key):
    """The value a callback keeps for one constructor option."""
    if key == "rules":
        return callback.rules
    for owner in (callback, getattr(callback, "options", None)):
        if owner is not None and hasattr(owner, key):
            return getattr(owner, key)
    raise AssertionError(f"{type(callback).__name__} keeps no attribute for option {key!r}")


def expected(key, value):
    if key == "rules":
        return parse_rules(value)
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_trains_through_lightning_cli(path, tmp_path, monkeypatch):
    from pytorch_lightning.cli import LightningCLI

    cli_train = load_cli_train()
    monkeypatch.setattr(sys, "argv", ["cli_train.py"])
    # the example's shorthand: the options a user's CI run passes, plus the preset
    args = cli_train.shorthand(["--steps", "2", "--logdir", str(tmp_path), "--config", str(path)])
    cli = LightningCLI(cli_train.DigitsMLP, cli_train.DigitsData, args=args)
    assert cli.trainer.global_step == 2
    specs = yaml.safe_load(path.read_text())["trainer"]["callbacks"]
    ours = [c for c in cli.trainer.callbacks if type(c).__module__.startswith("ln_diagnostics.")]
    assert [type(c).__name__ for c in ours] == [s["class_path"].rsplit(".", 1)[1] for s in specs]
    for callback, spec in zip(ours, specs, strict=True):
        for key, value in spec.get("init_args", {}).items():
            assert option(callback, key) == expected(key, value), (path.name, key)
    tags = read_scalars(tmp_path)["."]
    assert "health/grad_norm_total" in tags  # the diagnostics callback logged step 0


def test_there_are_presets():
    assert len(PRESETS) >= 3
