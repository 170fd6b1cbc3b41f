"""Overhead of ``LayerDiagnostics`` next to the common alternatives, in one process.

Every configuration trains the same model with ``Trainer.fit`` on the CPU (one thread by default,
synthetic in-memory batches, a ``TensorBoardLogger`` in a temporary directory for every run so the
plain run pays the same logger cost, ``log_every_n_steps=50``) and is timed step by step. With
``--accelerator gpu`` the fits train on the first CUDA device instead, and each step's timer
waits for the device (``torch.cuda.synchronize``) so that a step's time is that of its kernels,
not of queueing them; every configuration pays that one sync a step alike.

Models:
    mlp          24 x (Linear(256) + LayerNorm + GELU), batch 128, 10-class cross-entropy.
    cnn          6 x (Conv3x3 + BatchNorm + ReLU) with two max-pools and one stride-2 conv,
                 32x32x3 inputs, batch 32, 10 classes.
    transformer  ``pytorch_lightning.demos.LightningTransformer`` (vocabulary of 1,000 tokens),
                 synthetic token batches of shape (8, 32).
    encoder      many small modules: a 4-layer d=64 Pre-LN ``nn.TransformerEncoder`` (4 heads,
                 feed-forward 256) over token embeddings, batch 32, sequence 16, 10 classes.

Configurations:
    plain              no diagnostics.
    grad_norm          Lightning's documented recipe, ``log_dict(grad_norm(module, norm_type=2))``
                       in ``on_before_optimizer_step``, every step.
    hooks_item         a hand-written forward hook on every leaf module that reads mean/std/max
                       with ``.item()`` and calls ``logger.log_metrics`` every step.
    ours_default       ``LayerDiagnostics()``: every option at its default.
    ours_no_shift      ``ours_default`` with ``shift_every_n_steps=0``: what the shift probe costs.
    ours_ics           ``ours_default`` with ``ics_every_n_steps=50``: what the opt-in ICS probe
                       costs (one extra forward/backward per measured layer, 4 layers).
    ours_every_1       ``LayerDiagnostics(every_n_steps=1)``, every other option at its default:
                       what a user who asks for every step gets.
    ours_every_1_bare  ``LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0,
                       shift_every_n_steps=0)``: the per-step statistics alone.
    ours_act_grad      ``ours_every_1_bare`` with ``track_updates=False``: activations and
                       gradients only, without the parameter snapshot behind ``updates/ratio``.
    ours_shift_hist    ``LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=10,
                       shift_every_n_steps=10)``: scalars every step, histograms and the shift
                       probe every 10 steps.

Measurement: configurations run interleaved round by round (A B C, B C A, ...) so that drift of a
shared machine hits all of them alike. Each fit times ``--steps`` steps from step 0 (and runs one
more, whose start closes the last interval); a step is the wall time from one
``on_train_batch_start`` to the next, so it holds everything Lightning and every callback do for
that step, including step 0's one-off work and the logging steps' host copy and event-file writes.
Per round and configuration the benchmark takes the MEAN step time over every timed step (rare
logging steps and step 0 are amortised, not hidden), the mean without the first ``--warmup`` steps
(``warm``), the MEDIAN step, step 0 alone and the wall clock of ``Trainer.fit`` (set-up and
tear-down included). The table shows the mean in ms, and for each measure the ratio to ``plain``
(median of the per-round ratios, both measured in the same round), with the 25th-75th percentile
of the mean's ratios. With the default ``--steps 300`` and ``log_every_n_steps=50``,
``ours_default`` logs at steps 0, 50, ..., 250.

``--breakdown CONFIG`` times the phases of ``LayerDiagnostics`` instead (set-up, HParams, text
summary, statistics, histograms, norms, pack, host copy, host side, shift probe, event file,
dashboard, layout, heat maps), by wrapping the package's functions from the benchmark: each
phase's exclusive time at step 0 (with the set-up before it) and on an average later logging step.

Peak memory (``--memory``, on by default except with ``--quick``): one fresh child process per
(configuration, repeat) trains the first model for ``--memory-steps`` steps and reports its peak
RSS (``VmHWM`` on Linux; ``ru_maxrss`` elsewhere, which on Linux would inherit the parent's peak
across fork+exec). On Linux the child first lowers its peak mark to its current RSS
(``/proc/self/clear_refs``), so the peak is that of ``fit`` and not the transient peak of importing
torch; the table shows that peak, its ratio to ``plain``, and the growth during ``fit`` (peak
minus the RSS when ``fit`` started). ``--memory-only`` skips the timing.

Run::

    python benchmarks/overhead.py                        # all models, all configurations
    python benchmarks/overhead.py --models mlp --configs plain,ours_default --rounds 3
    python benchmarks/overhead.py --quick                # 1 round, 3 steps: a smoke run
    python benchmarks/overhead.py --breakdown ours_default --steps 300   # step 0 / logging step
    python benchmarks/overhead.py --profile ours_every_1 --models mlp   # cProfile breakdown
    python benchmarks/overhead.py --kernels              # per-output designs, norms (µs)
    python benchmarks/overhead.py --accelerator gpu --rounds 3   # on a CUDA GPU (no memory)

Results go to ``benchmarks/results/overhead.json`` (``--json`` to change). Numbers depend on the
machine and its load: compare ratios, not milliseconds, and rerun on a quiet machine before
quoting them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import json
import logging
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.demos import LightningTransformer
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import grad_norm
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ln_diagnostics.callbacks import LayerDiagnostics

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "overhead.json"
MODELS = ("mlp", "cnn", "transformer", "encoder")
CONFIGS = (
    "plain",
    "grad_norm",
    "hooks_item",
    "ours_default",
    "ours_no_shift",
    "ours_ics",
    "ours_every_1",
    "ours_every_1_bare",
    "ours_act_grad",
    "ours_shift_hist",
)
MEMORY_CONFIGS = ("plain", "ours_default", "ours_every_1")
#: Where every fit of this process trains (``--accelerator``; set once by :func:`main`).
ACCELERATOR = "cpu"
LOG_EVERY_N_STEPS = 50
POOL = 8  # distinct synthetic batches per model, cycled
VOCAB = 1000


# ---------------------------------------------------------------------------------------- data
class _CycledBatches(Dataset):
    """``length`` ready-made batches cycled from a small pool (no collation: batch_size=None)."""

    def __init__(self, pool: list[tuple[Tensor, Tensor]], length: int) -> None:
        self.pool = pool
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.pool[index % len(self.pool)]


def _loader(make: Callable[[torch.Generator], tuple[Tensor, Tensor]], length: int) -> DataLoader:
    gen = torch.Generator().manual_seed(1234)
    pool = [make(gen) for _ in range(POOL)]
    return DataLoader(_CycledBatches(pool, length), batch_size=None, shuffle=False)


# -------------------------------------------------------------------------------------- models
class _Classifier(pl.LightningModule):
    """Shared training step: cross-entropy, SGD, the loss logged like any real run."""

    def __init__(self, net: nn.Module, n_batches: int) -> None:
        super().__init__()
        self.net = net
        self.n_batches = n_batches

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        # ``target`` is accepted so that ``model(*batch)`` (the shift probe's default) works.
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class DeepMLP(_Classifier):
    """24 x (Linear(256) + LayerNorm + GELU), batch 128."""

    WIDTH, DEPTH, BATCH = 256, 24, 128

    def __init__(self, n_batches: int) -> None:
        layers: list[nn.Module] = []
        for _ in range(self.DEPTH):
            layers += [nn.Linear(self.WIDTH, self.WIDTH), nn.LayerNorm(self.WIDTH), nn.GELU()]
        layers.append(nn.Linear(self.WIDTH, 10))
        super().__init__(nn.Sequential(*layers), n_batches)

    def train_dataloader(self) -> DataLoader:
        def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
            x = torch.randn(self.BATCH, self.WIDTH, generator=gen)
            return x, torch.randint(0, 10, (self.BATCH,), generator=gen)

        return _loader(make, self.n_batches)


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


class SmallCNN(_Classifier):
    """6 x (Conv3x3 + BatchNorm + ReLU), two max-pools and a stride-2 conv; 32x32x3, batch 32."""

    BATCH = 32

    def __init__(self, n_batches: int) -> None:
        net = nn.Sequential(
            *_conv_block(3, 16),
            *_conv_block(16, 16),
            nn.MaxPool2d(2),
            *_conv_block(16, 32),
            *_conv_block(32, 32),
            nn.MaxPool2d(2),
            *_conv_block(32, 64),
            *_conv_block(64, 64, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )
        super().__init__(net, n_batches)

    def train_dataloader(self) -> DataLoader:
        def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
            x = torch.randn(self.BATCH, 3, 32, 32, generator=gen)
            return x, torch.randint(0, 10, (self.BATCH,), generator=gen)

        return _loader(make, self.n_batches)


class SyntheticTransformer(LightningTransformer):
    """The Lightning demo transformer on synthetic tokens (the demo would download WikiText2)."""

    BATCH, SEQ = 8, 32

    def __init__(self, n_batches: int) -> None:
        super().__init__(vocab_size=VOCAB)
        self.n_batches = n_batches

    def prepare_data(self) -> None:
        pass  # no download: the batches are synthetic

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss

    def train_dataloader(self) -> DataLoader:
        def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
            tokens = torch.randint(0, VOCAB, (self.BATCH, self.SEQ + 1), generator=gen)
            return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

        return _loader(make, self.n_batches)


class SmallEncoder(_Classifier):
    """4-layer d=64 Pre-LN ``nn.TransformerEncoder`` (4 heads, feed-forward 256) over token
    embeddings, mean-pooled into 10 classes; batch 32, sequence 16: many small modules."""

    WIDTH, DEPTH, HEADS, BATCH, SEQ = 64, 4, 4, 32, 16

    def __init__(self, n_batches: int) -> None:
        layer = nn.TransformerEncoderLayer(
            self.WIDTH,
            self.HEADS,
            dim_feedforward=4 * self.WIDTH,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        net = nn.Sequential(
            nn.Embedding(VOCAB, self.WIDTH),
            nn.TransformerEncoder(
                layer, self.DEPTH, norm=nn.LayerNorm(self.WIDTH), enable_nested_tensor=False
            ),
            _MeanOverTokens(),
            nn.Linear(self.WIDTH, 10),
        )
        super().__init__(net, n_batches)

    def train_dataloader(self) -> DataLoader:
        def make(gen: torch.Generator) -> tuple[Tensor, Tensor]:
            tokens = torch.randint(0, VOCAB, (self.BATCH, self.SEQ), generator=gen)
            return tokens, torch.randint(0, 10, (self.BATCH,), generator=gen)

        return _loader(make, self.n_batches)


class _MeanOverTokens(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)


MODEL_FACTORIES: dict[str, Callable[[int], pl.LightningModule]] = {
    "mlp": DeepMLP,
    "cnn": SmallCNN,
    "transformer": SyntheticTransformer,
    "encoder": SmallEncoder,
}


# ------------------------------------------------------------------------------- alternatives
class GradNormLogging(pl.Callback):
    """Lightning's documented recipe: ``self.log_dict(grad_norm(self, norm_type=2))``."""

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class ItemHooks(pl.Callback):
    """The hand-written alternative: a forward hook on every leaf module reads mean, std and
    max with ``.item()``, and the values go to ``logger.log_metrics`` on every step."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.handles: list[Any] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name, module in pl_module.named_modules():
            if next(module.children(), None) is None:
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(t, Tensor) or not t.is_floating_point():
                return
            t = t.detach()
            self.values[f"{name}/mean"] = t.mean().item()
            self.values[f"{name}/std"] = t.std().item()
            self.values[f"{name}/max"] = t.max().item()

        return hook

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if trainer.logger is not None and self.values:
            trainer.logger.log_metrics(self.values, step=trainer.global_step)
        self.values = {}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def config_callbacks(config: str) -> list[pl.Callback]:
    """The callbacks that make up ``config`` (``plain``: none)."""
    if config == "plain":
        return []
    if config == "grad_norm":
        return [GradNormLogging()]
    if config == "hooks_item":
        return [ItemHooks()]
    if config == "ours_default":
        return [LayerDiagnostics()]
    if config == "ours_no_shift":
        return [LayerDiagnostics(shift_every_n_steps=0)]
    if config == "ours_ics":
        return [LayerDiagnostics(ics_every_n_steps=LOG_EVERY_N_STEPS)]
    if config == "ours_every_1":
        return [LayerDiagnostics(every_n_steps=1)]
    if config == "ours_every_1_bare":
        return [LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0, shift_every_n_steps=0)]
    if config == "ours_act_grad":
        return [
            LayerDiagnostics(
                every_n_steps=1,
                histogram_every_n_steps=0,
                shift_every_n_steps=0,
                track_updates=False,
            )
        ]
    if config == "ours_shift_hist":
        return [
            LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=10, shift_every_n_steps=10)
        ]
    raise ValueError(f"unknown configuration {config!r}; valid: {', '.join(CONFIGS)}")


# ------------------------------------------------------------------------------------ timing
class StepTimer(pl.Callback):
    """Wall time from one ``on_train_batch_start`` to the next, for every global step from 0;
    it sees everything in between, whatever the callback order."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.device.type == "cuda":  # the step's kernels are done, not just queued
            torch.cuda.synchronize(pl_module.device)
        self.stamps.append(time.perf_counter())

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


