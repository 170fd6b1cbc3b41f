"""ChannelLayerNorm / ChannelRMSNorm against float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ln_diagnostics.errors import ArgumentError
from ln_diagnostics.nn.norms import ChannelLayerNorm, ChannelRMSNorm

SHAPES = [(4, 6), (4, 6, 7), (3, 6, 5, 4), (2, 6, 3, 4, 5)]


def _ln_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Channels-last LayerNorm in float64: move C to the end, torch's layer_norm, move back."""
    x64 = x.double().movedim(1, -1)
    y = F.layer_norm(x64, (x.shape[1],), w.double(), b.double(), eps)
    return y.movedim(-1, 1)


def _rms_reference(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double().numpy()
    ms = (x64**2).mean(axis=1, keepdims=True)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.from_numpy(x64 / (ms + eps) ** 0.5 * w.double().numpy().reshape(shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_matches_float64_reference(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3 + 1.5
    norm = ChannelLayerNorm(6, eps=1e-3)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(6, generator=g))
    y = norm(x)
    ref = _ln_reference(x, norm.weight.detach(), norm.bias.detach(), 1e-3)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    assert y.shape == x.shape and y.dtype == x.dtype


def test_layernorm_2d_equals_nn_layernorm() -> None:
    x = torch.randn(5, 9)
    torch.testing.assert_close(ChannelLayerNorm(9)(x), torch.nn.LayerNorm(9)(x))


@pytest.mark.parametrize("shape", SHAPES)
def test_rmsnorm_matches_float64_reference(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 2 - 0.5
    norm = ChannelRMSNorm(6, eps=1e-4)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, generator=g) + 0.5)
    ref = _rms_reference(x, norm.weight.detach(), 1e-4)
    torch.testing.assert_close(norm(x).double(), ref, atol=1e-5, rtol=1e-5)
    assert norm.bias is None


def test_half_inputs_are_computed_in_float32() -> None:
    x = (torch.randn(2, 32, 4, 4) * 50 + 200).to(torch.bfloat16)
    for norm, ref in [
        (
            ChannelLayerNorm(32, dtype=torch.bfloat16),
            _ln_reference(x, torch.ones(32), torch.zeros(32), 1e-5),
        ),
        (ChannelRMSNorm(32, dtype=torch.bfloat16), _rms_reference(x.float(), torch.ones(32), 1e-5)),
    ]:
        y = norm(x)
        assert y.dtype == torch.bfloat16
        # one bfloat16 rounding of the output (8 bits of mantissa), no accumulated error
        torch.testing.assert_close(y.double(), ref, atol=2e-2, rtol=1e-2)


def test_gradients_match_reference() -> None:
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    norm = ChannelLayerNorm(4, dtype=torch.float64)
    torch.autograd.gradcheck(norm, (x,))
    torch.autograd.gradcheck(ChannelRMSNorm(4, dtype=torch.float64), (x,))


def test_affine_false_has_no_parameters_and_repr() -> None:
    norm = ChannelLayerNorm(8, eps=1e-6, affine=False)
    assert list(norm.parameters()) == []
    assert repr(norm) == "ChannelLayerNorm(8, eps=1e-06, affine=False, dim=1)"
    assert repr(ChannelRMSNorm(3)) == "ChannelRMSNorm(3, eps=1e-05, affine=True, dim=1)"


def test_memory_format_is_preserved() -> None:
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    y = ChannelLayerNorm(8)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ChannelLayerNorm(0), "num_channels must be an integer >= 1; got 0"),
        (lambda: ChannelRMSNorm(4, eps=-1.0), "eps must be a finite number >= 0; got -1.0"),
        (lambda: ChannelLayerNorm(4, affine="yes"), "affine must be True or False; got 'yes'"),
    ],
)
def test_bad_constructor_arguments(build, message: str) -> None:
    with pytest.raises(ArgumentError) as info:
        build()
    assert str(info.value) == message


def test_wrong_channel_count_is_reported() -> None:
    with pytest.raises(
        ValueError, match=r"expects input of shape \(N, 8, \*\).*got shape \(2, 4, 3\)"
    ):
        ChannelLayerNorm(8)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"got shape \(8,\)"):
        ChannelRMSNorm(8)(torch.randn(8))
