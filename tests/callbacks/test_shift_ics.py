"""LayerDiagnostics' covariate-shift and ICS probes through real Trainer.fit runs."""

import warnings

import pytest
import torch
from pytorch_lightning import LightningModule, seed_everything
from pytorch_lightning.demos import LightningLSTM
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics


class Net(LightningModule):
    def __init__(self, lr=0.05, p=0.3):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(8, 16),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(16, 16),
            nn.Tanh(),
            nn.Dropout(p),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return {"loss": loss}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(64, 8, generator=gen)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def fit(make_trainer, callbacks, make=Net, max_steps=6, ckpt_path=None, **kwargs):
    seed_everything(7)
    model = make()
    trainer = make_trainer(callbacks, max_steps=max_steps, log_every_n_steps=2, **kwargs)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def first_x(model, batch):
    return model(batch[0])


@pytest.mark.parametrize("ics", [0, 1])
def test_probing_does_not_change_the_training_trajectory_bit_for_bit(make_trainer, ics):
    _, plain = fit(make_trainer, [LayerDiagnostics(shift_every_n_steps=0)])
    diag = LayerDiagnostics(shift_every_n_steps=1, ics_every_n_steps=ics, probe_forward=first_x)
    _, probed = fit(make_trainer, [diag])
    assert any(k.startswith("shift/") for k in diag.last_logged.scalars)
    if ics:
        assert "ics/cos/net.0" in diag.last_logged.scalars
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), probed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name  # weights and BatchNorm buffers


def test_shift_and_ics_tags_are_in_the_event_file_and_sane(make_trainer, events):
    diag = LayerDiagnostics(shift_every_n_steps=2, ics_every_n_steps=3, probe_forward=first_x)
    trainer, _ = fit(make_trainer, [diag])
    acc = events(trainer.logger.log_dir)
    tags = set(acc.Tags()["scalars"])
    for stat in ("mean", "logvar", "kl"):
        for ref in ("step", "init"):
            assert f"shift/{stat}_{ref}/net.0" in tags
            assert f"health/shift_{stat}_{ref}" in tags
    assert [e.step for e in acc.Scalars("shift/mean_init/net.4")] == [0, 2, 4]
    assert acc.Scalars("shift/mean_init/net.4")[0].value == 0.0
    assert acc.Scalars("shift/mean_init/net.4")[-1].value > 0.0
    # ICS at steps 0 and 3 (step 3 does not log otherwise: a report of its own)
    assert [e.step for e in acc.Scalars("ics/cos/net.0")] == [0, 3]
    # nothing comes before the first layer, and dropout masks are replayed: G′ == G
    assert all(e.value == 0.0 for e in acc.Scalars("ics/l2/net.0"))
    ics_layers = {t.split("/")[-1] for t in tags if t.startswith("ics/l2/")}
    assert ics_layers == {"net.0", "net.1", "net.4", "net.7"}
    assert "health/ics_cos_mean" in tags


def test_lr_zero_gives_zero_shift(make_trainer):
    diag = LayerDiagnostics(shift_every_n_steps=1, probe_forward=first_x)
    fit(make_trainer, [diag], make=lambda: Net(lr=0.0), max_steps=3)
    shift = {k: v for k, v in diag.last_logged.scalars.items() if "shift" in k}
    assert shift and all(v == 0.0 for v in shift.values())


