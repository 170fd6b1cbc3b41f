"""Dashboards end to end: a real Trainer.fit run, read back by a real TensorBoard server over HTTP
(loopback only) and by TensorBoard's EventAccumulator."""

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics, NormSwap
from ln_diagnostics.tags import (
    DEPTH_PROFILE,
    HEATMAP_ACTIVATION_STD,
    HEATMAP_BACKPROP,
    SUMMARY_TEXT_TAG,
    heatmap_tag,
    log10_regex,
)
from ln_diagnostics.tags import STACK_ROLES as ROLES
from ln_diagnostics.tensorboard.layout import DEPTH_TITLE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 5


class TinyNet(LightningModule):
    def __init__(self, lr: float = 0.05, width: int = 16):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(8, width),
            nn.BatchNorm1d(width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, 1),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=gen), torch.randn(64, 1, generator=gen))
    trainer = Trainer(
        max_steps=STEPS,
        callbacks=[
            NormSwap(target="layernorm"),
            LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=2),
        ],
        logger=TensorBoardLogger(root, name="run"),
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(TinyNet(), DataLoader(data, batch_size=8))
    return Path(trainer.logger.log_dir)


@pytest.fixture(scope="module")
def accumulator(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    return acc


def get(base, path, data=None):
    request = urllib.request.Request(base + path, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


@pytest.fixture(scope="module")
def server(run_dir, serve_tensorboard):
    with serve_tensorboard(run_dir.parent, 1) as base:
        yield base, json.loads(get(base, "/data/runs"))[0]


def test_custom_scalars_layout_is_served(server):
    base, run = server
    layout = json.loads(get(base, "/data/plugin/custom_scalars/layout"))
    titles = [c["title"] for c in layout["category"]]
    assert titles == [
        "Health",
        DEPTH_TITLE,
        "Shift",
        *(f"All layers: {g}" for g in ("activations", "gradients", "backprop", "parameters")),
        *(f"All layers: {g}" for g in ("updates", "shift")),
    ]
    assert [c.get("closed", False) for c in layout["category"]] == [False] * 3 + [True] * 6
    charts = {c["title"]: c for cat in layout["category"] for c in cat["chart"]}
    assert charts["activations/std"]["multiline"]["tag"] == ["^activations/std/.+$"]
    # The regexes pick the lines when the dashboard asks for them: every layer in a per-layer
    # chart, four roles in a log10 chart.
    for regex, expected in (
        ("^activations/std/.+$", {"activations/std/net.0", "activations/std/net.5"}),
        (log10_regex("backprop_norm", roles=True), {f"log10/backprop_norm/{r}" for r in ROLES}),
    ):
        query = urllib.parse.urlencode({"run": run, "tag": regex})
        series = json.loads(get(base, f"/data/plugin/custom_scalars/scalars?{query}"))
        assert series["regex_valid"]
        assert expected <= set(series["tag_to_events"])
        if regex.startswith("^log10"):
            assert set(series["tag_to_events"]) == expected


def test_scalar_and_histogram_tags_are_served(server):
    base, run = server
    scalars = json.loads(get(base, "/data/plugin/scalars/tags"))[run]
    assert {"health/grad_norm_total", "gradients/norm/net.0", "backprop/norm/net.2"} <= set(scalars)
    histograms = json.loads(get(base, "/data/plugin/histograms/tags"))[run]
    assert "activations/hist/net.2" in histograms


def test_heatmap_images_are_served_as_png(server):
    base, run = server
    images = json.loads(get(base, "/data/plugin/images/tags"))[run]
    names = [heatmap_tag(n) for n in (HEATMAP_BACKPROP, HEATMAP_ACTIVATION_STD, DEPTH_PROFILE)]
    assert set(names) <= set(images)
    for tag in names:
        query = urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})
        entries = json.loads(get(base, f"/data/plugin/images/images?{query}"))
        # the histogram interval after step 0 (2) and the last logging step (4) again at fit
        # end: not twice
        assert [e["step"] for e in entries] == [2, 4]
        png = get(base, f"/data/plugin/images/individualImage?{entries[-1]['query']}")
        assert png.startswith(PNG_MAGIC)
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width == 360 and height > 150


def test_hparams_are_served_for_the_same_run(server):
    base, _ = server
    body = json.dumps({"experimentName": ""}).encode()
    experiment = json.loads(get(base, "/data/plugin/hparams/experiment", data=body))
    names = {h["name"] for h in experiment["hparamInfos"]}
    # the module's own, and only the options given a value other than their default
    assert names == {
        "lr",
        "width",
        "ln_diagnostics/every_n_steps",
        "ln_diagnostics/histogram_every_n_steps",
    }
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics[:2] == ["health/backprop_depth_log10_step0", "health/grad_norm_total"]


def test_hparams_land_in_the_run_directory_not_a_sub_run(run_dir, accumulator):
    event_dirs = {p.parent for p in run_dir.parent.rglob("events.out.tfevents.*")}
    assert event_dirs == {run_dir}
    content = accumulator.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = HParamsPluginData.FromString(content).session_start_info
    hparams = dict(start.hparams)
    assert hparams["ln_diagnostics/every_n_steps"].number_value == 1
    assert hparams["ln_diagnostics/histogram_every_n_steps"].number_value == 2
    assert hparams["lr"].number_value == pytest.approx(0.05)  # the module's own, kept
    assert "ln_diagnostics/track_updates" not in hparams  # left at its default


def test_layout_lists_every_statistic_once(accumulator):
    events = accumulator.Tensors("custom_scalars__config__")
    assert len(events) == 1  # written once: no statistic appeared after the first step
    layout = layout_pb2.Layout.FromString(events[0].tensor_proto.string_val[0])
    titles = [chart.title for cat in layout.category for chart in cat.chart]
    assert len(titles) == len(set(titles))
    assert "activations/saturated_frac" in titles


def test_text_summary_lists_layers_options_and_the_swap(accumulator):
    [event] = accumulator.Tensors(f"{SUMMARY_TEXT_TAG}/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert "`net.0` | Linear | 144" in text
    assert "ChannelLayerNorm" in text  # NormSwap's report, and the swapped layer's type
    assert "| `every_n_steps` | `1` |" in text
