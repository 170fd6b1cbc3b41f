"""The diagnosis survives a resume: its history, run info and batch sizes go through the
checkpoint as plain values, bounded like the history itself."""

import io
import pickle
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning import seed_everything
from torch.utils.data import DataLoader

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.diagnose import History
from ln_diagnostics.engine.diagnosis import Diagnosis
from ln_diagnostics.tensorboard.diagnosis import diagnose_logdir

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import demo

TAGS = ("health/grad_norm_total", "backprop/norm/net.1", "activations/std/net.1")


def feed(history, steps):
    for step in steps:
        history.add(step, {tag: float(step) / (k + 1) for k, tag in enumerate(TAGS)})


def round_trip(state):
    """Through ``torch.save`` and ``torch.load(weights_only=True)``, as a checkpoint goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("cut", [0, 3, 8, 50, 99])
def test_history_state_continues_as_if_uninterrupted(cut):
    whole = History(max_entries=8)
    feed(whole, range(100))
    first = History(max_entries=8)
    feed(first, range(cut))
    resumed = History(max_entries=8)
    resumed.load_state_dict(round_trip(first.state_dict()))
    feed(resumed, range(cut, 100))
    assert resumed.series() == whole.series()
    assert len(resumed) == len(whole) <= 8


def test_history_state_is_bounded_by_the_history():
    history = History(max_entries=16)
    sizes = []
    for chunk in range(5):
        feed(history, range(chunk * 2000, (chunk + 1) * 2000))
        state = history.state_dict()
        sizes.append(len(pickle.dumps(state)))
        assert len(state["kept"]) == len(state["steps"]) == len(history) <= 16
        assert all(i is None and len(v) == len(history) for i, v in state["series"].values())
    # at most 16 entries, each at most 9 pickled bytes a number, plus the keys and tag names
    assert max(sizes) <= 16 * 9 * (2 + len(TAGS)) + 300


def test_missing_keys_start_afresh_and_bad_states_say_why():
    diagnosis = Diagnosis()
    diagnosis.load_state_dict({})
    assert (len(diagnosis.history), diagnosis.info, diagnosis.eval_batch_size) == (0, None, None)
    diagnosis.load_state_dict({"eval_batch_size": 1})
    assert diagnosis.eval_batch_size == 1
    state = History().state_dict()
    state["steps"] = [0]
    with pytest.raises(ValueError, match="0 kept entries but 1 steps"):
        History().load_state_dict(state)


def fit(make_trainer, steps, ckpt_path=None):
    seed_everything(0, verbose=False)
    diagnostics = LayerDiagnostics()
    trainer = make_trainer([diagnostics], max_steps=steps, log_every_n_steps=2)
    # 10 batches an epoch: the checkpoint at step 10 ends an epoch, so a resumed run sees the
    # batches the uninterrupted one saw
    trainer.fit(demo.DeepMLP(), DataLoader(demo.spirals(640), batch_size=64), ckpt_path=ckpt_path)
    return diagnostics, trainer


def test_resumed_run_diagnoses_its_whole_history(make_trainer, tmp_path):
    whole, _ = fit(make_trainer, 20)
    half, trainer = fit(make_trainer, 10)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    assert "diagnosis" in torch.load(ckpt, weights_only=True)["callbacks"][half.state_key]
    resumed, second = fit(make_trainer, 20, ckpt_path=ckpt)

    expected, found = whole.diagnose(), resumed.diagnose()
    assert "vanishing_gradients" in [f.kind for f in expected]
    assert [(f.kind, f.layer, f.first_step, f.last_step) for f in found] == [
        (f.kind, f.layer, f.first_step, f.last_step) for f in expected
    ]
    assert [f.value for f in found] == pytest.approx([f.value for f in expected], rel=1e-5)
    assert [f.first_step for f in found if f.kind == "vanishing_gradients"] == [0]
    assert whole.state_dict()["diagnosis"]["history"]["entries"] == 10
    assert resumed.state_dict()["diagnosis"]["history"]["entries"] == 10
    # the resumed run logs into a directory of its own: the run-info record is written there too
    (from_files,) = diagnose_logdir(second.logger.log_dir).values()
    assert from_files.info.source == "record"
    layers = [[x.name, x.type, x.has_params] for x in from_files.info.layers]
    assert layers == whole.state_dict()["diagnosis"]["info"]["layers"]