class FitTiming(NamedTuple):
    """One fit: every step's duration from step 0 (s) and the wall clock of ``Trainer.fit``."""

    steps: list[float]
    fit_s: float


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's per-fit chatter; restore the logging levels and warning filters."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        for message in (
            r".*does not have many workers.*",
            r".*log_every_n_steps.*",
            r".*GPU available but not used.*",
            r".*LeafSpec.*",
        ):
            warnings.filterwarnings("ignore", message=message)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def fit_once(
    model_name: str, config: str, steps: int, extra: Sequence[pl.Callback] = ()
) -> FitTiming:
    """Train a fresh ``model_name`` under ``config`` for ``steps`` timed steps (step 0 included)
    and one more whose start closes the last timed interval."""
    total = steps + 1
    torch.manual_seed(0)
    model = MODEL_FACTORIES[model_name](total)
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="ln-diag-bench-") as logdir:
        trainer = pl.Trainer(
            max_steps=total,
            max_epochs=-1,
            logger=TensorBoardLogger(logdir, name="run"),
            callbacks=[timer, *extra, *config_callbacks(config)],
            accelerator=ACCELERATOR,
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            log_every_n_steps=LOG_EVERY_N_STEPS,
            num_sanity_val_steps=0,
        )
        started = time.perf_counter()
        trainer.fit(model)
        fit_s = time.perf_counter() - started
    times = timer.step_times()[:steps]
    if len(times) != steps:
        raise RuntimeError(f"{model_name}/{config}: timed {len(times)} steps, expected {steps}")
    return FitTiming(times, fit_s)


