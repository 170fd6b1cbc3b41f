"""On a GPU, the steps that do not log never wait for the device: under
``torch.cuda.set_sync_debug_mode("error")`` any host sync in our hooks, in the window sentinels or
in ``diag.step()`` raises. Default options, a plain loop with a TensorBoard writer (dashboards,
pictures and diagnosis on), a 1e6x loss spike between logging steps that must show at the next
one; in float32 and under fp16 autocast with a ``GradScaler``.

The same loop runs on the CPU everywhere (where there is no sync mode to set), so the test's
numbers are checked on every machine; the CUDA cases run where a GPU is present.
"""

import contextlib
import functools
import math

import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics import attach

STEPS, SPIKE = 60, 37  # default every_n_steps=50: steps 0 and 50 log, the spike falls between
MAX = "health/grad_norm_total_max"

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@contextlib.contextmanager
def no_sync(device):
    """Raise on any host sync inside the block (CUDA); nothing to watch on the CPU."""
    if device != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def train(device, tmp_path, *, fp16=False):
    """The loop, our calls and the forward and backward passes (where our hooks run) guarded on
    steps that do not log; the optimizer, the scaler and the float64 reference norms are not."""
    torch.manual_seed(0)
    layers = [nn.Linear(32, 64), nn.Tanh()]
    for _ in range(4):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(64, 1)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    scaler = torch.amp.GradScaler(device, enabled=fp16)
    gen = torch.Generator(device=device).manual_seed(1)
    logged, norms = {}, {}
    with SummaryWriter(str(tmp_path)) as writer, attach(model, writer=writer) as diag:
        for step in range(STEPS):
            guard = contextlib.nullcontext if step % 50 == 0 else functools.partial(no_sync, device)
            with guard(), torch.autocast(device, dtype=torch.float16, enabled=fp16):
                loss = model(torch.randn(16, 32, device=device, generator=gen)).pow(2).mean()
            with guard():
                scaler.scale(loss * 1e6 if step == SPIKE else loss).backward()
            scaler.unscale_(opt)
            grads = [p.grad.double().norm().item() for p in model.parameters()]
            norms[step] = math.sqrt(sum(g * g for g in grads))
            with guard():
                diag.before_optimizer_step()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            with guard():
                report = diag.step()
            if report is not None:
                logged[step] = report.scalars
    return logged, norms


# a sync raised inside our code is caught there and warned about ("... failed ..., training goes
# on"): as an error here, so that it fails the test instead of thinning the logs
@pytest.mark.filterwarnings("error:ln-diagnostics.*failed:RuntimeWarning")
@pytest.mark.parametrize(
    ("device", "fp16"),
    [
        ("cpu", False),
        pytest.param("cuda", False, marks=cuda),
        pytest.param("cuda", True, marks=cuda),
    ],
)
def test_steps_between_logging_steps_never_sync_and_the_spike_shows(device, fp16, tmp_path):
    logged, norms = train(device, tmp_path, fp16=fp16)
    assert sorted(logged) == [0, 50]
    if not fp16:
        assert norms[SPIKE] > 1e4 * max(v for k, v in norms.items() if k != SPIKE)
        assert logged[50][MAX] == pytest.approx(norms[SPIKE], rel=1e-5)
    else:  # the 1e6x step may overflow in fp16 and the scaler skip it: the window counts those
        window = [norms[k] for k in range(1, 51)]
        assert logged[50]["health/nonfinite_grad_steps"] == sum(
            1 for v in window if not math.isfinite(v)
        )
    assert logged[50]["health/grad_norm_total"] == pytest.approx(norms[50], rel=1e-5)
