"""The LightningCLI presets in callbacks/ build every callback they name, with their options."""

import importlib
from pathlib import Path

import pytest
import yaml

PRESETS = sorted((Path(__file__).resolve().parents[1] / "callbacks").glob("*.yaml"))


def build(spec):
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_preset_builds_its_callbacks(path):
    specs = yaml.safe_load(path.read_text())["trainer"]["callbacks"]
    callbacks = [build(spec) for spec in specs]
    assert [type(c).__name__ for c in callbacks] == [
        s["class_path"].rsplit(".", 1)[1] for s in specs
    ]
    for callback, spec in zip(callbacks, specs, strict=True):
        for key, value in spec.get("init_args", {}).items():
            if hasattr(callback, key) and not isinstance(value, list):
                assert getattr(callback, key) == value, (path.name, key)


def test_there_are_presets():
    assert len(PRESETS) >= 3
