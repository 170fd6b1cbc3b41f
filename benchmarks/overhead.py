"""Overhead of ``LayerDiagnostics`` next to the common alternatives, in one process.

Every configuration trains the same model with ``Trainer.fit`` on the CPU (one thread by default,
synthetic in-memory batches, a ``TensorBoardLogger`` in a temporary directory for every run so the
plain run pays the same logger cost, ``log_every_n_steps=50``) and is timed step by step.

Models:
    mlp          24 x (Linear(256) + LayerNorm + GELU), batch 128, 10-class cross-entropy.
    cnn          6 x (Conv3x3 + BatchNorm + ReLU) with two max-pools and one stride-2 conv,
                 32x32x3 inputs, batch 32, 10 classes.
    transformer  ``pytorch_lightning.demos.LightningTransformer`` (vocabulary of 1,000 tokens),
                 synthetic token batches of shape (8, 32).

Configurations:
    plain            no diagnostics.
    grad_norm        Lightning's documented recipe, ``log_dict(grad_norm(module, norm_type=2))``
                     in ``on_before_optimizer_step``, every step.
    hooks_item       a hand-written forward hook on every leaf module that reads mean/std/max
                     with ``.item()`` and calls ``logger.log_metrics`` every step.
    ours_default     ``LayerDiagnostics()``: scalars and the covariate-shift probe every
                     ``log_every_n_steps`` = 50 steps, histograms every 500.
    ours_no_shift    ``ours_default`` with ``shift_every_n_steps=0``: what the shift probe costs.
    ours_ics         ``ours_default`` with ``ics_every_n_steps=50``: what the opt-in ICS probe
                     costs (one extra forward/backward per measured layer, 4 layers).
    ours_every_step  ``LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0)``: activation
                     and gradient statistics on every step (shift probe off).
    ours_act_grad    ``ours_every_step`` with ``track_updates=False``: activations and gradients
                     only, without the parameter snapshot behind ``updates/ratio``.
    ours_shift_hist  ``LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=10,
                     shift_every_n_steps=10)``: scalars every step, histograms and the shift
                     probe every 10 steps.

Measurement: configurations run interleaved round by round (A B C, B C A, ...) so that drift of a
shared machine hits all of them alike. Each fit runs ``--warmup`` untimed steps, then ``--steps``
timed steps; a step is the wall time from one ``on_train_batch_start`` to the next, so it holds
everything Lightning and every callback do for that step, including the logging steps' host copy
and event-file writes. A round's number for a configuration is its MEAN step time (rare logging
steps are amortised, not hidden by a median); the table shows the median over rounds, the ratio
to ``plain`` (median of the per-round ratios, both measured in the same round) and the spread of
those ratios (25th-75th percentile). With ``--steps 100`` and ``--warmup 5`` the timed window
holds exactly two of ``ours_default``'s logging steps (50, 100); its histograms (every 500 steps)
fall outside the window unless ``--steps`` is at least 500.

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
    python benchmarks/overhead.py --profile ours_every_step --models mlp   # cProfile breakdown

Results go to ``benchmarks/results/overhead.json`` (``--json`` to change). Numbers depend on the
machine and its load: compare ratios, not milliseconds, and rerun on a quiet machine before
quoting them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.demos import LightningTransformer
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import grad_norm
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ln_diagnostics.callbacks import LayerDiagnostics

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "overhead.json"
MODELS = ("mlp", "cnn", "transformer")
CONFIGS = (
    "plain",
    "grad_norm",
    "hooks_item",
    "ours_default",
    "ours_no_shift",
    "ours_ics",
    "ours_every_step",
    "ours_act_grad",
    "ours_shift_hist",
)
MEMORY_CONFIGS = ("plain", "ours_default", "ours_every_step")
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


MODEL_FACTORIES: dict[str, Callable[[int], pl.LightningModule]] = {
    "mlp": DeepMLP,
    "cnn": SmallCNN,
    "transformer": SyntheticTransformer,
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
    if config == "ours_every_step":
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
    """Wall time from one ``on_train_batch_start`` to the next, for global steps
    ``warmup .. warmup + steps``; it sees everything in between, whatever the callback order."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.first, self.last = warmup, warmup + steps
        self.stamps: list[float] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first <= trainer.global_step <= self.last:
            self.stamps.append(time.perf_counter())

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


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


def fit_once(model_name: str, config: str, warmup: int, steps: int) -> list[float]:
    """Train a fresh ``model_name`` under ``config``; return the timed steps' durations (s)."""
    total = warmup + steps + 1  # the last step's start closes the last timed interval
    torch.manual_seed(0)
    model = MODEL_FACTORIES[model_name](total)
    timer = StepTimer(warmup, steps)
    with tempfile.TemporaryDirectory(prefix="ln-diag-bench-") as logdir:
        trainer = pl.Trainer(
            max_steps=total,
            max_epochs=-1,
            logger=TensorBoardLogger(logdir, name="run"),
            callbacks=[timer, *config_callbacks(config)],
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            log_every_n_steps=LOG_EVERY_N_STEPS,
            num_sanity_val_steps=0,
        )
        trainer.fit(model)
    times = timer.step_times()
    if len(times) != steps:
        raise RuntimeError(f"{model_name}/{config}: timed {len(times)} steps, expected {steps}")
    return times