def test_resume_keeps_the_step_zero_reference(tmp_path, make_trainer):
    # no dropout: Lightning does not checkpoint the RNG, so only a deterministic model can be
    # compared with an uninterrupted run
    diag = LayerDiagnostics(shift_every_n_steps=1, probe_forward=first_x)
    trainer, _ = fit(make_trainer, [diag], make=lambda: Net(p=0.0), max_steps=4)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    full = LayerDiagnostics(shift_every_n_steps=1, probe_forward=first_x)
    fit(make_trainer, [full], make=lambda: Net(p=0.0), max_steps=6)
    resumed = LayerDiagnostics(shift_every_n_steps=1, probe_forward=first_x)
    fit(make_trainer, [resumed], make=lambda: Net(p=0.0), max_steps=6, ckpt_path=ckpt)
    assert resumed.last_logged.step == 5
    got, want = resumed.last_logged.scalars, full.last_logged.scalars
    for key in ("shift/mean_init/net.4", "shift/kl_init/net.7", "shift/logvar_step/net.1"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    # steps 0-3 restored from the checkpoint, then 4 and 5: as many reports as the whole run
    assert diag.n_logged == 4
    assert resumed.n_logged == full.n_logged == 6
    assert "shift" in resumed.state_dict()


def test_default_probe_forward_runs_forward_x_on_an_x_y_batch(make_trainer):
    # Net.forward(x) gets only x from the (x, y) batch: no warning, shift tags logged
    diag = LayerDiagnostics(shift_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit(make_trainer, [diag], max_steps=3)
    assert "shift/mean_init/net.0" in diag.last_logged.scalars


class OfflineLSTM(LightningLSTM):
    def prepare_data(self):
        pass

    def train_dataloader(self):
        data = torch.randint(0, 50, (32, 9), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=8)


def test_lstm_without_forward_is_probed_through_training_step_and_trains_unchanged(make_trainer):
    # LightningLSTM has no forward() and carries self.hidden from one training_step to the next:
    # the probe runs training_step and puts self.hidden back, so training is bit-for-bit the same
    _, plain = fit(make_trainer, [], make=lambda: OfflineLSTM(vocab_size=50), max_steps=2)
    diag = LayerDiagnostics(shift_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, probed = fit(make_trainer, [diag], make=lambda: OfflineLSTM(vocab_size=50), max_steps=2)
    assert "shift/mean_init/model.rnn" in diag.last_logged.scalars
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), probed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_probe_forward_replaces_the_default(make_trainer):
    def lstm_forward(model, batch):
        return model.model(batch[0], model.model.init_hidden(batch[0].size(0)))

    diag = LayerDiagnostics(shift_every_n_steps=1, probe_forward=lstm_forward)
    fit(make_trainer, [diag], make=lambda: OfflineLSTM(vocab_size=50), max_steps=2)
    assert "shift/mean_init/model.rnn" in diag.last_logged.scalars


def test_custom_probe_batch_and_ics_loss_and_layers(make_trainer):
    probe = (torch.randn(10, 8), torch.zeros(10, 1))
    calls = []

    def loss(model, batch):
        calls.append(1)
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    diag = LayerDiagnostics(
        shift_every_n_steps=2,
        probe_batch=probe,
        probe_forward=first_x,
        ics_every_n_steps=2,
        ics_layers=["net.4"],
        ics_loss=loss,
    )
    fit(make_trainer, [diag], max_steps=3)
    tags = set(diag.last_logged.scalars)
    assert "ics/cos/net.4" in tags and not any(t.startswith("ics/l2/net.0") for t in tags)
    assert len(calls) == 2 and "shift/kl_init/net.0" in tags
    assert "batch" not in diag.state_dict()["shift"]  # the user's batch is not checkpointed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shift_every_n_steps": -1}, "shift_every_n_steps must be an integer >= 0; got -1"),
        ({"shift_every_n_steps": 1.5}, "shift_every_n_steps must be an integer >= 0; got 1.5"),
        ({"ics_every_n_steps": None}, "ics_every_n_steps must be an integer >= 0; got None"),
        ({"ics_every_n_steps": True}, "ics_every_n_steps must be an integer >= 0; got True"),
        (
            {"probe_forward": 3},
            "probe_forward must be a callable (module, batch) -> output or None; got 3",
        ),
        (
            {"ics_loss": "mse"},
            "ics_loss must be a callable (module, batch) -> scalar loss tensor or None; got 'mse'",
        ),
        (
            {"ics_layers": []},
            "ics_layers must be None or a glob string or a non-empty list of glob strings; got []",
        ),
        (
            {"ics_layers": [1]},
            "ics_layers must be a glob string or a list of non-empty glob strings; got [1]",
        ),
    ],
)
def test_bad_arguments_name_the_argument_expectation_and_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        LayerDiagnostics(**kwargs)
    assert str(info.value) == message


def test_ics_layers_matching_nothing_fails_at_setup(make_trainer):
    with pytest.raises(ValueError, match=r"ics_layers=\['encoder\.\*'\] matched no module"):
        fit(make_trainer, [LayerDiagnostics(ics_every_n_steps=1, ics_layers="encoder.*")])


def test_gradient_accumulation_disables_ics_with_a_warning(make_trainer):
    diag = LayerDiagnostics(shift_every_n_steps=0, ics_every_n_steps=1)
    with pytest.warns(UserWarning, match="accumulate_grad_batches=2"):
        fit(make_trainer, [diag], max_steps=2, accumulate_grad_batches=2)
    assert not any(k.startswith("ics/") for k in diag.last_logged.scalars)