# ------------------------------------------------------------------------------------- stats
def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


#: per-round measures of one fit (ms), each also reported as a ratio to ``plain``
MEASURES = ("mean", "mean_warm", "median", "fit", "step0")


def _measures(fit: FitTiming, warmup: int) -> dict[str, float]:
    warm = fit.steps[warmup:] or fit.steps
    return {
        "mean": 1e3 * statistics.fmean(fit.steps),
        "mean_warm": 1e3 * statistics.fmean(warm),
        "median": 1e3 * statistics.median(fit.steps),
        "fit": 1e3 * fit.fit_s,
        "step0": 1e3 * fit.steps[0],
    }


def summarize(rounds: dict[str, list[FitTiming]], warmup: int) -> dict[str, dict[str, Any]]:
    """Per configuration and measure (see ``MEASURES``): the median over rounds in ms and, with a
    ``plain`` run, the median of the per-round ratios and their 25th-75th percentile.

    ``mean`` is the mean step time over every timed step, step 0 included; ``mean_warm`` leaves
    out the first ``warmup`` steps; ``median`` is the median step; ``fit`` is the wall clock of
    ``Trainer.fit``; ``step0`` is step 0 alone.
    """
    values = {c: [_measures(f, warmup) for f in fits] for c, fits in rounds.items()}
    out: dict[str, dict[str, Any]] = {}
    for config, per_round in values.items():
        entry: dict[str, Any] = {}
        for measure in MEASURES:
            ms = [r[measure] for r in per_round]
            entry[f"{measure}_ms"] = statistics.median(ms)
            entry[f"{measure}_ms_rounds"] = ms
            if "plain" in values:
                plain = [r[measure] for r in values["plain"]]
                ratios = [c / p for c, p in zip(ms, plain, strict=True)]
                entry[f"{measure}_ratio"] = statistics.median(ratios)
                entry[f"{measure}_ratio_rounds"] = ratios
                entry[f"{measure}_ratio_q25"] = _quantile(ratios, 0.25)
                entry[f"{measure}_ratio_q75"] = _quantile(ratios, 0.75)
        out[config] = entry
    return out


