"""Lightning Fabric with DDP on two gloo processes: ``attach()`` on the Fabric-wrapped module,
default options; every rank reports the global statistics, only rank 0 writes and prints."""

import pytest
import torch

WORKER = "fabric_run"  # run once for the module by the `launched` fixture
LAYERS = ["net.0", "net.1", "net.2"]


def test_step_0_is_one_process_on_the_union_batch_on_both_ranks(out, worker, reference, scalars):
    model = worker.Net()
    model.load_state_dict(torch.load(out / "init.pt"))
    batches = [torch.load(out / f"batch{r}.pt").double() for r in (0, 1)]
    want = reference(model, lambda m: [m(x).pow(2).mean() for x in batches], LAYERS, worker.LR)
    logged, acc = scalars(out / "tb")
    assert {tag: logged[tag][0] for tag in want} == pytest.approx(want, rel=1e-5, abs=1e-7)
    for rank in (0, 1):  # each rank's own report holds the same global values
        report = torch.load(out / f"report{rank}.pt")[0]
        assert {tag: report[tag] for tag in want} == pytest.approx(want, rel=1e-5, abs=1e-7)
    # default options: histograms and the shift probe at step 0 went through too
    assert "activations/hist/net.0" in acc.Tags()["histograms"]
    assert {f"shift/mean_step/{name}" for name in LAYERS} <= set(logged)
    assert logged["health/shift_mean_step"] == {0: 0.0}  # the first probe is its own reference


def test_only_rank_0_prints_the_diagnosis(out):
    assert "diagnosis" in (out / "stdout0.txt").read_text()
    assert (out / "stdout1.txt").read_text() == ""
