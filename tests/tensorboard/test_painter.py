"""The pictures are drawn in a helper process: the same pixels as drawn here, written into the
run's own event file, and nothing lost or silent when the helper cannot start, dies, fails a
drawing or is too slow."""

import io
import pickle
import queue
import time

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning import Callback, LightningModule
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.tags import heatmap_tag
from ln_diagnostics.tensorboard import painter as painter_module
from ln_diagnostics.tensorboard.heatmap import BACKPROP_SCALE, ProfilePanel
from ln_diagnostics.tensorboard.painter import Painter, Picture, render

PICTURES = [
    Picture(
        "heatmaps/a",
        "heatmap",
        {
            "values": np.array([[-4.0, -1.0], [0.0, np.nan]]),
            "row_labels": ["net.1 Tanh", "net.3 Tanh"],
            "steps": [0, 10],
            "scale": BACKPROP_SCALE,
            "title": "backprop",
            "stack": None,
        },
    ),
    Picture(
        "heatmaps/b",
        "profiles",
        {
            "panels": [ProfilePanel("log10 x", [("step 0", [-2.0, -1.0, 0.0])], (-3.0, 1.0))],
            "layer_labels": ["a", "b", "c"],
        },
    ),
]


def pixels(summary):
    return np.asarray(Image.open(io.BytesIO(summary.value[0].image.encoded_image_string)))


class Recorder:
    def __init__(self):
        self.written, self.warnings = [], []

    def write(self, summary, step):
        self.written.append((step, summary))

    def warn(self, message):
        self.warnings.append(message)

    def one_warning(self):
        assert len(self.warnings) == 1, self.warnings
        return self.warnings[0]


def steps_written(painter, seen, *jobs):
    """Hand ``(step, pictures)`` jobs over, close, and return the steps written, in order."""
    for step, pictures in jobs:
        painter.submit(step, pictures)
    painter.close()
    return [step for step, _ in seen.written]


def ready_painter(seen):
    painter = Painter(seen.write, seen.warn)
    painter.start()
    assert painter.wait_until_ready()
    return painter


def test_the_helper_draws_the_same_pixels_as_this_process(monkeypatch):
    seen = Recorder()
    painter = ready_painter(seen)
    monkeypatch.setattr(painter_module, "render", None)  # nothing drawn in this process
    painter.submit(10, PICTURES)
    painter.submit(20, PICTURES[:1])
    painter.close()
    monkeypatch.undo()
    assert seen.warnings == []
    assert [(step, s.value[0].tag) for step, s in seen.written] == [
        (10, "heatmaps/a"),
        (10, "heatmaps/b"),
        (20, "heatmaps/a"),
    ]
    for (_, drawn), picture in zip(seen.written, [*PICTURES, PICTURES[0]], strict=True):
        np.testing.assert_array_equal(pixels(drawn), pixels(render(picture)))


