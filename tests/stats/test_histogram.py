"""Device-side fixed-bucket histograms against numpy."""

import numpy as np
import pytest
import torch

from ln_diagnostics.stats.histogram import bucket_edges, histogram


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e3])
def test_counts_match_numpy_with_the_same_edges(scale):
    gen = np.random.default_rng(1)
    x = (gen.standard_t(3, size=5000) * scale).astype(np.float32)
    x[:7] = 0.0
    edges = bucket_edges(torch.device("cpu"))
    floats, counts = histogram(torch.tensor(x), edges)
    e = edges.numpy().astype(np.float64)
    # bucket i holds (e[i-1], e[i]]: count values <= each edge and difference them
    cumulative = np.array([(x.astype(np.float64) <= edge).sum() for edge in e])
    want = np.diff(np.concatenate([[0], cumulative, [x.size]]))
    np.testing.assert_array_equal(counts.numpy(), want)
    assert counts.sum().item() == x.size
    lo, hi, total, squares = floats.tolist()
    assert (lo, hi) == (x.min(), x.max())
    assert total == pytest.approx(x.astype(np.float64).sum(), rel=1e-4, abs=1e-4 * scale)
    assert squares == pytest.approx((x.astype(np.float64) ** 2).sum(), rel=1e-4)


def test_edges_are_symmetric_increasing_and_include_zero():
    e = bucket_edges(torch.device("cpu")).double()
    assert torch.all(e[1:] > e[:-1])
    assert torch.allclose(e, -e.flip(0))
    assert (e == 0).sum() == 1
    assert e[-1] == pytest.approx(1e8, rel=1e-6)
