"""Power sums and their reduction against float64 numpy references."""

import math

import numpy as np
import pytest
import torch

from ln_diagnostics.stats.moments import FIELDS, Moments, finalize, power_sums


def reference(x: np.ndarray, saturation: str | None = None) -> dict[str, float]:
    x = x.astype(np.float64).ravel()
    mean = x.mean()
    centered = x - mean
    var = (centered**2).mean()
    out = {
        "mean": mean,
        "std": math.sqrt(var),
        "rms": math.sqrt((x**2).mean()),
        "absmax": np.abs(x).max(),
        "kurtosis": (centered**4).mean() / var**2,
        "zero_frac": (x == 0).mean(),
        "nonfinite": 0.0,
    }
    if saturation == "tanh":
        out["saturated_frac"] = (np.abs(x) > 0.97).mean()
    if saturation == "sigmoid":
        out["saturated_frac"] = ((x < 0.03) | (x > 0.97)).mean()
    return out


def stats_of(x: torch.Tensor, saturation=None, shift=None) -> dict[str, float]:
    row = power_sums(x, shift, saturation)
    return finalize(Moments.from_row(row.tolist(), x.numel()), saturation=saturation is not None)


gen = np.random.default_rng(0)
CASES = {
    "gaussian": gen.normal(size=(64, 32)),
    "offset_1e4": 1e4 + gen.normal(size=(128, 16)),  # |mean| >> std: raw moments would fail
    "relu_dead": np.maximum(gen.normal(size=(32, 8, 4)), 0.0),
    "heavy_tail": gen.standard_t(df=5, size=(4096,)),
    "tanh": np.tanh(3.0 * gen.normal(size=(256, 4))),
    "sigmoid": 1.0 / (1.0 + np.exp(-4.0 * gen.normal(size=(256, 4)))),
    "uniform": gen.uniform(-2, 5, size=(1000,)),
}
SATURATION = {"tanh": "tanh", "sigmoid": "sigmoid"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_statistics_match_float64_reference(name):
    x = CASES[name]
    got = stats_of(torch.tensor(x, dtype=torch.float32), SATURATION.get(name))
    want = reference(x.astype(np.float32), SATURATION.get(name))
    assert set(got) == set(want)
    for key, value in want.items():
        scale = max(abs(value), 1.0) if key != "std" else abs(want["std"])
        assert got[key] == pytest.approx(value, rel=2e-4, abs=2e-4 * scale), key


def test_kurtosis_of_gaussian_is_three_and_uniform_is_nine_fifths():
    torch.manual_seed(0)
    assert stats_of(torch.randn(400_000))["kurtosis"] == pytest.approx(3.0, abs=0.03)
    assert stats_of(torch.rand(400_000))["kurtosis"] == pytest.approx(1.8, abs=0.01)


def test_calls_sharing_a_shift_merge_to_the_statistics_of_the_concatenation():
    a = torch.tensor(gen.normal(2.0, 1.0, size=(50, 8)), dtype=torch.float32)
    b = torch.tensor(gen.normal(-1.0, 3.0, size=(30, 8)), dtype=torch.float32)
    ra = power_sums(a)
    rb = power_sums(b, shift=ra[0])
    merged = Moments.from_row(ra.tolist(), a.numel())
    merged.merge(Moments.from_row(rb.tolist(), b.numel()))
    got = finalize(merged)
    want = reference(torch.cat([a, b]).numpy())
    for key in ("mean", "std", "rms", "absmax", "kurtosis", "zero_frac"):
        assert got[key] == pytest.approx(want[key], rel=1e-4), key


def test_nonfinite_values_are_counted_and_propagate():
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, 3.4e38, -3.4e38])
    got = stats_of(x)
    assert got["nonfinite"] == 3
    assert math.isnan(got["mean"])
    # huge but finite values are not counted as non-finite
    assert stats_of(torch.tensor([3.4e38, -3.4e38, 1.0]))["nonfinite"] == 0


def test_nan_and_inf_are_neither_zeros_nor_hidden_in_the_other_counts():
    """A layer gone NaN must not look dead: zero_frac counts exact zeros only."""
    x = torch.tensor([float("nan"), float("nan"), float("inf"), -float("inf"), 0.0, 0.99, -0.2])
    row = dict(zip(FIELDS, power_sums(x, saturation="tanh").tolist(), strict=True))
    assert row["nonzero"] == 6  # numpy: (x != 0).sum()
    assert row["saturated"] == 3  # ±inf and 0.99; NaN is not above the threshold
    assert row["nonfinite"] == 4
    got = stats_of(torch.full((64,), float("nan")))
    assert got["zero_frac"] == 0.0 and got["nonfinite"] == 64


def test_constant_tensor_has_zero_std_and_no_kurtosis():
    got = stats_of(torch.full((100,), 0.1))
    assert got["std"] == pytest.approx(0.0, abs=1e-7)
    assert "kurtosis" not in got
    assert got["zero_frac"] == 0.0
    assert stats_of(torch.zeros(10))["zero_frac"] == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_accumulated_in_float32(dtype):
    x = torch.full((70_000,), 1.0, dtype=dtype)  # a float16 sum would stop at 2048
    assert power_sums(x).dtype == torch.float32
    got = stats_of(x)
    assert got["mean"] == pytest.approx(1.0)
    assert got["rms"] == pytest.approx(1.0)


def test_statistics_do_not_touch_autograd():
    x = torch.randn(8, 4, requires_grad=True)
    assert not power_sums(x * 2).requires_grad


def test_chunked_reduction_matches_the_single_pass(monkeypatch):
    """Tensors longer than CHUNK are reduced chunk by chunk into the same row."""
    import ln_diagnostics.stats.moments as moments

    torch.manual_seed(3)
    x = torch.cat([torch.randn(1000) * 3 + 5, torch.zeros(37), torch.tanh(torch.randn(500))])
    whole = power_sums(x, saturation="tanh")
    monkeypatch.setattr(moments, "CHUNK", 256)  # 6 full chunks and a short one
    chunked = power_sums(x, saturation="tanh", scratch=moments.Scratch())
    assert chunked[0] == whole[0]
    assert torch.allclose(chunked[1:], whole[1:], rtol=1e-5, atol=1e-3)
    saturated = float((x.abs() > 0.97).sum())
    assert chunked[7:].tolist() == [float(x.numel() - 37), saturated, 0.0]
    x[17], x[300] = float("inf"), float("nan")
    assert power_sums(x)[9] == 2.0 and math.isnan(power_sums(x)[2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_reused_scratch_gives_the_same_row_for_every_dtype_and_size(dtype):
    from ln_diagnostics.stats.moments import Scratch

    scratch = Scratch()
    for n in (5000, 17, 5000, 300):
        x = torch.randn(n).to(dtype)
        assert torch.equal(power_sums(x, scratch=scratch), power_sums(x))
