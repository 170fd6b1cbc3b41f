"""Default cadences: logging every step does not mean a probe or histograms every step."""

import pytest
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.collect.options import histogram_interval
from ln_diagnostics.engine.schedule import shift_interval


@pytest.mark.parametrize(
    ("every", "shift", "hist"),
    [
        (50, 500, 500),
        (1, 100, 500),
        (2, 100, 500),
        (7, 105, 504),
        (10, 100, 500),
        (100, 1000, 1000),
    ],
)
def test_default_intervals_are_10x_rarer_at_least_100_and_500_steps_on_logging_steps(
    every, shift, hist
):
    assert shift_interval(every, None) == shift
    assert histogram_interval(every, None) == hist
    assert shift % every == 0 and hist % every == 0
    assert shift_interval(every, 3) == 3 and histogram_interval(every, 0) == 0


class Counting(BoringModel):
    """Records whether grad was enabled in each forward pass (the probe runs under no_grad)."""

    def __init__(self):
        super().__init__()
        self.grad = []

    def forward(self, x):
        self.grad.append(torch.is_grad_enabled())
        return super().forward(x)


@pytest.mark.parametrize("options", [{}, {"every_n_steps": 1}], ids=["default", "every_1"])
def test_probes_and_histograms_run_on_the_default_steps(make_trainer, events, options):
    model = Counting()
    diag = LayerDiagnostics(**options)
    trainer = make_trainer([diag], max_steps=102, log_every_n_steps=50, limit_val_batches=0)
    trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    logging = list(range(102)) if options else [0, 50, 100]
    assert [e.step for e in acc.Scalars("activations/std/layer")] == logging
    assert [e.step for e in acc.Scalars("shift/mean_init/layer")] == ([0, 100] if options else [0])
    assert [e.step for e in acc.Histograms("activations/hist/layer")] == [0]
    probes = [i for i, grad in enumerate(model.grad) if not grad]
    # one no-grad probe forward before step 0's training forward, and before step 100's
    assert probes == ([0, 101] if options else [0])
