"""The LightningCLI presets in callbacks/ build, through LightningCLI itself, every callback they
name with every option they set (list-valued ones included), and train with them."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import pytest
import yaml

from ln_diagnostics.callbacks import DiagnosticThresholds, LayerDiagnostics, NormSwap
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


def plain(value):
    """Lists and tuples alike as tuples, nested ones too: one callback keeps a list option as a
    list, another as a tuple; what counts is the items."""
    return tuple(plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def expected(key, value):
    return parse_rules(value) if key == "rules" else plain(value)


def built_by_the_cli_parser(cls, init_args):
    """``cls`` built from YAML ``init_args`` the way LightningCLI builds a callback: Lightning's
    argument parser (jsonargparse) reads the constructor's signature and instantiates it."""
    from pytorch_lightning.cli import LightningArgumentParser

    parser = LightningArgumentParser()
    parser.add_class_arguments(cls, "callback")
    config = parser.parse_string(yaml.safe_dump({"callback": init_args}))
    return parser.instantiate_classes(config).callback


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
            assert plain(option(callback, key)) == expected(key, value), (path.name, key)
    tags = read_scalars(tmp_path)["."]
    assert "health/grad_norm_total" in tags  # the diagnostics callback logged step 0


def test_there_are_presets():
    assert len(PRESETS) >= 3


RULES = [{"tag": "health/*", "max": 1.0}, {"tag": "gradients/norm/*", "max": 10.0, "over": "mean"}]
#: A list for every constructor option that takes one (several items, so that a list read as
#: one string, or only its first item, shows).
LISTS = {
    NormSwap: {"include": ["features.*", "stem"], "exclude": ["head*", "*.bn"]},
    LayerDiagnostics: {
        "types": ["torch.nn.Linear", "torch.nn.LayerNorm"],
        "include": ["net.*", "head"],
        "exclude": ["*.dropout*", "head.1"],
        "ics_layers": ["net.0", "net.2"],
    },
    DiagnosticThresholds: {"rules": RULES},
}


def takes_a_list(annotation):
    return any(get_origin(t) in (list, Sequence) for t in (annotation, *get_args(annotation)))


@pytest.mark.parametrize("cls", list(LISTS), ids=lambda cls: cls.__name__)
def test_list_valued_options_reach_the_callback_as_the_same_items(cls):
    hints = get_type_hints(cls.__init__)
    assert {name for name, hint in hints.items() if takes_a_list(hint)} == set(LISTS[cls])
    from_yaml = built_by_the_cli_parser(cls, LISTS[cls])
    direct = cls(**LISTS[cls])
    # the checkpoint key names every non-default LayerDiagnostics option and the rules' content
    assert from_yaml.state_key == direct.state_key
    if cls is LayerDiagnostics:
        assert direct.state_key != cls().state_key
    if cls is NormSwap:
        assert plain(from_yaml.include) == ("features.*", "stem")
        assert plain(from_yaml.exclude) == ("head*", "*.bn")
    if cls is DiagnosticThresholds:
        assert from_yaml.rules == direct.rules == parse_rules(RULES)
