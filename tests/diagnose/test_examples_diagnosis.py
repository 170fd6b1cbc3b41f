"""The diagnosis on the project's own example models, with default options, end to end: a real
``Trainer.fit``, the findings the callback prints, and the same findings from the event files
(``ln-diagnostics diagnose``)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning import seed_everything
from tensorboard.util import tensor_util
from torch.utils.data import DataLoader

from ln_diagnostics.callbacks import DiagnosticThresholds, LayerDiagnostics
from ln_diagnostics.cli import main
from ln_diagnostics.diagnose import findings_markdown
from ln_diagnostics.errors import ThresholdViolation
from ln_diagnostics.tensorboard.diagnosis import diagnose_logdir
from ln_diagnostics.tensorboard.reader import read_run

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import deep_mlp  # noqa: E402
import demo  # noqa: E402
import small_batch  # noqa: E402
import transformer_depth  # noqa: E402


def fit(make_trainer, model, loader, steps=2, callbacks=()):
    """A short default-options run; returns the callback and the run directory."""
    diagnostics = LayerDiagnostics()
    trainer = make_trainer([diagnostics, *callbacks], max_steps=steps, log_every_n_steps=1)
    trainer.fit(model, loader)
    return diagnostics, Path(trainer.logger.log_dir)


def same_as_cli(diagnostics, run_dir, events):
    """The callback's findings, checked against the event files' diagnosis and text."""
    findings = diagnostics.diagnose()
    (from_files,) = diagnose_logdir(run_dir).values()
    assert from_files.info.source == "record"
    assert [f.to_dict() for f in from_files.findings] == [f.to_dict() for f in findings]
    text = events(run_dir).Tensors("diagnosis/text_summary")[-1]
    assert tensor_util.make_ndarray(text.tensor_proto).item().decode() == findings_markdown(
        findings
    )
    return {f.kind: f for f in findings}


def stack_ratio(run_dir, step=0):
    """log10(first / last) of backprop/norm between the first and last Linear (reference)."""
    scalars = read_run(run_dir)
    layers = [t.split("/", 2)[2] for t in scalars if t.startswith("activations/std/")]
    linears = [n for n in layers if f"parameters/norm/{n}" in scalars]
    hidden = layers[layers.index(linears[0]) + 1 : layers.index(linears[-1])]
    norms = [dict(scalars[f"backprop/norm/{n}"])[step] for n in hidden]
    return float(np.log10(np.float64(norms[0]) / np.float64(norms[-1]))), hidden


@pytest.mark.parametrize("layernorm", [False, True])
def test_demo_16_layer_tanh_mlp(make_trainer, events, layernorm):
    seed_everything(0, verbose=False)
    cb, run = fit(
        make_trainer,
        demo.DeepMLP(layernorm=layernorm),
        DataLoader(demo.spirals(512), batch_size=64),
    )
    found = same_as_cli(cb, run, events)
    ratio, hidden = stack_ratio(run)
    if layernorm:
        assert "vanishing_gradients" not in found and "healthy" in found
        assert abs(ratio) < 1.0
        return
    vanishing = found["vanishing_gradients"]
    assert vanishing.first_step == 0 and vanishing.severity == "error"
    assert vanishing.layer.startswith(f"{hidden[0]} … ")  # the first hidden layers
    assert vanishing.evidence["depth_log10_first"] == pytest.approx(ratio, abs=1e-6)
    assert ratio < -3


@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_deep_mlp_50_layer_tanh(make_trainer, events, norm):
    seed_everything(0, verbose=False)
    train, _ = deep_mlp.digits()
    cb, run = fit(
        make_trainer, deep_mlp.DeepMLP(norm=norm), DataLoader(train, batch_size=64), steps=1
    )
    found = same_as_cli(cb, run, events)
    ratio, hidden = stack_ratio(run)
    if norm == "layernorm":
        assert "vanishing_gradients" not in found
        return
    vanishing = found["vanishing_gradients"]
    assert vanishing.first_step == 0
    assert vanishing.layer.startswith(f"{hidden[0]} … ")
    assert vanishing.evidence["depth_log10_first"] == pytest.approx(ratio, abs=1e-6)
    assert ratio < -10


def test_relu_with_a_large_negative_bias_has_dead_units(make_trainer, events):
    seed_everything(0, verbose=False)
    train, _ = deep_mlp.digits()
    model = deep_mlp.DeepMLP(depth=4, activation="relu")
    with torch.no_grad():
        model.net[2].bias.fill_(-100.0)  # the Linear before net.3, a ReLU
    cb, run = fit(make_trainer, model, DataLoader(train, batch_size=64))
    found = same_as_cli(cb, run, events)
    dead = found["dead_units"]
    assert (dead.layer, dead.first_step, dead.value) == ("net.3", 0, 1.0)
    assert [f.layer for f in cb.diagnose() if f.kind == "dead_units"] == ["net.3"]
    assert "collapsed_activations" not in found


@pytest.mark.parametrize(("batch", "fires"), [(2, True), (8, False)])
def test_batchnorm_at_a_small_batch(make_trainer, events, batch, fires):
    seed_everything(0, verbose=False)
    train, _ = small_batch.digit_images()
    cb, run = fit(
        make_trainer, small_batch.DigitCNN(), DataLoader(train, batch_size=batch, drop_last=True)
    )
    found = same_as_cli(cb, run, events)
    assert ("batchnorm_small_batch" in found) == fires
    if fires:
        finding = found["batchnorm_small_batch"]
        assert finding.value == 2
        assert finding.evidence["batchnorm_layers"] == ["features.1", "features.4", "features.9"]
        assert "NormSwap" in finding.advice


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_24_layers_post_ln_grows_toward_the_output(make_trainer, events, norm_first):
    seed_everything(0, verbose=False)
    cb, run = fit(
        make_trainer,
        transformer_depth.Encoder(24, norm_first),
        DataLoader(transformer_depth.reversal(64), batch_size=32),
        steps=1,
    )
    found = same_as_cli(cb, run, events)
    scalars = read_run(run)
    first, last = (dict(scalars[f"backprop/norm/encoder.layers.{i}.linear2"])[0] for i in (0, 23))
    if norm_first:
        assert "gradient_growth" not in found and "vanishing_gradients" not in found
        assert last < first
        return
    growth = found["gradient_growth"]
    assert growth.first_step == 0 and growth.layer == "encoder.layers.0 … encoder.layers.23"
    assert math.log10(last / first) > 0.3  # reference: the linear2 role alone
    assert growth.value >= 0.3


def test_cli_train_lr_50_names_the_first_nonfinite_module(tmp_path, capsys):
    logdir = tmp_path / "ci"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "cli_train.py"),
            "--steps",
            "60",
            "--lr",
            "50",
            "--logdir",
            str(logdir),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    scalars = read_run(logdir)
    counts = {
        t.split("/", 2)[2]: dict(p)
        for t, p in scalars.items()
        if t.startswith("activations/nonfinite/")
    }  # keys in forward order
    step = min(s for c in counts.values() for s, v in c.items() if v > 0)
    first = next(name for name, c in counts.items() if c.get(step, 0) > 0)
    (result,) = diagnose_logdir(logdir).values()
    nonfinite = result.findings[0]
    assert (nonfinite.kind, nonfinite.layer, nonfinite.first_step) == ("nonfinite", first, step)
    assert main(["diagnose", str(logdir), "--fail-on", "error"]) == 1
    printed = " ".join(capsys.readouterr().out.split())  # the table wraps to the terminal
    assert f"first non-finite activations at step {step} in {first}" in printed


def test_finding_rule_fails_the_fit_at_its_end(make_trainer):
    seed_everything(0, verbose=False)
    rule = DiagnosticThresholds([{"finding": "vanishing_gradients"}])
    with pytest.raises(ThresholdViolation, match="vanishing_gradients"):
        fit(
            make_trainer,
            demo.DeepMLP(),
            DataLoader(demo.spirals(256), batch_size=64),
            callbacks=[rule],
        )
    late = DiagnosticThresholds([{"finding": "*", "after_step": 100}])
    fit(
        make_trainer, demo.DeepMLP(), DataLoader(demo.spirals(256), batch_size=64), callbacks=[late]
    )


def test_diagnosis_false_writes_and_keeps_nothing(make_trainer, events, capsys):
    diagnostics = LayerDiagnostics(diagnosis=False)
    trainer = make_trainer([diagnostics], max_steps=2, log_every_n_steps=1)
    trainer.fit(demo.DeepMLP(depth=3), DataLoader(demo.spirals(256), batch_size=64))
    tensors = events(trainer.logger.log_dir).Tags()["tensors"]
    assert not [t for t in tensors if t.startswith(("diagnosis", "diagnostics/layers"))]
    assert diagnostics.diagnose() == []
    assert "diagnosis" not in capsys.readouterr().out


class ValidatedCNN(small_batch.DigitCNN):
    """The example's BatchNorm CNN with a validation step."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize(
    ("val_batch", "sanity_steps", "fires"),
    [(1, None, True), (2, None, False), (1, 0, True)],
    ids=["val-1", "val-2", "val-1-after-the-record"],
)
def test_batchnorm_validated_on_batches_of_1(
    make_trainer, events, capsys, monkeypatch, val_batch, sanity_steps, fires
):
    seed_everything(0, verbose=False)
    train, test = small_batch.digit_images()
    diagnostics = LayerDiagnostics()
    extra = {} if sanity_steps is None else {"num_sanity_val_steps": sanity_steps}
    # without the sanity check, validation first runs after the first logging step has written
    # the run-info record: the record is written again with the validation batch size
    trainer = make_trainer([diagnostics], max_steps=4, log_every_n_steps=1, **extra)
    monkeypatch.setenv("COLUMNS", "80")
    trainer.fit(
        ValidatedCNN(),
        DataLoader(torch.utils.data.Subset(train, range(64)), batch_size=16),
        DataLoader(torch.utils.data.Subset(test, range(4)), batch_size=val_batch),
    )
    run = Path(trainer.logger.log_dir)
    found = same_as_cli(diagnostics, run, events)
    assert ("batchnorm_small_batch" in found) == fires
    records = events(run).Tensors("diagnostics/layers/text_summary")
    assert len(records) == (2 if sanity_steps == 0 else 1)
    printed = capsys.readouterr().out
    assert "LayerDiagnostics diagnosis" in printed
    assert max(len(line) for line in printed.splitlines()) <= 80
    if not fires:
        return
    finding = found["batchnorm_small_batch"]
    assert (finding.value, finding.evidence["batch_size"]) == (1, 16)
    assert "validated on batches of 1 per device" in finding.message
    assert finding.evidence["batchnorm_layers"] == ["features.1", "features.4", "features.9"]
    assert main(["diagnose", str(run), "--fail-on", "warning"]) == 1
    assert "batchnorm_small_batch" in capsys.readouterr().out
