"""Fixtures of the collector tests."""

import sys

import pytest
import torch


class SyncCounter:
    """Counts host-sync entry points called from ln_diagnostics code."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__")

    def __init__(self, monkeypatch):
        self.calls = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def wrapper(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "ln_diagnostics" in caller:
                self.calls.append(name)
            return original(tensor, *args, **kwargs)

        return wrapper


@pytest.fixture
def sync_counter(monkeypatch):
    """``sync_counter()`` starts counting host syncs from ln_diagnostics code (``.calls``)."""
    return lambda: SyncCounter(monkeypatch)
