"""Lightning callbacks: thin adapters from Trainer events to the framework-agnostic collector."""

from ln_diagnostics.callbacks.layer_diagnostics import LayerDiagnostics
from ln_diagnostics.callbacks.norm_swap import NormSwap
from ln_diagnostics.callbacks.thresholds import DiagnosticThresholds

__all__ = ["DiagnosticThresholds", "LayerDiagnostics", "NormSwap"]
