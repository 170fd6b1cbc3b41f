"""Real DDP: two gloo processes on CPU, default options first; statistics are those of one
process trained on the union of both ranks' batches, checked against a float64 reference."""

import pytest
import torch

WORKER = "ddp_run"  # run once for the module by the `launched` fixture
LAYERS = ["net.0", "net.1", "net.2", "only_rank1"]


def _batches(run):
    return [torch.load(run / f"batch{r}.pt").double() for r in (0, 1)]


def _initial(run, worker):
    model = worker.Net()
    model.load_state_dict(torch.load(run / "init.pt"))
    return model.double()


@pytest.mark.parametrize("run", ["default", "every_step"])
def test_step_0_equals_one_process_on_the_union_batch(out, worker, reference, scalars, run):
    logged, _ = scalars(out / run / "tb")
    batches = _batches(out / run)
    losses = lambda m: [m.loss(x, r) for r, x in enumerate(batches)]  # noqa: E731
    want = reference(_initial(out / run, worker), losses, LAYERS, worker.LR)
    got = {tag: logged[tag][0] for tag in want}
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    total = sum(want[f"gradients/norm/{n}"] ** 2 for n in ("net.0", "net.2")) ** 0.5
    assert logged["health/grad_norm_total"][0] == pytest.approx(total, rel=1e-5)
    # the window of step 0 is step 0: DDP's replicated gradients counted once
    assert logged["health/grad_norm_total_max"][0] == pytest.approx(total, rel=1e-5)
    # the ranks see different data: neither rank's own statistics would pass
    model = _initial(out / run, worker)
    with torch.no_grad():
        for x in batches:
            own = model.net[0](x).mean().item()
            assert abs(got["activations/mean/net.0"] - own) > 0.05


def test_default_options_merge_histograms_of_both_ranks_at_step_0(out, worker, scalars):
    _, acc = scalars(out / "default" / "tb")
    model = _initial(out / "default", worker)
    batches = _batches(out / "default")
    with torch.no_grad():
        union = torch.cat([model.net[0](x).reshape(-1) for x in batches])
    (act,) = acc.Histograms("activations/hist/net.0")
    assert act.step == 0
    assert act.histogram_value.num == union.numel()  # both ranks' outputs
    assert act.histogram_value.sum == pytest.approx(union.sum().item(), rel=1e-5)
    assert act.histogram_value.max == pytest.approx(union.max().item(), rel=1e-6)
    (grad,) = acc.Histograms("gradients/hist/net.0")
    assert grad.histogram_value.num == 6 * 8 + 8  # DDP's replicated gradient, counted once


def test_every_step_logs_scalars_each_step_and_histograms_every_tenth(out, scalars):
    logged, acc = scalars(out / "every_step" / "tb")
    assert sorted(logged["activations/mean/net.1"]) == list(range(11))
    assert sorted(logged["activations/zero_frac/only_rank1"]) == list(range(11))  # rank 1 only
    assert [e.step for e in acc.Histograms("activations/hist/net.1")] == [0, 10]
    assert [e.step for e in acc.Histograms("gradients/hist/net.2")] == [0, 10]


def test_shift_probe_runs_with_the_default_options(out, scalars):
    logged, _ = scalars(out / "every_step" / "tb")
    shift = logged["shift/mean_init/net.2"]
    assert sorted(shift) == list(range(11))
    assert shift[0] == pytest.approx(0.0, abs=1e-9)  # the reference itself
    assert shift[10] > 1e-3  # the model learned
    assert "shift/mean_init/net.2" in scalars(out / "default" / "tb")[0]


def test_group_depth_pools_the_block_over_both_ranks(out, worker, scalars):
    logged, _ = scalars(out / "grouped" / "tb")
    model = _initial(out / "grouped", worker)
    batches = _batches(out / "grouped")
    with torch.no_grad():
        outputs = []
        for rank, x in enumerate(batches):
            h0 = model.net[0](x)
            h1 = model.net[1](h0)
            h2 = model.net[2](model.only_rank1(h1) if rank else h1)
            outputs += [h0.reshape(-1), h1.reshape(-1), h2.reshape(-1)]
        pooled = torch.cat(outputs)
        params = torch.cat([p.reshape(-1) for p in model.net.parameters()])
    want_std = pooled.std(unbiased=False).item()
    assert logged["activations/std/net"][0] == pytest.approx(want_std, rel=1e-5)
    assert logged["parameters/norm/net"][0] == pytest.approx(params.norm().item(), rel=1e-6)
    assert "gradients/norm/net.0" not in logged


def test_window_sentinels_cover_the_steps_between_logging_steps(out, scalars):
    logged, _ = scalars(out / "window" / "tb")
    norms = [torch.load(out / "window" / f"norms{r}.pt") for r in (0, 1)]
    assert len(norms[0]) == 6 and norms[0] == pytest.approx(norms[1], rel=1e-12)  # averaged
    window = logged["health/grad_norm_total_max"]
    assert sorted(window) == [0, 5]
    assert window[0] == pytest.approx(norms[0][0], rel=1e-5)
    assert window[5] == pytest.approx(max(norms[0][1:6]), rel=1e-5)
    assert window[5] != pytest.approx(logged["health/grad_norm_total"][5], rel=1e-3)
    assert logged["health/nonfinite_grad_steps"] == {0: 0.0, 5: 0.0}


@pytest.mark.parametrize("run", ["default", "every_step", "grouped", "window"])
def test_one_writer_no_warning_one_collective_per_logging_step(out, run):
    assert len(list((out / run).rglob("events.out.tfevents.*"))) == 1  # rank 0 writes
    for rank in (0, 1):
        assert (out / run / f"warnings{rank}.txt").read_text() == ""
    logging_steps = {"default": 1, "every_step": 11, "grouped": 1, "window": 2}[run]
    assert [(out / run / f"collectives{r}.txt").read_text() for r in (0, 1)] == [
        str(logging_steps)
    ] * 2


def test_ranks_watching_different_modules_stop_at_setup_with_a_clear_error(out):
    # rank 1 was given include="net.*": without the check its packed vector would be shorter
    # and the first collective would crash or hang
    errors = [(out / "mismatched" / f"error{r}.txt").read_text() for r in (0, 1)]
    assert errors[1].startswith(
        "LayerDiagnostics: the ranks do not all watch the same modules (rank 0 watches 4, "
        "this rank, 1, watches 3); build the same model and pass the same "
        "types/include/exclude on every rank"
    )
    assert "rank 0 watches 4, this rank, 0, watches 4" in errors[0]
    assert [(out / "mismatched" / f"collectives{r}.txt").read_text() for r in (0, 1)] == ["0"] * 2
