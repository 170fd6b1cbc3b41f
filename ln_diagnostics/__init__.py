"""ln-diagnostics: layer-by-layer health of a deep network while it trains.

The training-side names import torch on first use, so the command line (which reads event files
and never needs torch) starts in a fraction of the time and memory.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ln_diagnostics.errors import ArgumentError, ThresholdViolation

if TYPE_CHECKING:
    from ln_diagnostics.attach import Diagnostics, attach
    from ln_diagnostics.nn.swap import SwapReport, swap_batchnorm

_LAZY = {
    "attach": "ln_diagnostics.attach",
    "Diagnostics": "ln_diagnostics.attach",
    "SwapReport": "ln_diagnostics.nn.swap",
    "swap_batchnorm": "ln_diagnostics.nn.swap",
}

__all__ = [
    "ArgumentError",
    "Diagnostics",
    "SwapReport",
    "ThresholdViolation",
    "attach",
    "swap_batchnorm",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ln_diagnostics' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazily imported ones included (for ``dir()`` and completion)."""
    return sorted({*globals(), *_LAZY})
