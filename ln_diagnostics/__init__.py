"""ln-diagnostics: layer-by-layer health of a deep network while it trains."""

from ln_diagnostics.attach import attach
from ln_diagnostics.errors import ThresholdViolation
from ln_diagnostics.nn.swap import SwapReport, swap_batchnorm

__all__ = ["SwapReport", "ThresholdViolation", "attach", "swap_batchnorm"]
__version__ = "0.1.0"