# ------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> float | None:
    """``VmRSS``/``VmHWM`` of this process in KiB from ``/proc/self/status`` (Linux), else None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux: lower the peak-RSS mark to the current RSS, so that the transient peak of importing
    torch and Lightning does not mask the peak of ``fit``."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _memory_child(model_name: str, config: str, steps: int) -> dict[str, Any]:
    # The peak is read from VmHWM, which belongs to this process's memory map alone.
    # ``ru_maxrss`` is not used where VmHWM exists: across fork+exec the kernel carries the
    # parent's peak into it, so every child would report the benchmark parent's size.
    gc.collect()
    reset = _reset_peak_rss()
    before = _status_kib("VmRSS") if reset else None
    if before is None:  # no /proc: fall back on ru_maxrss and the growth of the peak
        before = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    fit_once(model_name, config, steps)
    peak = _status_kib("VmHWM")
    source = "VmHWM"
    if peak is None:
        peak, source = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), "ru_maxrss"
        if sys.platform == "darwin":  # bytes there, KiB on Linux
            peak, before = peak / 1024, before / 1024
    return {
        "peak_mib": peak / 1024,
        "growth_mib": (peak - before) / 1024,
        "peak_reset": reset,
        "source": source,
    }


def measure_memory(
    model_name: str, configs: Sequence[str], steps: int, repeats: int, threads: int
) -> dict[str, dict[str, Any]]:
    """Peak RSS of one fresh child process per (configuration, repeat), interleaved."""
    samples: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    for _ in range(repeats):
        for config in configs:
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--memory-child",
                f"{model_name}:{config}",
                "--memory-steps",
                str(steps),
                "--threads",
                str(threads),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode != 0 or not lines:
                raise RuntimeError(
                    f"memory child {model_name}/{config} failed ({done.returncode}):\n"
                    f"{done.stderr[-2000:]}"
                )
            samples[config].append(json.loads(lines[-1]))
    out: dict[str, dict[str, Any]] = {}
    for config, runs in samples.items():
        peak = statistics.median(r["peak_mib"] for r in runs)
        out[config] = {
            "peak_mib": peak,
            "peak_mib_runs": [r["peak_mib"] for r in runs],
            "growth_mib": statistics.median(r["growth_mib"] for r in runs),
            "peak_reset": all(r["peak_reset"] for r in runs),
            "source": runs[0]["source"],
        }
    if "plain" in out:
        for entry in out.values():
            entry["ratio"] = entry["peak_mib"] / out["plain"]["peak_mib"]
    return out


# ----------------------------------------------------------------------------------- profile
# ----------------------------------------------------------------------------------- kernels
#: the watched-output shapes of the benchmark models: MLP and encoder blocks, the encoder's
#: feed-forward, the CNN's three resolutions
KERNEL_SHAPES = ((128, 256), (32, 16, 64), (32, 16, 256), (32, 16, 32, 32), (32, 32, 16, 16))


def _fastest_us(candidates: dict[str, Callable[[], Any]], reps: int, trials: int = 7) -> dict:
    """Per candidate, the fastest mean over ``trials`` runs of ``reps`` calls, in µs; the
    candidates take turns in every trial, so that the other work of a shared machine disturbs
    them alike and the fastest run is the least disturbed."""
    best = dict.fromkeys(candidates, math.inf)
    for fn in candidates.values():
        fn()
    for _ in range(trials):
        for name, fn in candidates.items():
            started = time.perf_counter()
            for _ in range(reps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - started) / reps)
    return {name: 1e6 * t for name, t in best.items()}


def _gram_sums(x: Tensor, rows: Tensor) -> Tensor:
    """Design alternative, fusing the power sums into one matrix product: the rows ``1, d, d²,
    [x != 0], [x non-finite]`` in one buffer and their Gram matrix, whose entries hold
    ``Σd .. Σd⁴`` and the counts (plus ``aminmax``): the numbers of ``power_sums``."""
    flat = x.reshape(-1)
    k = flat.mean()
    b = rows[:, : flat.numel()]
    b[0].fill_(1.0)
    torch.sub(flat, k, out=b[1])
    torch.mul(b[1], b[1], out=b[2])
    torch.ne(flat, 0.0, out=b[3])
    torch.mul(flat, 0.0, out=b[4]).nan_to_num_(nan=1.0)
    return torch.cat([k[None], torch.mm(b, b.T).reshape(-1), torch.stack(torch.aminmax(flat))])


def _batched_sums(outputs: Sequence[Tensor], work: Tensor) -> list[Tensor]:
    """Design alternative, batching outputs of one shape: as many as fit in one
    ``moments.CHUNK`` are copied into the rows of a block (the outputs themselves are not kept),
    and one call per statistic reduces all of its rows: the numbers of ``power_sums``."""
    n = outputs[0].numel()
    per_block = max(1, work.shape[1] // n)
    results = []
    for start in range(0, len(outputs), per_block):
        group = outputs[start : start + per_block]
        x, d, s = (w[: len(group) * n].view(len(group), n) for w in work)
        torch.stack([o.reshape(-1) for o in group], out=x)
        k = x.mean(1, keepdim=True)
        torch.sub(x, k, out=d)
        torch.mul(d, d, out=s)
        s1, s2 = d.sum(1), s.sum(1)
        s3, s4 = torch.linalg.vecdot(s, d), torch.linalg.vecdot(s, s)  # bmm: ~20x slower
        low, high = x.amin(1), x.amax(1)  # aminmax(dim=1): ~20x slower
        nonzero = torch.ne(x, 0.0, out=d).sum(1)
        nonfinite = torch.mul(x, 0.0, out=s).nan_to_num_(nan=1.0).sum(1)
        sums = [k[:, 0], s1, s2, s3, s4, low, high, nonzero, nonfinite]
        results.append(torch.stack(sums, 1))
    return results


def _fused_sums(x: Tensor) -> Tensor:
    """Design alternative for a compiler: the numbers of ``power_sums`` (but ``saturated``) as
    one expression, which ``torch.compile`` can fuse into a few loops over the output."""
    flat = x.reshape(-1).float()
    k = flat.mean()
    d = flat - k
    sq = d * d
    nonzero = (flat != 0).float().sum()
    nonfinite = (~torch.isfinite(flat)).float().sum()
    sums = [k, d.sum(), sq.sum(), (sq * d).sum(), (sq * sq).sum(), flat.amin(), flat.amax()]
    return torch.stack([*sums, nonzero, nonfinite])


def _compiled(fn: Callable[[Tensor], Tensor]) -> tuple[Callable[[Tensor], Tensor] | None, str]:
    """``fn`` compiled with dynamic shapes and the seconds its first call took, or ``None`` and
    why where this machine cannot compile it (no C++ compiler, an unsupported platform)."""
    compiled = torch.compile(fn, dynamic=True)
    started = time.perf_counter()
    try:
        compiled(torch.randn(*KERNEL_SHAPES[0]))
    except Exception as exc:  # the compiler's own errors are many and unrelated
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return compiled, f"{time.perf_counter() - started:.1f} s"


def kernels() -> str:
    """Per-output statistics and parameter norms by the designs weighed for them, in µs."""
    moments = importlib.import_module("ln_diagnostics.stats.moments")
    collector = importlib.import_module("ln_diagnostics.collect.collector")
    torch.manual_seed(0)
    chunk = moments.CHUNK
    fused, compile_time = _compiled(_fused_sums)
    lines = [
        "# per watched output, µs (fastest of 7, candidates interleaved): power_sums in chunks of",
        f"# 1 Mi elements (before) and of {chunk} (now); one Gram matrix product; 73 outputs",
        "# batched into blocks of rows; one expression compiled by torch.compile (dynamic shapes,",
        f"# first call: {compile_time})",
        f"{'output shape':<18} {'1 Mi chunks':>11} {'now':>8} {'gram':>8} {'batched':>8}"
        f" {'compiled':>8}",
    ]

    def chunked(x: Tensor, scratch: Any, size: int) -> Callable[[], Any]:
        def run() -> Any:
            moments.CHUNK = size
            try:
                return moments.power_sums(x, scratch=scratch)
            finally:
                moments.CHUNK = chunk

        return run

    for shape in KERNEL_SHAPES:
        x = torch.randn(*shape)
        n = x.numel()
        outputs = [x] * 73  # each output hot in the cache, as in the hook that copies it
        work = torch.empty(3, max(n, chunk))
        rows = torch.empty(5, n)
        scratch = moments.Scratch()
        candidates = {
            "before": chunked(x, scratch, 1 << 20),
            "now": chunked(x, scratch, chunk),
            "gram": lambda x=x, rows=rows: _gram_sums(x, rows),
            "batched": lambda o=outputs, w=work: _batched_sums(o, w),
        }
        if fused is not None:
            candidates["compiled"] = lambda x=x: fused(x)
        times = _fastest_us(candidates, reps=max(2, 1_000_000 // n))
        times["batched"] /= len(outputs)
        cells = " ".join(f"{times[k]:>8.1f}" for k in ("now", "gram", "batched"))
        cells += f" {times['compiled']:>8.1f}" if fused is not None else f" {'n/a':>8}"
        lines.append(f"{tuple(shape)!s:<18} {times['before']:>11.1f} {cells}")
    mlp = DeepMLP(1)
    tensors = [p.detach() for p in mlp.parameters()] * 2  # gradients and parameters
    norms = _fastest_us(
        {
            "float64": lambda: torch._foreach_norm(tensors, 2.0, dtype=torch.float64),
            "pieces": lambda: collector._norms(tensors),
        },
        reps=20,
    )
    lines += [
        "",
        f"# norms of the MLP's {len(tensors) // 2} parameters and as many gradients, µs",
        f"foreach_norm in float64 (before) {norms['float64']:>9.1f}",
        f"float32 pieces, float64 sums     {norms['pieces']:>9.1f}",
    ]
    return "\n".join(lines)


def profile(model_name: str, config: str, steps: int, top: int = 30) -> str:
    """cProfile of one fit (``steps`` steps); the top functions by own time and cumulative."""
    import cProfile
    import io
    import pstats

    fit_once(model_name, config, 2)  # imports, first-call set-up
    prof = cProfile.Profile()
    prof.enable()
    fit_once(model_name, config, steps)
    prof.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(prof, stream=buffer)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"ln_diagnostics|overhead\.py", top)
    return buffer.getvalue()


# --------------------------------------------------------------------------------- breakdown
#: (label, owner, attribute) of the parts of ``LayerDiagnostics`` timed by ``--breakdown``;
#: a part's time excludes the time of the parts it calls, so the rows add up.
PHASES: tuple[tuple[str, str, str], ...] = (
    (
        "set-up: hooks, probes, grouping",
        "ln_diagnostics.callbacks.layer_diagnostics",
        "LayerDiagnostics.setup",
    ),
    ("HParams session", "ln_diagnostics.engine.engine", "start_dashboard"),
    ("text summary", "ln_diagnostics.engine.engine", "Engine.write_summary"),
    (
        "activation statistics (forward hooks)",
        "ln_diagnostics.collect.collector",
        "Collector._record_forward",
    ),
    ("histograms (activations, gradients)", "ln_diagnostics.collect.collector", "histogram"),
    (
        "output-gradient norms (backward hooks)",
        "ln_diagnostics.collect.collector",
        "Collector._backward_hook",
    ),
    (
        "gradient and parameter norms, snapshot",
        "ln_diagnostics.collect.collector",
        "Collector.before_optimizer_step",
    ),
    ("pack: update norms, one vector", "ln_diagnostics.collect.collector", "Collector._pack"),
    ("host copy", "ln_diagnostics.collect.collector", "Collector._to_host"),
    ("host side: scalars and tags", "ln_diagnostics.collect.collector", "Collector._unpack"),
    ("shift probe (no-grad forward)", "ln_diagnostics.collect.shift", "ShiftProbe.measure"),
    ("emit: event file", "ln_diagnostics.engine.engine", "write_report"),
    ("dashboard history", "ln_diagnostics.tensorboard.dashboard", "Dashboard.update"),
    ("custom-scalars layout", "ln_diagnostics.tensorboard.dashboard", "Dashboard.write_layout"),
    ("pictures: hand-over", "ln_diagnostics.tensorboard.dashboard", "Dashboard.draw"),
    ("pictures: write, wait for the helper", "ln_diagnostics.tensorboard.painter", "Painter.close"),
    ("diagnosis: record", "ln_diagnostics.engine.diagnosis", "Diagnosis.record"),
    ("diagnosis: findings text", "ln_diagnostics.engine.diagnosis", "Diagnosis.write"),
    ("fit-end report", "ln_diagnostics.engine.engine", "console_report"),
)


#: the phase that runs exactly once per logging step
_LOGGING_PHASE = "host copy"


class _PhaseTimer(pl.Callback):
    """Exclusive wall time of each phase, per global step (-1: before step 0)."""

    def __init__(self) -> None:
        self.step = -1
        self.times: dict[tuple[str, int], float] = defaultdict(float)
        self._stack: list[float] = []  # time spent in children of the running phases

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.step = trainer.global_step

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                children = self._stack.pop()
                self.times[(label, self.step)] += spent - children
                if self._stack:
                    self._stack[-1] += spent

        return timed


@contextlib.contextmanager
def _timed_phases(timer: _PhaseTimer) -> Iterator[None]:
    """Wrap every phase of ``PHASES`` that exists in this version of the package."""
    saved: list[tuple[Any, str, Any]] = []
    for label, module_name, attribute in PHASES:
        owner: Any = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, name):
            continue
        original = vars(owner)[name] if isinstance(owner, type) else getattr(owner, name)
        saved.append((owner, name, original))
        wrapped: Any = timer.wrap(label, getattr(owner, name))
        setattr(
            owner, name, staticmethod(wrapped) if isinstance(original, staticmethod) else wrapped
        )
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def breakdown(model_name: str, config: str, steps: int) -> dict[str, Any]:
    """Where ``config``'s time goes on ``model_name``: each phase at step 0 (with the one-off
    set-up before it) and on an average later logging step, beside a plain fit's median step."""
    fit_once(model_name, "plain", 2)  # imports, first-call set-up
    plain = fit_once(model_name, "plain", steps)
    timer = _PhaseTimer()
    with _timed_phases(timer):
        ours = fit_once(model_name, config, steps, extra=[timer])
    logged = sorted({s for (label, s) in timer.times if label == _LOGGING_PHASE and 0 < s < steps})
    rows = []
    for label, _, _ in PHASES:
        first = 1e3 * (timer.times.get((label, -1), 0.0) + timer.times.get((label, 0), 0.0))
        later = [1e3 * timer.times.get((label, s), 0.0) for s in logged]
        other = 1e3 * sum(
            t
            for (lb, s), t in timer.times.items()
            if lb == label and 0 < s < steps and s not in logged
        )
        rows.append(
            {
                "phase": label,
                "step0_ms": first,
                "logging_step_ms": statistics.fmean(later) if later else 0.0,
                "other_steps_ms": other,
                # the untimed last step and fit end (the last pictures, the diagnosis)
                "fit_end_ms": 1e3
                * sum(t for (lb, s), t in timer.times.items() if lb == label and s >= steps),
                "total_ms": 1e3
                * sum(t for (lb, s), t in timer.times.items() if lb == label and s < steps),
            }
        )
    return {
        "model": model_name,
        "config": config,
        "steps": steps,
        "logging_steps_after_0": logged,
        "plain_median_step_ms": 1e3 * statistics.median(plain.steps),
        "plain_fit_s": plain.fit_s,
        "fit_s": ours.fit_s,
        "step0_ms": 1e3 * ours.steps[0],
        "plain_step0_ms": 1e3 * plain.steps[0],
        "phases": rows,
    }


