"""One model through the three front ends, with default options: a Trainer with
``LayerDiagnostics()``, ``attach()`` in a plain loop and ``attach()`` under Lightning Fabric write
the same tags with the same values, and find the same findings."""

import pytest
import torch
from lightning.fabric import Fabric
from pytorch_lightning import LightningModule
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics import attach
from ln_diagnostics.callbacks import LayerDiagnostics

STEPS, BATCH = 51, 8  # logging steps 0 and 50 at the default interval of 50
LIGHTNING_OWN = {"epoch", "hp_metric"}


class Net(LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 6, generator=gen)
    return x, x[:, :1] * 2 - x[:, 1:2]


def lightning_run(tmp_path, make_trainer):
    model, diag = Net(), LayerDiagnostics()
    trainer = make_trainer(
        [diag], max_steps=STEPS, logger=TensorBoardLogger(tmp_path, name="", version="lightning")
    )
    trainer.fit(model, DataLoader(TensorDataset(*data()), batch_size=BATCH))
    return tmp_path / "lightning", diag.diagnose()


def loop_run(tmp_path, name, fabric=None):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    if fabric is not None:
        model, opt = fabric.setup(model, opt)
    x, y = data()
    writer = SummaryWriter(str(tmp_path / name))
    with attach(model, writer=writer) as diag:
        for step in range(STEPS):
            batch = slice(step * BATCH, (step + 1) * BATCH)
            loss = F.mse_loss(model(x[batch]), y[batch])
            loss.backward() if fabric is None else fabric.backward(loss)
            diag.before_optimizer_step()
            opt.step()
            opt.zero_grad()
            diag.step()
    writer.close()
    return tmp_path / name, diag.diagnose()


def scalars(acc):
    return {
        tag: {e.step: e.value for e in acc.Scalars(tag)}
        for tag in acc.Tags()["scalars"]
        if tag not in LIGHTNING_OWN
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.conftest import _trainer

    tmp = tmp_path_factory.mktemp("front_ends")
    return {
        "lightning": lightning_run(tmp, lambda cbs, **kw: _trainer(tmp, cbs, **kw)),
        "plain": loop_run(tmp, "plain"),
        "fabric": loop_run(tmp, "fabric", Fabric(accelerator="cpu", devices=1)),
    }


@pytest.mark.parametrize("front_end", ["plain", "fabric"])
def test_same_scalar_tags_and_values_as_the_lightning_callback(runs, events, front_end):
    want = scalars(events(runs["lightning"][0]))
    got = scalars(events(runs[front_end][0]))
    assert sorted(got) == sorted(want)
    assert len(want) > 100 and any(t.startswith("shift/") for t in want)  # the probe ran too
    for tag, series in want.items():
        assert sorted(got[tag]) == sorted(series), tag
        assert sorted(series) == ([0] if "shift" in tag else [0, 50]), tag
        assert list(got[tag].values()) == pytest.approx(list(series.values()), rel=1e-6), tag


@pytest.mark.parametrize("front_end", ["plain", "fabric"])
def test_same_histograms_pictures_texts_and_findings(runs, events, front_end):
    want, got = events(runs["lightning"][0]), events(runs[front_end][0])
    for kind in ("histograms", "images"):
        assert sorted(got.Tags()[kind]) == sorted(want.Tags()[kind]), kind
    assert want.Tags()["histograms"] and want.Tags()["images"]
    ours = [t for t in want.Tags()["tensors"] if not t.startswith("_hparams_")]
    assert set(ours) <= set(got.Tags()["tensors"])
    assert {"diagnosis/text_summary"} <= set(ours)
    text = lambda acc: acc.Tensors("diagnosis/text_summary")[-1].tensor_proto.string_val  # noqa: E731
    assert text(got) == text(want)
    findings = lambda run: [(f.kind, f.layer, f.first_step) for f in run[1]]  # noqa: E731
    assert findings(runs[front_end]) == findings(runs["lightning"])
