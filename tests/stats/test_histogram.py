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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_chunked_histogram_with_reused_scratch_matches_numpy(monkeypatch, dtype):
    """Longer than CHUNK: counted chunk by chunk into the scratch's buffers, which are reused
    (and left dirty) from one call to the next without changing the result."""
    from ln_diagnostics.stats import histogram as module
    from ln_diagnostics.stats.moments import Scratch

    monkeypatch.setattr(module, "CHUNK", 300)  # 6 full chunks and a short one
    gen = np.random.default_rng(2)
    scratch = Scratch()
    edges = bucket_edges(torch.device("cpu"))
    e = edges.numpy().astype(np.float64)
    for size in (1937, 250, 1937):
        x = torch.tensor(gen.standard_normal(size) * 5.0).to(dtype)
        floats, counts = histogram(x, edges, scratch=scratch)
        ref = x.double().numpy()
        cumulative = np.array([(ref.astype(np.float32) <= edge).sum() for edge in e])
        want = np.diff(np.concatenate([[0], cumulative, [size]]))
        np.testing.assert_array_equal(counts.numpy(), want)
        lo, hi, total, squares = floats.tolist()
        assert (lo, hi) == (np.float32(ref.min()), np.float32(ref.max()))
        assert total == pytest.approx(ref.sum(), rel=1e-5, abs=1e-3)
        assert squares == pytest.approx((ref**2).sum(), rel=1e-5)


@pytest.mark.parametrize("sync_free", [False, True])
def test_bucket_counts_of_both_kernels_match_numpy(sync_free):
    """``bincount`` (CPU) and the ``index_add_`` path used on CUDA count the same, the last bucket
    (NaN and values above the top edge) and empty buckets included."""
    from ln_diagnostics.stats.histogram import bucket_counts

    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 0.0, 3.0, -1e-9, 1e30])
    edges = bucket_edges(torch.device("cpu"))
    index = torch.bucketize(x, edges, out_int32=True)
    counts = bucket_counts(index, edges.numel() + 1, sync_free=sync_free)
    want = np.bincount(index.numpy(), minlength=edges.numel() + 1)
    assert counts.dtype == torch.int64
    np.testing.assert_array_equal(counts.numpy(), want)
    assert counts[-1] == 3 and counts[0] == 1


def test_an_empty_tensor_has_no_counts_and_neutral_extremes():
    floats, counts = histogram(torch.empty(0, 3), bucket_edges(torch.device("cpu")))
    assert floats.tolist() == [float("inf"), -float("inf"), 0.0, 0.0]
    assert counts.sum() == 0 and counts.numel() == bucket_edges(torch.device("cpu")).numel() + 1


def test_bucket_index_is_bucketize_at_and_beside_every_edge():
    """The arithmetic bucket index equals ``torch.bucketize`` for every edge, its float32
    neighbours on both sides, signed zeros, infinities, NaN, values beyond the range and a wide
    log-uniform sample."""
    from ln_diagnostics.stats.histogram import bucket_index

    edges = bucket_edges(torch.device("cpu"))
    inf = torch.tensor(float("inf"))
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-30, -1e-30])
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(20000, generator=gen) * torch.logspace(-12, 12, 20000)
    x = torch.cat([edges, edges.nextafter(inf), edges.nextafter(-inf), special, wide, -wide])
    got = bucket_index(
        x, edges, out=torch.empty(x.numel(), dtype=torch.int32), work=torch.empty(x.numel())
    )
    want = torch.bucketize(x, edges, out_int32=True)
    assert torch.equal(got, want), x[got != want]