def format_breakdown(result: dict[str, Any]) -> str:
    logged = result["logging_steps_after_0"]
    lines = [
        f"# {result['model']} / {result['config']}, {result['steps']} steps: plain median step "
        f"{result['plain_median_step_ms']:.2f} ms, step 0 {result['plain_step0_ms']:.1f} ms plain "
        f"vs {result['step0_ms']:.1f} ms; fit {result['plain_fit_s']:.2f} s plain vs "
        f"{result['fit_s']:.2f} s; {len(logged)} logging steps after step 0",
        f"{'phase':<42} {'step 0 ms':>10} {'per logging step ms':>20} {'timed steps ms':>15} "
        f"{'fit end ms':>11}",
    ]
    keys = ("step0_ms", "logging_step_ms", "total_ms", "fit_end_ms")
    total = {k: sum(r[k] for r in result["phases"]) for k in keys}
    for row in [*result["phases"], {"phase": "all of the above", **total}]:
        lines.append(
            f"{row['phase']:<42} {row['step0_ms']:>10.2f} {row['logging_step_ms']:>20.2f} "
            f"{row['total_ms']:>15.1f} {row['fit_end_ms']:>11.1f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- report
def header(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "command": " ".join(["python", "benchmarks/overhead.py", *map(shlex.quote, argv)]),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "accelerator": ACCELERATOR,
        "device": torch.cuda.get_device_name()
        if ACCELERATOR == "gpu"
        else (platform.processor() or platform.machine()),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rounds": args.rounds,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "log_every_n_steps": LOG_EVERY_N_STEPS,
    }


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        f"{'model':<12} {'config':<18} {'ms/step':>8} {'mean':>6} {'IQR of mean':>12} "
        f"{'warm':>6} {'median':>6} {'fit':>6} {'fit s':>6} {'step 0 ms':>9}",
    ]

    def ratio(e: dict[str, Any], measure: str) -> str:
        key = f"{measure}_ratio"
        return f"{e[key]:.3f}" if key in e else "-"

    for model_name, per_config in results.items():
        for config, e in per_config.items():
            spread = (
                f"{e['mean_ratio_q25']:.3f}-{e['mean_ratio_q75']:.3f}" if "mean_ratio" in e else "-"
            )
            lines.append(
                f"{model_name:<12} {config:<18} {e['mean_ms']:>8.2f} {ratio(e, 'mean'):>6} "
                f"{spread:>12} {ratio(e, 'mean_warm'):>6} {ratio(e, 'median'):>6} "
                f"{ratio(e, 'fit'):>6} {e['fit_ms'] / 1e3:>6.2f} {e['step0_ms']:>9.1f}"
            )
    return "\n".join(lines)