def test_a_helper_that_cannot_start_warns_once_and_the_pictures_are_drawn_here(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no processes here")

    monkeypatch.setattr(painter_module.subprocess, "Popen", refuse)
    seen = Recorder()
    painter = Painter(seen.write, seen.warn)
    painter.start()
    painter.start()
    assert steps_written(painter, seen, (1, PICTURES), (2, PICTURES)) == [1, 1, 2, 2]
    warning = seen.one_warning()
    assert "could not start (OSError: no processes here)" in warning
    assert "drawn in the training process" in warning


def test_a_helper_that_dies_hands_back_its_drawings_to_this_process():
    seen = Recorder()
    painter = ready_painter(seen)
    painter._process.kill()
    painter._process.wait()
    # written to a dead helper, or refused by its pipe
    assert sorted(steps_written(painter, seen, (5, PICTURES), (6, PICTURES[:1]))) == [5, 5, 6]
    assert "stopped" in seen.one_warning()


@pytest.mark.parametrize("helper", [True, False], ids=["in the helper", "in this process"])
def test_a_drawing_that_fails_warns_with_its_error_and_the_next_ones_are_drawn(helper):
    seen = Recorder()
    painter = ready_painter(seen) if helper else Painter(seen.write, seen.warn)
    broken = Picture("heatmaps/x", "heatmap", {**PICTURES[0].args, "values": np.zeros((0, 0))})
    assert steps_written(painter, seen, (3, [broken]), (4, PICTURES[:1])) == [4]
    warning = seen.one_warning()
    assert "drawing the pictures of step 3 failed" in warning
    assert "ValueError: values must be a non-empty 2-d matrix" in warning


def test_close_names_the_steps_it_gave_up_on_and_stops_the_helper():
    seen = Recorder()
    painter = ready_painter(seen)
    helper = painter._process
    painter.submit(8, PICTURES)
    painter.close(timeout=0.0)
    assert seen.written == []
    assert seen.warnings == [
        "ln-diagnostics: the heat maps and depth profile of step(s) [8] were not drawn within 0 s "
        "and are missing from TensorBoard."
    ]
    assert helper.poll() is not None  # killed, not left drawing


class Deep(LightningModule):
    """No ``forward``, a dict batch: the shape most users train."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(8, 8), nn.Tanh())])

    def training_step(self, batch, batch_idx):
        return self.net(batch["x"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = [{"x": torch.randn(16, 8)} for _ in range(12)]
        return torch.utils.data.DataLoader(data, batch_size=None)


class Submissions(Callback):
    """Records ``(step, fit ended)`` for each drawing handed to a painter."""

    def __init__(self):
        self.seen, self.ended = [], False

    def on_train_end(self, trainer, pl_module):
        self.ended = True


@pytest.fixture
def submissions(monkeypatch):
    spy, submit = Submissions(), Painter.submit

    def record(self, step, pictures):
        spy.seen.append((step, spy.ended))
        submit(self, step, pictures)

    monkeypatch.setattr(Painter, "submit", record)
    return spy


@pytest.fixture
def helpers(monkeypatch):
    """The helper processes the painters start, as they start them."""
    started, popen = [], painter_module.subprocess.Popen

    def record(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(painter_module.subprocess, "Popen", record)
    return started


def test_a_fit_draws_its_last_logging_step_while_the_last_steps_train(
    make_trainer, submissions, helpers
):
    """With defaults, step 100 is the last logging step of a 120-step fit: its pictures are
    handed over there, before fit end, and written once; fit end has nothing left to draw, and
    the helper does not outlive the fit."""
    torch.manual_seed(0)
    trainer = make_trainer([submissions, LayerDiagnostics()], max_steps=120)
    trainer.fit(Deep())
    assert submissions.ended and submissions.seen == [(100, False)]
    assert len(helpers) == 1 and helpers[0].poll() is not None
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    for name in ("backprop_log10_norm", "activation_std", "depth_profile"):
        images = acc.Images(heatmap_tag(name))
        assert [e.step for e in images] == [100]
        assert images[0].width == 360 and images[0].height > 150


def test_a_fit_whose_last_step_logs_draws_it_once(make_trainer, submissions):
    trainer = make_trainer([submissions, LayerDiagnostics()], max_steps=101)
    trainer.fit(Deep())
    assert submissions.seen == [(100, False)]


def test_the_end_of_the_helper_output_while_it_runs_stops_it_without_waiting():
    """E.g. a message it could not read: the helper is killed, not waited for, and the painter
    draws here from then on."""
    seen = Recorder()
    painter = ready_painter(seen)
    helper = painter._process
    painter._done.put(None)
    started = time.perf_counter()
    painter.poll()
    assert time.perf_counter() - started < 5
    assert helper.poll() is not None
    assert "stopped;" in seen.one_warning()
    painter.submit(3, PICTURES[:1])
    assert [step for step, _ in seen.written] == [3]


def test_a_stream_that_cannot_be_read_ends_with_none():
    stream = io.BytesIO(pickle.dumps((1, [], None)) + b"not a pickle")
    messages = queue.SimpleQueue()
    painter_module._read_messages(stream, messages)
    assert messages.get_nowait() == (1, [], None)
    assert messages.get_nowait() is None
    assert stream.closed


def test_a_painter_closed_and_used_again_starts_a_new_helper():
    seen = Recorder()
    painter = ready_painter(seen)
    first = painter._process
    painter.submit(1, PICTURES[:1])
    painter.close()
    assert first.poll() is not None
    painter.start()
    assert painter.wait_until_ready() and painter._process is not first
    painter.submit(2, PICTURES[:1])
    painter.close()
    assert [step for step, _ in seen.written] == [1, 2]
    assert seen.warnings == []


def test_a_drawing_asked_for_before_the_helper_is_ready_is_drawn_here_at_once():
    seen = Recorder()
    painter = Painter(seen.write, seen.warn)
    painter.start()
    painter.submit(1, PICTURES[:1])  # the helper needs ~1 s to import matplotlib
    assert [step for step, _ in seen.written] == [1]  # written before close
    painter.close()
    assert seen.warnings == []


def test_a_job_larger_than_the_pipe_does_not_block_while_the_helper_draws():
    """The helper reads its jobs as they come: a second job of ~1 MB is handed over at once
    while the first is drawn, instead of stalling the training step until the pipe drains."""
    seen = Recorder()
    painter = ready_painter(seen)
    rows = 300
    big = Picture(
        "heatmaps/big",
        "heatmap",
        {
            "values": np.random.default_rng(0).normal(size=(rows, 400)),
            "row_labels": [f"layer.{k}" for k in range(rows)],
            "steps": list(range(400)),
            "scale": BACKPROP_SCALE,
        },
    )
    painter.submit(1, [big])
    started = time.perf_counter()
    painter.submit(2, [big])
    handed_over = time.perf_counter() - started
    painter.close()
    assert [step for step, _ in seen.written] == [1, 2]
    drawn = pixels(seen.written[0][1])
    assert drawn.shape[1] == 360
    assert handed_over < 0.1, handed_over  # a drawing of it takes several times longer
