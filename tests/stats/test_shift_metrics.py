"""Covariate-shift metrics against closed forms and float64 numpy references."""

import math

import numpy as np
import pytest
import torch

from ln_diagnostics.stats.shift import (
    EPS,
    feature_dim,
    feature_moments,
    logvar_shift,
    mean_shift,
    merge_moments,
    segment_shift_metrics,
    shift_metrics,
    symmetric_kl,
)


def gaussians(mu, var, mu_ref, var_ref):
    t = lambda v: torch.tensor([v], dtype=torch.float32)  # noqa: E731
    return t(mu), t(var), t(mu_ref), t(var_ref)


@pytest.mark.parametrize("delta", [0.0, 0.1, 1.0, 3.0])
def test_kl_of_unit_gaussians_is_delta_squared_over_two_each_way(delta):
    # eps = 0 so that the closed form holds exactly: KL(N(0,1)||N(δ,1)) = δ²/2 each way.
    value = symmetric_kl(*gaussians(0.0, 1.0, delta, 1.0), eps=0.0)
    assert value.item() == pytest.approx(delta**2, rel=1e-6, abs=1e-7)
    reverse = symmetric_kl(*gaussians(delta, 1.0, 0.0, 1.0), eps=0.0)
    assert reverse.item() == pytest.approx(value.item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(
    ("mu", "var", "mu_ref", "var_ref"),
    [(0.3, 2.0, -0.5, 0.5), (1.0, 1e-3, 1.0, 4.0), (-2.0, 0.7, 0.1, 0.7)],
)
def test_kl_matches_the_sum_of_both_directions_in_float64(mu, var, mu_ref, var_ref):
    def kl(m1, v1, m2, v2):
        return 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)

    vp, vq = var + EPS, var_ref + EPS
    expected = kl(mu, vp, mu_ref, vq) + kl(mu_ref, vq, mu, vp)
    got = symmetric_kl(*gaussians(mu, var, mu_ref, var_ref)).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_identical_inputs_give_zero():
    x = torch.randn(128, 16)
    mu, var = feature_moments(x)
    assert shift_metrics(mu, var, mu, var).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("scale", [0.25, 0.5, 2.0, 10.0])
def test_scale_change_gives_abs_log_of_variance_ratio(scale):
    x = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))
    mu, var = feature_moments(x)
    mu2, var2 = feature_moments(scale * x)
    got = logvar_shift(mu2, var2, mu, var).item()
    assert got == pytest.approx(abs(math.log(scale**2)), rel=1e-4)


def test_mean_shift_is_standardised_by_the_reference_std():
    mu, var, mu_ref, var_ref = gaussians(1.5, 9.0, 0.5, 4.0)
    assert mean_shift(mu, var, mu_ref, var_ref).item() == pytest.approx(
        1.0 / math.sqrt(4.0 + EPS), rel=1e-6
    )
    # constant (dead) features give finite values thanks to eps
    zero = torch.zeros(3)
    assert shift_metrics(zero, zero, zero, zero).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("shape", "axis", "kwargs"),
    [
        ((64, 7), 1, {}),  # (N, F)
        ((4, 16, 5), 2, {}),  # (N, T, F): last dim
        ((4, 6, 16), 1, {"channels_first": True}),  # (N, C, L) of a Conv1d
        ((3, 5, 4, 6), 1, {}),  # (N, C, H, W): channels
        ((2, 3, 4, 5, 2), 1, {}),  # (N, C, D, H, W)
        ((50,), None, {}),  # one feature
    ],
)
@pytest.mark.parametrize("scratch", [None, 1000, 3], ids=["fresh", "scratch", "short_scratch"])
def test_per_feature_moments_match_numpy_float64(shape, axis, kwargs, scratch):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen) * 3.0 + 2.0
    if scratch is not None:
        kwargs = {**kwargs, "scratch": torch.full((scratch,), float("nan"))}
    mu, var = feature_moments(x, **kwargs)
    a = x.double().numpy()
    if axis is None:
        ref_mu, ref_var = np.array([a.mean()]), np.array([a.var()])
    else:
        others = tuple(d for d in range(a.ndim) if d != axis)
        ref_mu, ref_var = a.mean(axis=others), a.var(axis=others)
    assert mu.dtype == torch.float32
    np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var.numpy(), ref_var, rtol=1e-5)


def test_half_precision_is_accumulated_in_float32():
    x = (torch.randn(256, 4) * 100).half()
    mu, var = feature_moments(x)
    assert mu.dtype == var.dtype == torch.float32
    np.testing.assert_allclose(var.numpy(), x.double().numpy().var(axis=0), rtol=1e-5)


@pytest.mark.parametrize(
    ("ndim", "channels_first", "dim"),
    [(1, False, None), (2, False, 1), (3, False, 2), (3, True, 1), (4, False, 1), (5, False, 1)],
)
def test_feature_dim_table(ndim, channels_first, dim):
    assert feature_dim(ndim, channels_first=channels_first) == dim


def test_merged_moments_equal_moments_of_the_concatenation():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(30, 4, generator=gen), torch.randn(50, 4, generator=gen) * 2 + 1
    n, mu, var = merge_moments((30, *feature_moments(a)), (50, *feature_moments(b)))
    ref = torch.cat([a, b]).double().numpy()
    assert n == 80
    np.testing.assert_allclose(mu.numpy(), ref.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var.numpy(), ref.var(0), rtol=1e-5)


def test_segmented_metrics_equal_the_metrics_of_each_layer():
    gen = torch.Generator().manual_seed(5)
    sizes = [3, 1, 8, 5]
    fits = [[torch.randn(n, generator=gen), torch.rand(n, generator=gen) * 2] for n in sizes]
    refs = [[mu + 0.3 * torch.randn(mu.shape, generator=gen), var * 1.5] for mu, var in fits]
    refs[1][1] = torch.zeros(1)  # a dead feature: eps keeps it finite
    columns = [torch.cat([pair[k] for pair in side]) for side in (fits, refs) for k in (0, 1)]
    got = segment_shift_metrics(*columns, sizes)
    want = torch.stack([shift_metrics(*fit, *ref) for fit, ref in zip(fits, refs, strict=True)])
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
