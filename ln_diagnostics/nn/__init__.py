"""Norm layers that normalize each sample over the channel dimension, and BatchNorm swap surgery.

This layer depends on torch only: no Lightning, no TensorBoard.
"""

from ln_diagnostics.nn.norms import ChannelLayerNorm, ChannelRMSNorm
from ln_diagnostics.nn.swap import SwapEntry, SwapReport, swap_batchnorm

__all__ = ["ChannelLayerNorm", "ChannelRMSNorm", "SwapEntry", "SwapReport", "swap_batchnorm"]
