"""Resume with ``Trainer.fit(ckpt_path=...)``: counters, shift references and threshold history
continue as if the run had never stopped; several diagnostics callbacks share one checkpoint."""

import math

import pytest
import torch
from pytorch_lightning import seed_everything

from ln_diagnostics.callbacks import DiagnosticThresholds, LayerDiagnostics
from tests.reliability.conftest import MLP

EPOCH = 4  # steps of the first run
# One batch per epoch, the same every step: Lightning's bookkeeping of where a resumed run is in
# its epoch cannot change which data a step sees, so resumed values must equal uninterrupted ones.
ONE_BATCH = {"n": 8, "batch_size": 8}


def diagnostics():
    return LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0, shift_every_n_steps=2)


def thresholds(rule):
    return DiagnosticThresholds([rule], on_violation="raise")


def logged_values(events, logdir):
    acc = events(logdir)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


LOOSE = {"tag": "health/grad_norm_total", "max": 1e9, "over": "mean"}


def test_resume_continues_counters_shift_references_and_threshold_history(
    make_trainer, events, regression_data, tmp_path
):
    data = regression_data(**ONE_BATCH)
    seed_everything(0)
    whole_diag, whole_thr = diagnostics(), thresholds(LOOSE)
    whole = make_trainer([whole_diag, whole_thr], max_steps=2 * EPOCH)
    whole.fit(MLP(), train_dataloaders=data)
    history = sorted(logged_values(events, whole.logger.log_dir)["health/grad_norm_total"].items())
    assert [s for s, _ in history] == list(range(2 * EPOCH))

    # A "mean" bound that the whole run passes but its second half alone fails: it holds in the
    # resumed run only if the history of the first half was restored.
    mean_all = sum(v for _, v in history) / len(history)
    mean_late = sum(v for s, v in history if s >= EPOCH) / EPOCH
    assert not math.isclose(mean_all, mean_late, rel_tol=1e-3)
    middle = (mean_all + mean_late) / 2
    rule = {"tag": "health/grad_norm_total", "over": "mean"}
    rule["min" if mean_late < mean_all else "max"] = middle

    seed_everything(0)
    model = MLP()
    first_diag = diagnostics()
    first = make_trainer([first_diag, thresholds(rule)], max_steps=EPOCH)
    first.fit(model, train_dataloaders=data)
    ckpt = tmp_path / "half.ckpt"
    first.save_checkpoint(ckpt)

    second_diag, second_thr = diagnostics(), thresholds(rule)
    second = make_trainer([second_diag, second_thr], max_steps=2 * EPOCH)
    second.fit(MLP(), train_dataloaders=data, ckpt_path=ckpt)  # must not raise

    assert first_diag.n_logged == EPOCH
    assert second_diag.n_logged == whole_diag.n_logged == 2 * EPOCH
    assert second_thr.state_dict()["folds"] == whole_thr.state_dict()["folds"]
    expected = logged_values(events, whole.logger.log_dir)
    resumed = logged_values(events, second.logger.log_dir)
    shift_tags = [t for t in expected if t.startswith(("shift/", "health/shift_"))]
    assert any("_init" in t for t in shift_tags)
    for tag, points in expected.items():
        if tag.split("/")[0] not in ("activations", "gradients", "updates", "shift", "health"):
            continue
        later = {s: v for s, v in points.items() if s >= EPOCH}
        assert resumed[tag] == pytest.approx(later, rel=1e-5, abs=1e-7), tag


def test_two_layer_diagnostics_with_different_options_restore_their_own_state(
    make_trainer, regression_data, tmp_path
):
    def pair():
        every_step = LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0)
        linear_only = LayerDiagnostics(
            every_n_steps=3, include="net.0", histogram_every_n_steps=0, shift_every_n_steps=3
        )
        return every_step, linear_only

    data = regression_data(**ONE_BATCH)
    seed_everything(0)
    a, b = pair()
    assert a.state_key != b.state_key
    first = make_trainer([a, b], max_steps=EPOCH)
    first.fit(MLP(), train_dataloaders=data)
    ckpt = tmp_path / "pair.ckpt"
    first.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    assert saved[a.state_key]["n_logged"] == 4 and saved[b.state_key]["n_logged"] == 2
    init_a = saved[a.state_key]["shift"]["init"]
    init_b = saved[b.state_key]["shift"]["init"]
    assert set(init_b) == {"net.0"} and set(init_a) == {"net.0", "net.1", "net.2"}

    a2, b2 = pair()
    make_trainer([a2, b2], max_steps=2 * EPOCH).fit(MLP(), train_dataloaders=data, ckpt_path=ckpt)
    assert (a2.n_logged, b2.n_logged) == (8, 3)  # steps 0..7 and 0, 3, 6
    for restored, init in ((a2, init_a), (b2, init_b)):
        state = restored.state_dict()["shift"]["init"]
        assert set(state) == set(init)
        for layer, (mean, var) in init.items():
            torch.testing.assert_close(state[layer][0], mean)
            torch.testing.assert_close(state[layer][1], var)


def test_callbacks_differing_only_in_other_options_get_distinct_state_keys():
    base = LayerDiagnostics(every_n_steps=5)
    variants = [
        LayerDiagnostics(every_n_steps=5, group_depth=2),
        LayerDiagnostics(every_n_steps=5, histogram_every_n_steps=0),
        LayerDiagnostics(every_n_steps=5, shift_every_n_steps=0),
        LayerDiagnostics(every_n_steps=5, ics_every_n_steps=10),
        LayerDiagnostics(every_n_steps=5, types=["torch.nn.Linear"]),
        LayerDiagnostics(every_n_steps=5, track_updates=False),
    ]
    keys = {base.state_key, *(v.state_key for v in variants)}
    assert len(keys) == 1 + len(variants)
    # Callbacks with default options keep the key that older checkpoints were written with.
    assert base.state_key == "LayerDiagnostics{'every_n_steps': 5, 'include': (), 'exclude': ()}"