def format_memory(model_name: str, memory: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'model':<12} {'config':<16} {'peak RSS MiB':>13} {'ratio':>7} {'fit growth MiB':>15}"
    ]
    for config, e in memory.items():
        ratio = f"{e['ratio']:.3f}" if "ratio" in e else "-"
        lines.append(
            f"{model_name:<12} {config:<16} {e['peak_mib']:>13.1f} {ratio:>7} "
            f"{e['growth_mib']:>15.1f}"
        )
    return "\n".join(lines)


def _names(text: str, valid: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise SystemExit(f"--{what}: unknown {unknown or text!r}; valid: {', '.join(valid)}")
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Step-time and memory overhead of LayerDiagnostics vs alternatives.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per fit, from 0")
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="leading steps left out of the 'warm' mean (every other measure includes them)",
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {MODELS}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {CONFIGS}")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--accelerator",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where the fits train (gpu: the first CUDA device; each step timed to its end)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 1 warm-up + 3 timed steps, no memory"
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="peak RSS per configuration on the first model, one child process each "
        "(default: on, off with --quick)",
    )
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="skip the timing (default --json: benchmarks/results/overhead_memory.json)",
    )
    parser.add_argument("--memory-configs", default=",".join(MEMORY_CONFIGS))
    parser.add_argument("--memory-steps", type=int, default=60)
    parser.add_argument("--memory-repeats", type=int, default=2)
    parser.add_argument(
        "--profile",
        metavar="CONFIG",
        help="instead of the benchmark: cProfile CONFIG on the first model for --steps steps",
    )
    parser.add_argument(
        "--breakdown",
        metavar="CONFIG",
        help="instead of the benchmark: time CONFIG's phases (step 0 and logging steps) on "
        "every --models model for --steps steps",
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="instead of the benchmark: time the per-output statistics and the parameter norms "
        "by the designs weighed for them",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # "model:config", internal
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 3, 1
        if args.memory is None:
            args.memory = False
    if args.accelerator == "gpu":
        if args.memory or args.memory_only:
            parser.error(
                "the memory measure is the CPU run's peak RSS: leave out --accelerator gpu"
            )
        args.memory = False
    if args.memory is None or args.memory_only:
        args.memory = True
    if args.memory_only and args.json == DEFAULT_JSON:
        args.json = DEFAULT_JSON.with_name("overhead_memory.json")
    if args.breakdown and args.json == DEFAULT_JSON:
        args.json = DEFAULT_JSON.with_name("overhead_breakdown.json")
    for name in ("rounds", "steps", "memory_steps", "memory_repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu needs a CUDA GPU, and torch sees none")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write and return the results."""
    global ACCELERATOR
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ACCELERATOR = args.accelerator
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before parallel work started
        torch.set_num_interop_threads(args.threads)
    try:
        with _quiet():
            return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def time_configs(
    models: Sequence[str], configs: Sequence[str], args: argparse.Namespace
) -> dict[str, dict[str, dict[str, Any]]]:
    """Interleaved rounds of every (model, configuration); the summary per model."""
    if not args.quick:  # one untimed fit per model: first-call set-up, allocator warm-up
        for model_name in models:
            fit_once(model_name, "plain", 2)
    started = time.perf_counter()
    configs = list(configs)
    rounds: dict[str, dict[str, list[FitTiming]]] = {m: {c: [] for c in configs} for m in models}
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for model_name in models:
            for config in order:
                rounds[model_name][config].append(fit_once(model_name, config, args.steps))
        print(f"# round {r + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)")
    return {m: summarize(per, args.warmup) for m, per in rounds.items()}


def _run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    if args.memory_child:
        model_name, config = args.memory_child.split(":")
        print(json.dumps(_memory_child(model_name, config, args.memory_steps)))
        return {}

    if args.kernels:
        print(kernels())
        return {}
    models = _names(args.models, MODELS, "models")
    configs = _names(args.configs, CONFIGS, "configs")
    if args.profile:
        _names(args.profile, CONFIGS, "profile")
        print(profile(models[0], args.profile, args.steps))
        return {}

    info = header(args, argv)
    if args.breakdown:
        _names(args.breakdown, CONFIGS, "breakdown")
        print(f"# {info['command']}; load average {info['load_average_start']}")
        parts = [breakdown(m, args.breakdown, args.steps) for m in models]
        print("\n\n".join(format_breakdown(part) for part in parts))
        output = {"environment": info, "breakdown": parts}
        _write(args, output)
        return output
    print(f"# {info['command']}")
    print(
        f"# torch {info['torch']}, pytorch_lightning {info['pytorch_lightning']}, "
        f"python {info['python']}, {info['threads']} thread(s), {info['cpu_count']} CPUs, "
        f"{info['platform']}, on {info['accelerator']} ({info['device']})"
    )
    print(
        f"# {args.rounds} round(s) x {args.steps} timed steps from step 0 ('warm': from step "
        f"{args.warmup}), "
        f"configurations interleaved; load average at start {info['load_average_start']}"
    )

    started = time.perf_counter()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    if not args.memory_only:
        results = time_configs(models, configs, args)
        print()
        print(format_table(results))

    memory = None
    if args.memory:
        memory_configs = _names(args.memory_configs, CONFIGS, "memory-configs")
        memory = measure_memory(
            models[0], memory_configs, args.memory_steps, args.memory_repeats, args.threads
        )
        print()
        print(
            f"# peak RSS, {models[0]}, {args.memory_steps} steps, one fresh process per run, "
            f"median of {args.memory_repeats}"
        )
        print(format_memory(models[0], memory))

    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["wall_s"] = time.perf_counter() - started
    print(f"\n# load average at end {info['load_average_end']}; {info['wall_s']:.0f} s")
    output = {"environment": info, "results": results, "memory": memory}
    if memory is not None:
        output["memory_model"] = models[0]
    _write(args, output)
    return output


def _write(args: argparse.Namespace, output: dict[str, Any]) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2) + "\n")
    print(f"# results written to {args.json}")


if __name__ == "__main__":
    main()
