"""``DiagnosticThresholds`` in real ``Trainer.fit`` runs, fed by a tiny source callback."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.demos.boring_classes import BoringModel

from ln_diagnostics import ThresholdViolation
from ln_diagnostics.callbacks import DiagnosticThresholds
from ln_diagnostics.cli import main
from ln_diagnostics.collect.records import LoggedScalars

MAX_STEPS = 12


class SgdModel(BoringModel):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class FakeSource(Callback):
    """Publishes real values of the run the way LayerDiagnostics does."""

    def __init__(self) -> None:
        self.last_logged: LoggedScalars | None = None
        self.grad_norm = math.nan

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        param_norm = float(torch.linalg.vector_norm(pl_module.layer.weight))
        self.last_logged = LoggedScalars(
            trainer.global_step,
            {
                "health/loss": float(outputs["loss"]),
                "health/grad_norm_total": self.grad_norm,
                "parameters/norm/layer": param_norm,
            },
        )


def _fit(lr: float, *callbacks: Callback, max_steps: int = MAX_STEPS) -> Trainer:
    trainer = Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=list(callbacks),
    )
    trainer.fit(SgdModel(lr))
    return trainer


EXPLODING = [{"name": "bounded weights", "tag": "parameters/norm/*", "max": 100.0}]


def test_healthy_run_passes(recwarn):
    rules = [
        {"tag": "parameters/norm/*", "max": 100.0},
        {"tag": "health/loss", "max": 1e3, "over": "mean"},
        {"tag": "health/grad_norm_total", "max": 1e3, "over": "max", "after_step": 2},
    ]
    thresholds = DiagnosticThresholds(rules)
    trainer = _fit(0.01, FakeSource(), thresholds)
    assert trainer.global_step == MAX_STEPS
    assert not [w for w in recwarn if "DiagnosticThresholds" in str(w.message)]
    state = thresholds.state_dict()
    assert state["checked_steps"] == {"FakeSource": MAX_STEPS}
    assert state["reported"] == []
    points = {(r.rule.tag, r.tag): r.points for r in thresholds.evaluator.results()}
    assert points == {
        ("parameters/norm/*", "parameters/norm/layer"): MAX_STEPS,
        ("health/loss", "health/loss"): MAX_STEPS,
        ("health/grad_norm_total", "health/grad_norm_total"): MAX_STEPS - 1,  # steps 2...12
    }


def test_raise_on_exploding_run():
    with pytest.raises(ThresholdViolation) as caught:
        _fit(1e3, FakeSource(), DiagnosticThresholds(EXPLODING))
    error = caught.value
    assert (error.rule, error.tag, error.bound) == (
        "bounded weights",
        "parameters/norm/layer",
        "max 100",
    )
    assert error.value > 100.0 or math.isnan(error.value)
    assert 0 < error.step < MAX_STEPS
    assert "threshold rule 'bounded weights' violated: parameters/norm/layer = " in str(error)


def test_stop_ends_training_early(capsys):
    trainer = _fit(1e3, FakeSource(), DiagnosticThresholds(EXPLODING, on_violation="stop"))
    assert trainer.global_step < MAX_STEPS
    err = capsys.readouterr().err
    assert err.count("DiagnosticThresholds: stopping: threshold rule 'bounded weights'") == 1


def test_warn_once_per_rule():
    rules = [*EXPLODING, {"tag": "health/loss", "max": 1e-9}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(1e3, FakeSource(), DiagnosticThresholds(rules, on_violation="warn"))
    messages = [str(w.message) for w in caught if "DiagnosticThresholds" in str(w.message)]
    assert trainer.global_step == MAX_STEPS
    assert len(messages) == 2
    assert any("'bounded weights' violated" in m for m in messages)
    assert any("'health/loss' violated: health/loss" in m for m in messages)


def test_callback_order_does_not_matter_and_aggregates_are_checked_at_the_end():
    # The thresholds callback runs before its source, so it sees each step one batch late and
    # the last one in on_train_end; over="last" is only decided there.
    thresholds = DiagnosticThresholds([{"tag": "health/loss", "max": 1e-9, "over": "last"}])
    with pytest.raises(ThresholdViolation) as caught:
        _fit(0.01, thresholds, FakeSource())
    assert caught.value.step == MAX_STEPS
    assert caught.value.bound == "max 1e-09, over last"


def test_settled_aggregate_stops_before_the_end(capsys):
    thresholds = DiagnosticThresholds(
        [{"tag": "parameters/norm/layer", "max": 100.0, "over": "max"}], on_violation="stop"
    )
    trainer = _fit(1e3, FakeSource(), thresholds)
    assert trainer.global_step < MAX_STEPS
    assert "over max" in capsys.readouterr().err


def test_unmatched_rule_warns_at_the_end():
    rules = [
        {"tag": "gradients/nrom/*", "max": 1.0},
        {"tag": "ics/*", "max": 1.0, "optional": True},
        {"tag": "health/loss", "max": 1e9, "after_step": 10_000},
    ]
    with pytest.warns(UserWarning, match="rule 'gradients/nrom/\\*' matches no scalar tag") as rec:
        _fit(0.01, FakeSource(), DiagnosticThresholds(rules), max_steps=3)
    messages = [str(w.message) for w in rec if "DiagnosticThresholds" in str(w.message)]
    assert len(messages) == 2
    expected = "'health/loss' matches 1 tag but none has a point at step >= after_step = 10000"
    assert any(expected in m and "(last logged step: 3)" in m for m in messages)


def test_no_source_warns_in_setup():
    with pytest.warns(UserWarning, match="found no callback exposing `last_logged`") as rec:
        _fit(0.01, DiagnosticThresholds(EXPLODING), max_steps=1)
    assert len([w for w in rec if "DiagnosticThresholds" in str(w.message)]) == 1


def test_state_dict_round_trip_and_missing_keys():
    rules = [*EXPLODING, {"tag": "health/loss", "max": 1.0, "over": "mean"}]
    thresholds = DiagnosticThresholds(rules)
    thresholds.load_state_dict({})
    assert thresholds.state_dict() == {
        "checked_steps": {},
        "unmatched_warned": [],
        "reported": [],
        "folds": {},
    }
    source = FakeSource()
    trainer = Trainer(logger=False, callbacks=[source, thresholds], enable_progress_bar=False)
    for step, loss in [(1, 0.5), (2, 1.2)]:
        source.last_logged = LoggedScalars(step, {"health/loss": loss})
        thresholds._poll(trainer)
    state = thresholds.state_dict()
    assert state["checked_steps"] == {"FakeSource": 2}
    resumed = DiagnosticThresholds(rules)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    # The resumed run judges the mean on every point, those before the resume too.
    source.last_logged = LoggedScalars(3, {"health/loss": 1.2})
    resumed._poll(trainer)
    [mean] = resumed.evaluator.results()
    assert (mean.value, mean.points) == (pytest.approx((0.5 + 1.2 + 1.2) / 3), 3)
    # ... and does not re-check steps it already checked.
    source.last_logged = LoggedScalars(2, {"parameters/norm/layer": 1e9})
    resumed._poll(trainer)
    source.last_logged = LoggedScalars(4, {"parameters/norm/layer": 1e9})
    with pytest.raises(ThresholdViolation, match="at step 4"):
        resumed._poll(trainer)


def test_a_checkpoint_with_the_points_of_older_versions_resumes_with_them():
    rules = [{"tag": "health/loss", "max": 1.0, "over": "mean"}]
    thresholds = DiagnosticThresholds(rules)
    thresholds.load_state_dict(
        {"checked_steps": {"FakeSource": 2}, "history": {"health/loss": [[1, 0.5], [2, 2.0]]}}
    )
    [mean] = thresholds.evaluator.results()
    assert (mean.value, mean.points, mean.step) == (1.25, 2, 2)


def test_rules_changed_since_the_checkpoint_warn_that_earlier_points_are_missing():
    source = FakeSource()
    before = DiagnosticThresholds([{"tag": "health/loss", "max": 10.0}])
    trainer = Trainer(logger=False, callbacks=[source, before], enable_progress_bar=False)
    source.last_logged = LoggedScalars(1, {"health/loss": 5.0, "parameters/norm/layer": 1.0})
    before._poll(trainer)
    rules = [
        {"tag": "health/loss", "max": 10.0},  # unchanged: restored without a word
        {"tag": "health/loss", "max": 1.0},  # a new bound on a tag seen before
        {"tag": "parameters/norm/*", "max": 1.0, "after_step": 1},  # a new window
        {"tag": "health/grad_norm_total", "max": 1.0},  # a tag not seen before: nothing lost
    ]
    after = DiagnosticThresholds(rules)
    with pytest.warns(
        UserWarning, match="other threshold rules; 'health/loss', 'parameters/norm/\\*' count only"
    ):
        after.load_state_dict(before.state_dict())
    [kept] = [r for r in after.evaluator.results() if r.rule.max == 10.0]
    assert (kept.points, kept.value) == (1, 5.0)


def test_two_callbacks_with_different_inline_rules_can_share_a_trainer():
    """Lightning refuses two stateful callbacks with one state key; inline rules are keyed by
    their content, so the same rules give the same key (a resume finds its state)."""
    a = DiagnosticThresholds([{"tag": "health/*", "max": 1.0}])
    b = DiagnosticThresholds([{"tag": "gradients/*", "min": 0.0}], on_violation="warn")
    assert a.state_key != b.state_key
    assert a.state_key == DiagnosticThresholds([{"tag": "health/*", "max": 1.0}]).state_key
    trainer = Trainer(logger=False, callbacks=[a, b], enable_progress_bar=False)
    assert a in trainer.callbacks and b in trainer.callbacks


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((EXPLODING,), {"on_violation": "explode"}, ValueError,
         "on_violation must be one of 'raise', 'stop', 'warn'; got 'explode'"),
        (([{"tag": "x", "max": 1, "over": "median"}],), {}, ValueError,
         r"DiagnosticThresholds: DiagnosticThresholds\(rules=...\): rule 1: key 'over' must be "
         "one of all, last, mean, max, min; got 'median'"),
        (([],), {}, ValueError, "expected at least one rule; got none"),
        ((42,), {}, ValueError, "expected a list of rules .* got int"),
        (("missing.toml",), {}, ValueError, "threshold file 'missing.toml' does not exist"),
    ],
)  # fmt: skip
def test_invalid_arguments(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        DiagnosticThresholds(*args, **kwargs)


def test_rules_from_file(tmp_path):
    file = tmp_path / "t.toml"
    file.write_text('[[rule]]\ntag = "parameters/norm/*"\nmax = 100.0\n')
    assert DiagnosticThresholds(file).rules[0].max == 100.0
    assert DiagnosticThresholds(str(file), on_violation="warn").state_key.endswith(f"'{file}'}}")
    file.write_text('[[rule]]\ntag = "x"\nmax = 1\nmin = 2\n')
    with pytest.raises(ValueError, match=r"t\.toml:1: rule 1: 'min' must not exceed 'max'"):
        DiagnosticThresholds(file)


def test_end_to_end_with_layer_diagnostics_and_cli(tmp_path, capsys):
    from pytorch_lightning.loggers import TensorBoardLogger

    from ln_diagnostics.callbacks import LayerDiagnostics

    rules = tmp_path / "thresholds.toml"
    rules.write_text(
        '[[rule]]\nname = "no exploding gradients"\ntag = "gradients/norm/*"\nmax = 1e3\n\n'
        '[[rule]]\ntag = "health/grad_norm_total"\nmax = 1e3\nover = "max"\n'
    )
    trainer = Trainer(
        max_steps=MAX_STEPS,
        logger=TensorBoardLogger(save_dir=str(tmp_path), name="logs", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[LayerDiagnostics(every_n_steps=1), DiagnosticThresholds(rules)],
    )
    with pytest.raises(ThresholdViolation) as caught:
        trainer.fit(SgdModel(1e3))
    assert caught.value.rule == "no exploding gradients"
    assert caught.value.tag.startswith("gradients/norm/")
    violation_step = caught.value.step
    capsys.readouterr()

    logdir = tmp_path / "logs"
    assert main(["check", str(logdir), "--thresholds", str(rules)]) == 1
    out = capsys.readouterr().out
    fail = [line.split() for line in out.splitlines() if line.endswith("FAIL")]
    assert fail and fail[0][:5] == ["no", "exploding", "gradients", "version_0", caught.value.tag]
    assert int(fail[0][6]) <= violation_step
    assert main(["summary", str(logdir)]) == 0
    assert "GRAD_NORM" in capsys.readouterr().out
    assert main(["summary", str(logdir), "--wide"]) == 0
    assert "gradients/norm" in capsys.readouterr().out


def test_a_finding_rule_without_a_diagnosis_warns_instead_of_passing(make_trainer):
    # LayerDiagnostics(diagnosis=False) finds nothing because it does not look: that is no pass
    from ln_diagnostics.callbacks import LayerDiagnostics

    thresholds = DiagnosticThresholds([{"finding": "*"}])
    trainer = make_trainer(
        [LayerDiagnostics(diagnosis=False), thresholds], max_steps=2, log_every_n_steps=1
    )
    with pytest.warns(
        UserWarning, match="rule 'finding \\*' was given no diagnosis to judge: "
    ) as rec:
        trainer.fit(SgdModel(0.01))
    assert len([w for w in rec if "DiagnosticThresholds" in str(w.message)]) == 1
    assert thresholds.evaluator.results() == []
