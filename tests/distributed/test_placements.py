"""Which part of a DTensor each rank counts, on a one-process gloo group (the two-process cases
are in test_fsdp.py): every placement but ``Partial`` reads the local shard."""

import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.packing import counted_part
from ln_diagnostics.collect.selection import select_modules


@pytest.fixture
def mesh():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("placement", [Shard(0), Shard(1), Replicate()])
def test_shards_and_replicas_count_their_local_values(mesh, placement):
    full = torch.randn(4, 3)
    part = counted_part(distribute_tensor(full, mesh, [placement]))
    assert type(part) is torch.Tensor
    assert torch.equal(part, full)


def test_partial_sums_are_refused_with_one_warning_and_training_goes_on(mesh):
    model = nn.Sequential(nn.Linear(3, 2))
    layer = model[0]
    for name in ("weight", "bias"):
        value = distribute_tensor(getattr(layer, name).detach(), mesh, [Replicate()])
        setattr(layer, name, nn.Parameter(value))
    collector = Collector(model, select_modules(model))
    with pytest.raises(ValueError, match=r"placements \(Partial\(sum\),\) holds partial sums"):
        counted_part(DTensor.from_local(torch.ones(2), mesh, [Partial()]))
    reports = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, grad in enumerate([[Partial()], [Replicate()]]):
            for p in layer.parameters():
                p.grad = DTensor.from_local(torch.ones_like(p.to_local()), mesh, grad)
            collector.begin_step(step, scalars=True, histograms=True)
            collector.before_optimizer_step()
            reports.append(collector.end_step())
    ours = [str(w.message) for w in caught if "ln-diagnostics" in str(w.message)]
    assert len(ours) == 1
    assert ours[0].startswith("ln-diagnostics: reading gradients and parameters failed at step 0")
    assert "gradients/norm/0" not in reports[0].scalars
    assert reports[1].scalars["gradients/norm/0"] == pytest.approx(8**0.5)  # 6 + 2 ones
    assert reports[1].histograms["gradients/hist/0"].num == 8
