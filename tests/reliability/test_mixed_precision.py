"""Mixed precision: statistics of half-precision outputs are accumulated in float32, gradient norms
are read after AMP unscaling."""

import pytest
import torch
from pytorch_lightning import seed_everything

from ln_diagnostics.callbacks import LayerDiagnostics
from tests.reliability.conftest import MLP


def capture_outputs(module, store):
    """Keep a detached copy of every training-mode output of ``module``; the hook returns None."""

    def hook(mod, args, output):
        if mod.training:
            store.append(output.detach().clone())

    return module.register_forward_hook(hook)


def float64_moments(t):
    x = t.double().reshape(-1)
    mean = x.mean().item()
    std = x.std(unbiased=False).item()
    return {
        "mean": mean,
        "std": std,
        "rms": (mean**2 + std**2) ** 0.5,
        "absmax": x.abs().max().item(),
    }


def test_bf16_mixed_statistics_in_float32_and_grad_norms_of_float32_grads(
    make_trainer, events, regression_data, grad_norms
):
    seed_everything(0)
    model = MLP(hidden=64, lr=0.1)
    outputs = []
    handle = capture_outputs(model.net[0], outputs)
    probe = grad_norms("net.0", "net.2")
    diag = LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0, shift_every_n_steps=0)
    run = make_trainer([diag, probe], max_steps=4, precision="bf16-mixed")
    run.fit(model, train_dataloaders=regression_data())
    handle.remove()

    assert [t.dtype for t in outputs] == [torch.bfloat16] * 4  # autocast really ran in bf16
    acc = events(run.logger.log_dir)
    for stat in ("mean", "std", "rms", "absmax"):
        logged = acc.Scalars(f"activations/{stat}/net.0")
        assert [e.step for e in logged] == [0, 1, 2, 3]
        for event, out in zip(logged, outputs, strict=True):
            reference = float64_moments(out)
            # float32 accumulation of exact bf16 values; the event file stores float32
            assert event.value == pytest.approx(
                reference[stat], rel=2e-6, abs=2e-6 * reference["std"]
            ), (stat, event.step)
    for layer in ("net.0", "net.2"):
        logged = acc.Scalars(f"gradients/norm/{layer}")
        assert [e.step for e in logged] == [0, 1, 2, 3]
        for event in logged:
            assert event.value == pytest.approx(probe.norms[event.step][layer], rel=1e-5)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed (fp16 AMP) needs a CUDA GPU")
def test_fp16_mixed_logs_unscaled_gradient_norms(make_trainer, events, regression_data, grad_norms):
    seed_everything(0)
    model = MLP(hidden=64, lr=0.1)
    outputs = []
    handle = capture_outputs(model.net[0], outputs)
    probe = grad_norms("net.0", "net.2")
    diag = LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0, shift_every_n_steps=0)
    run = make_trainer(
        [diag, probe], max_steps=4, precision="16-mixed", accelerator="gpu", devices=1
    )
    run.fit(model, train_dataloaders=regression_data())
    handle.remove()

    assert outputs[0].dtype == torch.float16
    scale = run.precision_plugin.scaler.get_scale()
    assert scale > 1.0  # the loss was scaled: a norm of scaled gradients would be far off
    acc = events(run.logger.log_dir)
    for event, out in zip(acc.Scalars("activations/std/net.0"), outputs, strict=True):
        assert event.value == pytest.approx(float64_moments(out.cpu())["std"], rel=1e-5)
    for layer in ("net.0", "net.2"):
        logged = acc.Scalars(f"gradients/norm/{layer}")
        assert [e.step for e in logged] == [0, 1, 2, 3]
        for event in logged:
            assert event.value == pytest.approx(probe.norms[event.step][layer], rel=1e-4)
