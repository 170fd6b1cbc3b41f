"""``attach()`` in a plain loop: every ``LayerDiagnostics`` option, the probes without a Trainer,
the findings at detach, resuming, and the wrappers it sees through."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ln_diagnostics import attach
from ln_diagnostics.attach import unwrap


def tanh_mlp(depth=6, width=16):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def train(model, diag, steps, *, hand_over=False, start=0):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    reports = []
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(32, 16, generator=gen)
        y = x[:, :1]
        if hand_over:
            diag.batch((x, y))
        F.mse_loss(model(x), y).backward()
        diag.before_optimizer_step()
        opt.step()
        opt.zero_grad()
        reports.append(diag.step())
    return reports


def test_default_options_probe_the_first_call_and_print_the_findings_at_detach(capsys):
    model = tanh_mlp()
    with attach(model, every_n_steps=5, shift_every_n_steps=5) as diag:
        reports = train(model, diag, 11)
    logged = [r.step for r in reports if r is not None]
    assert logged == [0, 5, 10]
    # the probe replays step 0's first call: at step 0 it is its own reference, then it moves
    assert reports[0].scalars["health/shift_mean_step"] == 0.0
    assert reports[5].scalars["health/shift_kl_init"] > 0.0
    printed = capsys.readouterr().out
    assert "attach() diagnosis (3 logging steps)" in printed
    assert [f.kind for f in diag.diagnose()]  # the same findings the table printed
    for finding in diag.diagnose():
        assert finding.kind in printed


def test_the_probe_on_a_handed_over_batch_equals_the_probe_on_the_captured_call():
    runs = []
    for hand_over in (False, True):
        model = tanh_mlp()
        with attach(model, every_n_steps=5, shift_every_n_steps=5) as diag:
            runs.append(train(model, diag, 6, hand_over=hand_over)[5].scalars)
    shift = sorted(t for t in runs[0] if "shift" in t)
    assert shift and {t: runs[0][t] for t in shift} == {t: runs[1][t] for t in shift}


def test_ics_needs_a_loss_and_the_batch_in_a_plain_loop():
    with pytest.raises(ValueError, match=r"needs ics_loss=.*diag\.batch"):
        attach(tanh_mlp(), ics_every_n_steps=1)
    model = tanh_mlp()
    loss = lambda module, batch: F.mse_loss(module(batch[0]), batch[1])  # noqa: E731
    with attach(model, every_n_steps=1, ics_every_n_steps=2, ics_loss=loss) as diag:
        reports = train(model, diag, 3, hand_over=True)
    assert any(t.startswith("ics/") for t in reports[0].scalars)
    assert not any(t.startswith("ics/") for t in reports[1].scalars)
    assert any(t.startswith("ics/") for t in reports[2].scalars)


def test_ics_without_the_batch_warns_once_and_training_goes_on():
    model = tanh_mlp()
    loss = lambda module, batch: F.mse_loss(module(batch[0]), batch[1])  # noqa: E731
    with pytest.warns(UserWarning, match=r"diag\.batch\(batch\)") as caught:
        with attach(model, every_n_steps=1, ics_every_n_steps=1, ics_loss=loss) as diag:
            reports = train(model, diag, 3)
    assert len([w for w in caught if "ICS is due" in str(w.message)]) == 1
    assert all(r is not None and not any(t.startswith("ics/") for t in r.scalars) for r in reports)


def test_group_depth_and_paused_evaluation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 4)
    with torch.no_grad():  # block 0's statistics merge its Linear's and its Tanh's outputs
        hidden = model[0][0](x)
        block = torch.cat([hidden.reshape(-1), torch.tanh(hidden).reshape(-1)]).double()
    with attach(model, every_n_steps=1, group_depth=1) as diag:
        with diag.paused():
            model(torch.randn(64, 4))  # an evaluation inside the loop leaves no trace
        model(x).sum().backward()
        diag.before_optimizer_step()
        opt.step()
        report = diag.step()
    # per block (the shift probe stays per layer, as documented)
    assert not any(t.endswith("/0.0") for t in report.scalars if not t.startswith("shift/"))
    assert report.scalars["activations/mean/0"] == pytest.approx(block.mean().item(), rel=1e-6)
    assert report.scalars["activations/std/0"] == pytest.approx(
        block.std(unbiased=False).item(), rel=1e-6
    )


def test_resume_continues_the_step_count_and_the_shift_references():
    model = tanh_mlp()
    whole = attach(model, every_n_steps=5, shift_every_n_steps=5)
    reports = train(model, whole, 11)
    whole.detach()

    model = tanh_mlp()
    first = attach(model, every_n_steps=5, shift_every_n_steps=5)
    train(model, first, 6, hand_over=True)
    state = first.state_dict()
    first.detach()
    assert state["global_step"] == 6 and state["n_logged"] == 2
    second = attach(model, every_n_steps=5, shift_every_n_steps=5)
    second.load_state_dict(state)
    resumed = train(model, second, 5, start=6)
    second.detach()
    assert resumed[-1].step == 10 and second.n_logged == 3
    assert resumed[-1].scalars == pytest.approx(reports[10].scalars, rel=1e-6, abs=1e-9)


def test_unwrap_sees_through_fabric_and_data_parallel():
    from lightning.fabric import Fabric

    net = nn.Linear(3, 3)
    fabric = Fabric(accelerator="cpu", devices=1)
    wrapped, _ = fabric.setup(net, torch.optim.SGD(net.parameters(), 0.1))
    assert unwrap(wrapped) is net and unwrap(nn.DataParallel(net)) is net
    with attach(wrapped) as diag:
        assert diag.collector.modules == [net]  # no wrapper segment in the names


def test_attach_and_the_callback_take_the_same_options_with_the_same_defaults():
    import inspect

    from ln_diagnostics.callbacks import LayerDiagnostics
    from ln_diagnostics.engine.options import OPTION_NAMES, DiagnosticsOptions

    def options(fn, skip):
        params = inspect.signature(fn).parameters.values()
        return {p.name: p.default for p in params if p.name not in skip}

    callback = options(LayerDiagnostics.__init__, {"self"})
    plain = options(attach, {"model", "writer"})
    assert tuple(callback) == tuple(plain) == OPTION_NAMES
    assert {**plain, "every_n_steps": None} == callback  # a plain loop has no Trainer default
    assert DiagnosticsOptions.create().as_dict() == {**callback, "include": (), "exclude": ()}
    with pytest.raises(TypeError, match="unknown options \\['every'\\]"):
        DiagnosticsOptions.create(every=5)


def test_a_spike_between_logging_steps_is_a_gradient_spike_finding():
    model = tanh_mlp(depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)  # the spike must not change the model
    with attach(model, every_n_steps=5) as diag:
        for step in range(36):
            gen = torch.Generator().manual_seed(step)
            x = torch.randn(32, 16, generator=gen)
            loss = F.mse_loss(model(x), x[:, :1]) * (1e6 if step == 27 else 1.0)
            loss.backward()
            diag.before_optimizer_step()
            opt.step()
            opt.zero_grad()
            diag.step()
    (spike,) = [f for f in diag.diagnose() if f.kind == "gradient_spike"]
    assert (spike.first_step, spike.last_step) == (30, 30)  # step 27's spike, seen at step 30
    assert spike.evidence["tag"] == "health/grad_norm_total_max"
    assert "in the steps up to 30" in spike.message
