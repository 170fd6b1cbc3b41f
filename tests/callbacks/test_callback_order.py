"""``DiagnosticThresholds`` catches a violation on its own step in either callback order."""

import pytest
import torch
from pytorch_lightning import seed_everything
from pytorch_lightning.demos.boring_classes import BoringModel

from ln_diagnostics import ThresholdViolation
from ln_diagnostics.callbacks import DiagnosticThresholds, LayerDiagnostics

# BoringModel's only layer is ``layer`` (Linear 32 -> 2); its weight norm is about 0.8 at init.
RULE = [{"name": "small weights", "tag": "parameters/norm/layer", "max": 1e-3}]


class Counting(BoringModel):
    def __init__(self):
        super().__init__()
        self.batches = []

    def training_step(self, batch, batch_idx):
        self.batches.append(batch_idx)
        return super().training_step(batch, batch_idx)


def _callbacks(order, on_violation):
    diag = LayerDiagnostics()
    thresholds = DiagnosticThresholds(RULE, on_violation=on_violation)
    return diag, thresholds, [diag, thresholds] if order == "diag first" else [thresholds, diag]


@pytest.mark.parametrize("order", ["diag first", "thresholds first"])
def test_a_step_zero_violation_raises_at_step_zero_in_either_order(make_trainer, order):
    seed_everything(0)
    model = Counting()
    diag, _, callbacks = _callbacks(order, "raise")
    trainer = make_trainer(callbacks, max_steps=5)
    params = torch.cat([p.detach().double().flatten() for p in model.layer.parameters()])
    before = float(torch.linalg.vector_norm(params))  # weight and bias, as step 0 trained them
    with pytest.raises(ThresholdViolation) as caught:
        trainer.fit(model)
    assert caught.value.step == 0
    assert caught.value.tag == "parameters/norm/layer"
    assert caught.value.value == pytest.approx(before, rel=1e-6)
    assert model.batches == [0]  # no second batch was trained
    assert diag.engine._listeners == []  # the thresholds callback let go of its source


@pytest.mark.parametrize("order", ["diag first", "thresholds first"])
def test_stop_ends_training_after_the_violating_batch_in_either_order(make_trainer, order, capsys):
    seed_everything(0)
    model = Counting()
    _, _, callbacks = _callbacks(order, "stop")
    trainer = make_trainer(callbacks, max_steps=5)
    trainer.fit(model)
    assert model.batches == [0]
    assert trainer.global_step == 1
    assert "at step 0" in capsys.readouterr().err
