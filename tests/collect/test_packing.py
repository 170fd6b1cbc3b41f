"""The packed layout: one definition that packing, the power-sum rows and the reduction read."""

import dataclasses
import math

import pytest
import torch

from ln_diagnostics.collect.packing import (
    ACTIVATION,
    HISTOGRAM,
    NORMS,
    Layout,
    pack,
    pack_activations,
    pack_backprop,
    pack_histograms,
    split,
)
from ln_diagnostics.stats.moments import CENTRED, FIELDS, Moments, power_sums, reshift


def test_the_row_layout_is_the_field_order_of_moments():
    names = [f.name for f in dataclasses.fields(Moments)]
    assert names == ["n", *FIELDS] == list(ACTIVATION)
    assert FIELDS[CENTRED] == ("shift", "s1", "s2", "s3", "s4")
    x = torch.tensor([1.0, -2.0, 0.0, 3.0])
    row = dict(zip(FIELDS, power_sums(x).tolist(), strict=True))
    assert (row["min"], row["max"], row["nonzero"]) == (-2.0, 3.0, 3.0)
    assert Moments.from_row(list(row.values()), 4).s2 == pytest.approx(row["s2"])


@pytest.mark.parametrize("buckets", [0, 5])
def test_pack_then_split_gives_every_block_back_row_by_row(buckets):
    layout = Layout(modules=3, params=4, hist_buckets=buckets)
    parts = {
        name: torch.arange(rows * width, dtype=torch.float64).reshape(rows, width) + 1000 * k
        for k, (name, rows, width) in enumerate(layout.blocks())
    }
    vector = pack(layout, parts)
    assert vector.dtype == torch.float64 and vector.numel() == len(layout)
    blocks = split(vector.tolist(), layout)
    assert list(blocks) == [name for name, _, _ in layout.blocks()]
    for name, part in parts.items():
        assert blocks[name] == part.tolist()
    widths = {name: width for name, _, width in layout.blocks()}
    assert widths["act"] == len(ACTIVATION) and widths["norms"] == len(NORMS)
    assert ("act_hist" in blocks) == bool(buckets)
    if buckets:
        assert widths["act_hist"] == len(HISTOGRAM) + buckets


def test_pack_rejects_a_block_of_another_shape():
    layout = Layout(modules=2, params=1, hist_buckets=0)
    parts = {name: torch.zeros(rows, width) for name, rows, width in layout.blocks()}
    parts["bp"] = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"block 'bp' must have shape \(2, 2\); got \(3, 2\)"):
        pack(layout, parts)
    del parts["bp"]
    with pytest.raises(ValueError, match="block 'bp' must have shape"):
        pack(layout, parts)


def test_activation_slots_add_the_calls_of_a_module_and_keep_its_extremes():
    a, b = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([-4.0, 5.0])
    first = power_sums(a)
    second = power_sums(b, first[0])  # a second call shares the first call's shift
    slots = pack_activations(3, [(1, 3, first), (1, 2, second)], torch.device("cpu"))
    row = dict(zip(ACTIVATION, slots[1].tolist(), strict=True))
    both = torch.cat([a, b]).double()
    k = first[0].item()
    assert row["n"] == 5 and row["shift"] == pytest.approx(k)
    for p in range(1, 5):
        assert row[f"s{p}"] == pytest.approx(((both - k) ** p).sum().item(), rel=1e-6)
    assert (row["min"], row["max"], row["nonzero"]) == (-4.0, 5.0, 4.0)
    empty = dict(zip(ACTIVATION, slots[0].tolist(), strict=True))
    assert (empty["n"], empty["min"], empty["max"]) == (0.0, math.inf, -math.inf)
    # the host re-centres a row to another shift from the same columns
    moved = reshift(slots[1].tolist()[1:], 5, 0.0)
    assert moved[1:5] == pytest.approx([(both**p).sum().item() for p in range(1, 5)], rel=1e-6)


def test_backprop_and_histogram_slots_follow_their_columns():
    cpu = torch.device("cpu")
    bp = pack_backprop(2, [(0, torch.tensor(3.0)), (0, torch.tensor(4.0))], cpu)
    assert dict(zip(("squares", "calls"), bp[0].tolist(), strict=True)) == {
        "squares": 25.0,
        "calls": 2.0,
    }
    floats = torch.tensor([-1.0, 2.0, 1.5, 5.0])
    hist = pack_histograms(1, [(0, floats, torch.tensor([1.0, 0.0, 3.0]))], 3, cpu)
    head = dict(zip(HISTOGRAM, hist[0, : len(HISTOGRAM)].tolist(), strict=True))
    assert head == {"min": -1.0, "max": 2.0, "sum": 1.5, "sum_squares": 5.0}
    assert hist[0, len(HISTOGRAM) :].tolist() == [1.0, 0.0, 3.0]
