"""Conformance: real ``Trainer.fit`` runs with default ``LayerDiagnostics()`` on model shapes
people train, each checked by ``conformance_harness`` against the same run without the plugin.

The table of every case and check is printed at the end of the pytest run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import conformance_models as m
import pytest
import torch
from conformance_harness import CHECK_FUNCTIONS, OK, evaluate, fit_once
from torch import nn

from ln_diagnostics.callbacks import LayerDiagnostics, NormSwap

#: every case: 3 optimizer steps; the plugin logs at the Trainer's interval, steps 0 and 2
TRAINER = {"max_steps": 3, "log_every_n_steps": 2}


@dataclass(frozen=True)
class Case:
    name: str
    module: Callable[[], Any]
    callbacks: Callable[[], list] = list
    trainer: Mapping[str, Any] = field(default_factory=dict)

    @property
    def swaps(self) -> bool:
        return any(isinstance(c, NormSwap) for c in self.callbacks())


def _lm():
    return m.token_samples(per_token_labels=True)


CASES = [
    Case("gpt2-lm forward", lambda: m.HFWithForward(m.gpt2(), _lm())),
    Case("gpt2-lm no-forward", lambda: m.HFWithoutForward(m.gpt2(), _lm())),
    Case(
        "bert-cls forward",
        lambda: m.HFWithForward(m.bert_classifier(), m.token_samples(per_token_labels=False)),
    ),
    Case(
        "bert-cls no-forward",
        lambda: m.HFWithoutForward(m.bert_classifier(), m.token_samples(per_token_labels=False)),
    ),
    Case(
        "gpt2-lm bf16-mixed",
        lambda: m.HFWithoutForward(m.gpt2(), _lm()),
        trainer={"precision": "bf16-mixed"},
    ),
    Case(
        "gpt2-lm grad-checkpointing",
        lambda: m.HFWithForward(m.gpt2(checkpointing=True), _lm()),
    ),
    Case("transformer-encoder padding-mask", lambda: m.PaddedEncoder(frozen=False)),
    Case("transformer-encoder frozen nested", lambda: m.PaddedEncoder(frozen=True)),
    Case("lstm packed", lambda: m.PackedRNN(nn.LSTM)),
    Case("gru packed", lambda: m.PackedRNN(nn.GRU)),
    Case("resnet batchnorm", lambda: m.ImageClassifier(m.ResNet())),
    *(
        Case(
            f"resnet NormSwap({target})",
            lambda: m.ImageClassifier(m.ResNet()),
            callbacks=lambda target=target: [NormSwap(target=target)],
        )
        for target in ("layernorm", "groupnorm", "rmsnorm")
    ),
    Case("timm BatchNormAct2d", lambda: m.ImageClassifier(m.MobileNetish())),
    Case(
        "timm BatchNormAct2d NormSwap",
        lambda: m.ImageClassifier(m.MobileNetish()),
        callbacks=lambda: [NormSwap()],
    ),
    Case("vit root params", m.ViT),
    Case(
        "mlp accumulation+clipping",
        m.MLP,
        trainer={"accumulate_grad_batches": 2, "gradient_clip_val": 0.05},
    ),
    Case("resnet frozen backbone", m.frozen_backbone),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name.replace(" ", "_") for c in CASES])
def test_conformance(case, make_trainer, events, hooks, tensor_hooks, record_row):
    def trainer(callbacks):
        return make_trainer(callbacks, **{**TRAINER, **case.trainer})

    def counts(model):
        return hooks(model), tensor_hooks(model)

    plain = fit_once(case.module, trainer, case.callbacks(), plugin=None, hook_counts=counts)
    ours = fit_once(
        case.module, trainer, case.callbacks(), plugin=LayerDiagnostics(), hook_counts=counts
    )
    results = evaluate(plain, ours, swap=case.swaps, events=events)
    record_row(case.name, results)
    failed = {check: value for check, value in results.items() if value.startswith("FAIL")}
    assert not failed, "\n".join(f"{check}: {value}" for check, value in failed.items())


WORKER = Path(__file__).with_name("ddp_worker.py")
#: checks that read each rank's own record; the event file and its norms exist on rank 0 only
PER_RANK = ("warnings", "hooks", "trajectory")


def _death(stderr: str) -> str:
    """The line of a worker's stderr that says why a rank stopped."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for marker in ("what():", "Error:", "Error"):
        for line in lines:
            if marker in line:
                return line[:240]
    return lines[-1][:240] if lines else "no output"


def test_conformance_ddp(tmp_path, events, record_row):
    """``strategy="ddp"`` with 2 gloo processes: the same checks, on rank 0's event file and on
    each rank's own trajectory, warnings and hooks."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [os.environ.get("PYTHONPATH"), str(Path(__file__).parents[2])])
        ),
    }
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path)],
        timeout=240,
        env=env,
        capture_output=True,
        text=True,
    )
    saved = {
        rank: torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for rank in (0, 1)
        if (tmp_path / f"rank{rank}.pt").exists()
    }
    if 0 in saved:
        results = evaluate(saved[0]["plain"], saved[0]["ours"], swap=False, events=events)
    else:
        results = {c: f"FAIL rank 0 died: {_death(proc.stderr)}" for c in CHECK_FUNCTIONS}
        results["swap"] = "-"
    for check in PER_RANK:
        if results[check] != OK:
            continue
        if 1 not in saved:
            results[check] = f"FAIL rank 1 died: {_death(proc.stderr)}"
        else:
            value = CHECK_FUNCTIONS[check](saved[1]["plain"], saved[1]["ours"], {})
            results[check] = value if value == OK else f"FAIL rank 1: {value}"
    record_row("ddp 2 gloo mlp", results)
    failed = {check: value for check, value in results.items() if value.startswith("FAIL")}
    assert not failed, "\n".join(f"{check}: {value}" for check, value in failed.items())
