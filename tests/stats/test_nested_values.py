"""Nested tensors are described by their values: padding is not part of them."""

import math

import pytest
import torch

from ln_diagnostics.stats.moments import Moments, dense_values, finalize, power_sums
from ln_diagnostics.stats.shift import feature_moments

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")


def components():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, 4, generator=gen) + 2.0, torch.randn(5, 4, generator=gen) * 3.0]


def nested(layout, view):
    """A nested tensor in ``layout``; ``view`` makes it a non-contiguous view of a larger one."""
    parts = components()
    if view == "contiguous":
        return torch.nested.nested_tensor(parts, layout=layout)
    if layout == torch.jagged:  # rows 1.. of each padded sequence: offsets that skip values
        padded = torch.zeros(2, 6, 4)
        padded[0, 1:4], padded[1, 1:6] = parts
        starts, lengths = torch.tensor([1, 1]), torch.tensor([3, 5])
        return torch.nested.narrow(padded, 1, starts, lengths, layout=torch.jagged)
    wide = torch.nested.nested_tensor([p.T.contiguous() for p in parts])
    return wide.transpose(1, 2)  # strided layout: same components, transposed strides


CASES = [
    (layout, view) for layout in (torch.strided, torch.jagged) for view in ("contiguous", "view")
]


@pytest.mark.parametrize(("layout", "view"), CASES)
def test_dense_values_are_the_components_rows_without_padding(layout, view):
    x = nested(layout, view)
    values = dense_values(x)
    assert not values.is_nested
    torch.testing.assert_close(values, torch.cat(components()), rtol=0, atol=0)


@pytest.mark.parametrize(("layout", "view"), CASES)
def test_power_sums_of_a_nested_tensor_are_those_of_its_values(layout, view):
    reference = torch.cat(components()).double().reshape(-1)
    stats = finalize(Moments.from_row(power_sums(nested(layout, view)).tolist(), 32))
    assert stats["mean"] == pytest.approx(reference.mean().item(), rel=1e-6)
    assert stats["std"] == pytest.approx(reference.std(unbiased=False).item(), rel=1e-6)
    assert stats["absmax"] == pytest.approx(reference.abs().max().item(), rel=1e-7)


@pytest.mark.parametrize(("layout", "view"), CASES)
def test_feature_moments_of_a_nested_tensor_are_per_last_dimension(layout, view):
    reference = torch.cat(components()).double()
    mean, var = feature_moments(nested(layout, view))
    torch.testing.assert_close(mean.double(), reference.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), reference.var(0, unbiased=False), rtol=1e-5, atol=0)


def test_a_ragged_last_dimension_pools_all_values_into_one_feature():
    parts = [torch.arange(3.0), torch.arange(5.0) * 2]
    for layout in (torch.strided, torch.jagged):
        mean, var = feature_moments(torch.nested.nested_tensor(parts, layout=layout))
        flat = torch.cat(parts).double()
        assert mean.tolist() == pytest.approx([flat.mean().item()])
        assert var.tolist() == pytest.approx([flat.var(unbiased=False).item()])
        assert math.isclose(float(dense_values(torch.nested.nested_tensor(parts)).sum()), 23.0)


def test_feature_moments_refuses_a_dimension_number_for_a_nested_tensor():
    with pytest.raises(ValueError, match="dim: a nested tensor's features are the last dimension"):
        feature_moments(nested(torch.jagged, "contiguous"), dim=1)
