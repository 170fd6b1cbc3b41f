"""Real FSDP2 on two gloo CPU processes, default options: sharded models log the statistics of
one unsharded model trained on the union of the ranks' batches (float64 reference), and a
failure of ours never ends the run. One launch of ``fsdp_run.py`` serves every test here."""

import json

import pytest
import torch

WORKER = "fsdp_run"  # run once for the module by the `launched` fixture
PLAIN = ["sharded", "one_unsharded", "hsdp"]


def _reports(case_dir, rank):
    return json.loads((case_dir / f"scalars{rank}.json").read_text())


def _want(case_dir, worker, reference, prefix):
    net = worker.make_net()
    net.load_state_dict(torch.load(case_dir / "init.pt"))
    batches = [torch.load(case_dir / f"batch{r}.pt").double() for r in (0, 1)]
    losses = lambda m: [worker.loss_of(m, x) for x in batches]  # noqa: E731
    want = reference(net, losses, ["0", "1", "2"], worker.LR)
    renamed = {}
    for tag, value in want.items():
        group, stat, layer = tag.split("/")
        renamed[f"{group}/{stat}/{prefix}{layer}"] = value
    return renamed


@pytest.mark.parametrize("case", ["lightning", *PLAIN])
def test_step_0_equals_the_unsharded_model_on_the_union_batch(
    out, worker, reference, scalars, case
):
    prefix = "net." if case == "lightning" else ""
    want = _want(out / case, worker, reference, prefix)
    logged, _ = scalars(out / case / "tb")
    assert {tag: logged[tag][0] for tag in want} == pytest.approx(want, rel=1e-5, abs=1e-7)
    total = sum(want[f"gradients/norm/{prefix}{n}"] ** 2 for n in "02") ** 0.5
    assert logged["health/grad_norm_total"][0] == pytest.approx(total, rel=1e-5)
    # the window of step 0 is step 0: shards add up, replicas are counted once
    assert logged["health/grad_norm_total_max"][0] == pytest.approx(total, rel=1e-5)
    # every rank gets the same, global report
    assert _reports(out / case, 1)["0"] == pytest.approx(_reports(out / case, 0)["0"])
    for rank in (0, 1):
        assert (out / case / f"warnings{rank}.txt").read_text() == ""


@pytest.mark.parametrize("case", ["lightning", *PLAIN])
def test_histograms_merge_the_shards_and_the_ranks_exactly(out, worker, scalars, case):
    prefix = "net." if case == "lightning" else ""
    net = worker.make_net()
    net.load_state_dict(torch.load(out / case / "init.pt"))
    batches = [torch.load(out / case / f"batch{r}.pt") for r in (0, 1)]
    _, acc = scalars(out / case / "tb")
    (act,) = acc.Histograms(f"activations/hist/{prefix}0")
    with torch.no_grad():
        union = torch.cat([net[0](x).reshape(-1) for x in batches]).double()
    assert act.histogram_value.num == union.numel()
    assert act.histogram_value.sum == pytest.approx(union.sum().item(), rel=1e-5)
    for layer in "02":
        (grad,) = acc.Histograms(f"gradients/hist/{prefix}{layer}")
        # every element of the full gradient once: shards add up, replicas are not repeated
        assert grad.step == 0
        assert grad.histogram_value.num == sum(p.numel() for p in net[int(layer)].parameters())


def test_nothing_gathers_a_full_parameter_and_one_collective_per_logging_step(out):
    for case in PLAIN:
        for rank in (0, 1):
            calls = json.loads((out / case / f"calls{rank}.json").read_text())
            assert calls == {"all_gather": 1, "full_tensor": 0, "redistribute": 0}, (case, rank)


def test_an_injected_failure_warns_once_and_training_goes_on(out):
    case = out / "failures"
    assert [(case / f"steps{r}.txt").read_text() for r in (0, 1)] == ["3", "3"]
    reports = _reports(case, 0)
    assert sorted(reports) == ["0", "2"]  # step 1: rank 1 could not pack; nothing half-merged
    assert "activations/std/0" in reports["0"]
    assert not [tag for tag in reports["0"] if tag.startswith(("gradients/", "updates/"))]
    assert reports["2"]["gradients/norm/0"] > 0  # the following steps log in full
    assert _reports(case, 1) == reports
    own = (case / "warnings1.txt").read_text().splitlines()
    assert len(own) == 2
    assert "reading gradients and parameters failed at step 0" in own[0]
    assert "injected gradient failure" in own[0] and "training goes on" in own[0]
    assert "packing the step's statistics failed at step 1" in own[1]
    other = (case / "warnings0.txt").read_text().splitlines()
    assert len(other) == 1 and "rank 1 could not measure all of step 0" in other[0]
