"""What ``DiagnosticThresholds`` says when several layers fail one rule, and ``severity``."""

from __future__ import annotations

import warnings

import pytest
import torch
from pytorch_lightning.demos.boring_classes import BoringModel
from torch import nn

from ln_diagnostics import ThresholdViolation
from ln_diagnostics.callbacks import DiagnosticThresholds, LayerDiagnostics
from ln_diagnostics.errors import SHOWN_TAGS

DEPTH = 12  # Linear and Tanh layers net.0 ... net.23: names where text order is not numeric


class DeepTanh(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(DEPTH):
            layers += [nn.Linear(32, 32), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.layer = nn.Linear(32, 2)

    def forward(self, x):
        return self.layer(self.net(x))


def fit(make_trainer, *rules, on_violation="raise"):
    torch.manual_seed(0)
    diagnostics = LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0)
    thresholds = DiagnosticThresholds(list(rules), on_violation=on_violation)
    trainer = make_trainer([diagnostics, thresholds], max_steps=3, log_every_n_steps=1)
    trainer.fit(DeepTanh())
    return trainer, diagnostics


def test_the_message_names_the_worst_layer_and_every_failing_one(make_trainer, events, tmp_path):
    # every layer's activation std is above 1e-6, so every layer fails at step 0
    rule = {"name": "quiet", "tag": "activations/std/net.*", "max": 1e-6}
    with pytest.raises(ThresholdViolation) as caught:
        fit(make_trainer, rule)
    error = caught.value
    scalars = events(tmp_path / "run" / "version_0")
    logged = {
        tag: scalars.Scalars(tag)[0].value
        for tag in scalars.Tags()["scalars"]
        if tag.startswith("activations/std/net.")
    }
    assert len(logged) == 2 * DEPTH
    worst = max(logged, key=logged.get)
    assert (error.tag, error.step) == (worst, 0)
    assert error.value == pytest.approx(logged[worst], rel=1e-6)
    names = [f"activations/std/net.{i}" for i in range(2 * DEPTH)]  # numeric order
    assert error.failing == tuple(names)
    shown = ", ".join(names[:SHOWN_TAGS])
    assert f"; {2 * DEPTH} tags fail: {shown}, and {2 * DEPTH - SHOWN_TAGS} more" in str(error)


def test_warn_severity_warns_and_training_goes_on(make_trainer):
    rules = [
        {"name": "quiet", "tag": "activations/std/net.*", "max": 1e-6, "severity": "warn"},
        {"name": "finite", "tag": "health/nonfinite_activations", "max": 0.0},
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _ = fit(make_trainer, *rules)  # on_violation="raise" (the default)
    assert trainer.global_step == 3
    messages = [str(w.message) for w in caught if "DiagnosticThresholds" in str(w.message)]
    assert len(messages) == 1  # once per rule
    assert messages[0].startswith("DiagnosticThresholds: warn: threshold rule 'quiet' violated")


def test_an_error_rule_still_raises_beside_a_warn_rule(make_trainer):
    rules = [
        {"name": "quiet", "tag": "activations/std/net.*", "max": 1e-6, "severity": "warn"},
        {"name": "small", "tag": "activations/std/net.*", "max": 1e-6},
    ]
    with pytest.raises(ThresholdViolation, match="threshold rule 'small' violated"):
        fit(make_trainer, *rules)
