"""Real DDP: two gloo processes on CPU; statistics are those of the union of both ranks' samples."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCRIPT = Path(__file__).with_name("ddp_run.py")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        check=True,
        timeout=240,
        env=env,
        capture_output=True,
        text=True,
    )
    return out


def test_activation_statistics_are_global_over_both_ranks(ddp_run):
    union = torch.cat([torch.load(ddp_run / f"rank{r}.pt") for r in (0, 1)]).double()
    acc = EventAccumulator(str(ddp_run / "ddp"), size_guidance={"scalars": 0})
    acc.Reload()

    def at_step0(tag):
        return next(e.value for e in acc.Scalars(tag) if e.step == 0)

    assert at_step0("activations/mean/net.1") == pytest.approx(union.mean().item(), abs=1e-5)
    assert at_step0("activations/std/net.1") == pytest.approx(
        union.std(unbiased=False).item(), rel=1e-4
    )
    assert at_step0("activations/absmax/net.1") == pytest.approx(union.abs().max().item(), rel=1e-6)
    # the ranks see different data, so neither rank's own statistics would pass for these
    for rank in (0, 1):
        own = torch.load(ddp_run / f"rank{rank}.pt").double().mean().item()
        assert abs(at_step0("activations/mean/net.1") - own) > 0.05


def test_a_module_that_ran_on_one_rank_only_is_logged_without_a_hang(ddp_run):
    acc = EventAccumulator(str(ddp_run / "ddp"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("activations/zero_frac/only_rank1")] == [0, 1, 2]


def test_only_rank_zero_writes(ddp_run):
    files = list(ddp_run.rglob("events.out.tfevents.*"))
    assert len(files) == 1, files


def test_one_collective_per_logging_step_on_every_rank(ddp_run):
    # three logging steps (every_n_steps=1, max_steps=3)
    assert [(ddp_run / f"collectives{r}.txt").read_text() for r in (0, 1)] == ["3", "3"]
