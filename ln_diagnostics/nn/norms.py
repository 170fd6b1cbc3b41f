"""Per-sample normalization over the channel dimension, for inputs of any rank ≥ 2.

Convolutional and fully connected layers put channels in dimension 1: ``(N, C)``, ``(N, C, L)``,
``(N, C, H, W)``, ``(N, C, D, H, W)``. ``torch.nn.LayerNorm`` normalizes over the *trailing*
dimensions, so it only fits the ``(N, C)`` case. The layers here normalize each sample over
dimension 1 at every other position, whatever the rank, so one module can replace any BatchNorm
variant (a ``BatchNorm1d`` may see ``(N, C)`` or ``(N, C, L)``) without knowing the input shape
in advance.

Both layers compute in float32 for float16/bfloat16 inputs and return the input's dtype. Neither
keeps running statistics, so training and evaluation mode compute the same function and a batch
of one sample is fine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ln_diagnostics._validate import check_bool, check_int, check_number

__all__ = ["ChannelLayerNorm", "ChannelRMSNorm"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in _HALF_DTYPES else x.dtype


def _channel_view(p: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    """A ``(C,)`` parameter shaped ``(C, 1, ..., 1)`` to broadcast over ``(N, C, *spatial)``."""
    return p.to(dtype).reshape(p.shape[0], *([1] * (ndim - 2)))


class _ChannelNorm(nn.Module):
    """Shared constructor, parameters, input check and ``extra_repr``."""

    weight: nn.Parameter | None
    bias: nn.Parameter | None

    #: whether an affine layer also learns a per-channel shift β
    _has_bias: bool = True

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_channels = check_int("num_channels", num_channels, minimum=1)
        self.eps = check_number("eps", eps, minimum=0)
        self.affine = check_bool("affine", affine)
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.empty(num_channels, **factory))
        else:
            self.register_parameter("weight", None)
        if affine and self._has_bias:
            self.bias = nn.Parameter(torch.empty(num_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set the scale to one and the shift (if any) to zero."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, {self.num_channels}, *) "
                f"with channels in dimension 1; got shape {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}, dim=1"


class ChannelLayerNorm(_ChannelNorm):
    r"""Layer normalization over the channel dimension (dim 1) of ``(N, C, *)`` inputs.

    For every sample and every position (time step, pixel, voxel) the ``C`` channel values are
    standardized with their own mean and (biased) variance, then scaled and shifted per channel:

    .. math::
        y_{n,c,p} = \gamma_c \, \frac{x_{n,c,p} - \mu_{n,p}}{\sqrt{\sigma^2_{n,p} + \epsilon}}
        + \beta_c, \quad \mu_{n,p} = \tfrac{1}{C}\sum_c x_{n,c,p},\;
        \sigma^2_{n,p} = \tfrac{1}{C}\sum_c (x_{n,c,p} - \mu_{n,p})^2

    On ``(N, C)`` input this is exactly ``nn.LayerNorm(C)``; on ``(N, C, H, W)`` it is the
    channels-first LayerNorm of ConvNeXt. The output keeps the input's memory layout.

    Args:
        num_channels: ``C``, the size of dimension 1.
        eps: added to the variance for numerical stability.
        affine: whether to learn a per-channel scale ``γ`` (ones) and shift ``β`` (zeros).
        device: where to create the parameters.
        dtype: dtype of the parameters.

    Example:
        >>> import torch
        >>> norm = ChannelLayerNorm(8)
        >>> y = norm(torch.randn(2, 8, 5, 5))
        >>> torch.allclose(y.mean(dim=1), torch.zeros(2, 5, 5), atol=1e-5)
        True
        >>> norm
        ChannelLayerNorm(8, eps=1e-05, affine=True, dim=1)
    """

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` of shape ``(N, C, *)`` over dimension 1."""
        self._check_input(x)
        cdt = _compute_dtype(x)
        xc = x.to(cdt)
        if x.dim() == 2:
            weight = None if self.weight is None else self.weight.to(cdt)
            bias = None if self.bias is None else self.bias.to(cdt)
            return F.layer_norm(xc, (self.num_channels,), weight, bias, self.eps).to(x.dtype)
        var, mean = torch.var_mean(xc, dim=1, keepdim=True, correction=0)
        y = (xc - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * _channel_view(self.weight, x.dim(), cdt)
        if self.bias is not None:
            y = y + _channel_view(self.bias, x.dim(), cdt)
        return y.to(x.dtype)


class ChannelRMSNorm(_ChannelNorm):
    r"""RMS normalization over the channel dimension (dim 1) of ``(N, C, *)`` inputs.

    For every sample and position the ``C`` channel values are divided by their root mean
    square and scaled per channel; there is no centering and no shift (Zhang & Sennrich 2019):

    .. math::
        y_{n,c,p} = \gamma_c \, \frac{x_{n,c,p}}{\sqrt{\tfrac{1}{C}\sum_{c'} x_{n,c',p}^2
        + \epsilon}}

    Args:
        num_channels: ``C``, the size of dimension 1.
        eps: added to the mean square for numerical stability.
        affine: whether to learn a per-channel scale ``γ`` (initialized to ones).
        device: where to create the parameter.
        dtype: dtype of the parameter.

    Example:
        >>> import torch
        >>> norm = ChannelRMSNorm(16, affine=False)
        >>> y = norm(torch.randn(4, 16, 10))
        >>> torch.allclose(y.square().mean(dim=1), torch.ones(4, 10), atol=1e-3)
        True
    """

    _has_bias = False

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` of shape ``(N, C, *)`` over dimension 1."""
        self._check_input(x)
        cdt = _compute_dtype(x)
        xc = x.to(cdt)
        y = xc * torch.rsqrt(xc.square().mean(dim=1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * _channel_view(self.weight, x.dim(), cdt)
        return y.to(x.dtype)