# ------------------------------------------------------------------------------------- stats
def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(rounds: dict[str, list[list[float]]]) -> dict[str, dict[str, Any]]:
    """Per configuration: per-round mean/median step times (ms) and ratios to ``plain``."""
    means = {c: [1e3 * statistics.fmean(r) for r in rs] for c, rs in rounds.items()}
    medians = {c: [1e3 * statistics.median(r) for r in rs] for c, rs in rounds.items()}
    out: dict[str, dict[str, Any]] = {}
    for config in rounds:
        entry: dict[str, Any] = {
            "ms_per_step": statistics.median(means[config]),
            "ms_per_step_rounds": means[config],
            "median_step_ms": statistics.median(medians[config]),
            "median_step_ms_rounds": medians[config],
        }
        if "plain" in means:
            ratios = [c / p for c, p in zip(means[config], means["plain"], strict=True)]
            entry.update(
                ratio=statistics.median(ratios),
                ratio_rounds=ratios,
                ratio_q25=_quantile(ratios, 0.25),
                ratio_q75=_quantile(ratios, 0.75),
            )
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
    fit_once(model_name, config, warmup=0, steps=steps)
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
def profile(model_name: str, config: str, steps: int, top: int = 30) -> str:
    """cProfile of one fit (``steps`` steps); the top functions by own time and cumulative."""
    import cProfile
    import io
    import pstats

    fit_once(model_name, config, warmup=0, steps=2)  # imports, first-call set-up
    prof = cProfile.Profile()
    prof.enable()
    fit_once(model_name, config, warmup=0, steps=steps)
    prof.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(prof, stream=buffer)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"ln_diagnostics|overhead\.py", top)
    return buffer.getvalue()


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
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "rounds": args.rounds,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "log_every_n_steps": LOG_EVERY_N_STEPS,
    }


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        f"{'model':<12} {'config':<16} {'ms/step':>9} {'median':>8} {'ratio':>7} "
        f"{'IQR of ratio':>15}",
    ]
    for model_name, per_config in results.items():
        for config, e in per_config.items():
            ratio = f"{e['ratio']:.3f}" if "ratio" in e else "-"
            spread = f"{e['ratio_q25']:.3f}-{e['ratio_q75']:.3f}" if "ratio" in e else "-"
            lines.append(
                f"{model_name:<12} {config:<16} {e['ms_per_step']:>9.2f} "
                f"{e['median_step_ms']:>8.2f} {ratio:>7} {spread:>15}"
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
    parser.add_argument("--steps", type=int, default=100, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {MODELS}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {CONFIGS}")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
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
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # "model:config", internal
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 3, 1
        if args.memory is None:
            args.memory = False
    if args.memory is None or args.memory_only:
        args.memory = True
    if args.memory_only and args.json == DEFAULT_JSON:
        args.json = DEFAULT_JSON.with_name("overhead_memory.json")
    for name in ("rounds", "steps", "memory_steps", "memory_repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write and return the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
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
            fit_once(model_name, "plain", warmup=0, steps=2)
    started = time.perf_counter()
    configs = list(configs)
    rounds: dict[str, dict[str, list[list[float]]]] = {m: {c: [] for c in configs} for m in models}
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for model_name in models:
            for config in order:
                rounds[model_name][config].append(
                    fit_once(model_name, config, args.warmup, args.steps)
                )
        print(f"# round {r + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)")
    return {m: summarize(per) for m, per in rounds.items()}


def _run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    if args.memory_child:
        model_name, config = args.memory_child.split(":")
        print(json.dumps(_memory_child(model_name, config, args.memory_steps)))
        return {}

    models = _names(args.models, MODELS, "models")
    configs = _names(args.configs, CONFIGS, "configs")
    if args.profile:
        _names(args.profile, CONFIGS, "profile")
        print(profile(models[0], args.profile, args.steps))
        return {}

    info = header(args, argv)
    print(f"# {info['command']}")
    print(
        f"# torch {info['torch']}, pytorch_lightning {info['pytorch_lightning']}, "
        f"python {info['python']}, {info['threads']} thread(s), {info['cpu_count']} CPUs, "
        f"{info['platform']}"
    )
    print(
        f"# {args.rounds} round(s) x ({args.warmup} warm-up + {args.steps} timed steps), "
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2) + "\n")
    print(f"# results written to {args.json}")
    return output


if __name__ == "__main__":
    main()
