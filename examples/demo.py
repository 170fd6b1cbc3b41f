"""Demo: train a deep tanh MLP with LayerDiagnostics and show where to look in TensorBoard.

Run with ``make demo`` (or ``python examples/demo.py``). A 16-layer MLP learns a synthetic
classification task for about a minute on CPU, once without normalization and once with
LayerNorm after every hidden layer; both runs write TensorBoard logs under ``--logdir``. The
script reads the event files back and prints, per run, the loss, the accuracy and how the
gradient reaching the hidden stack (``backprop/norm``) falls from its last layer to its first,
then the command that opens the dashboards.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.diagnose.depth import hidden_stack
from ln_diagnostics.tensorboard.reader import read_scalars


class DeepMLP(LightningModule):
    """``depth`` hidden layers of Linear(+LayerNorm)+Tanh on 2-d inputs, 4 classes."""

    def __init__(self, depth: int = 16, width: int = 64, layernorm: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()  # the HParams tab compares the runs by `layernorm`
        layers: list[nn.Module] = [nn.Linear(2, width), nn.Tanh()]
        for _ in range(depth - 1):
            layers.append(nn.Linear(width, width))
            if layernorm:
                layers.append(nn.LayerNorm(width))
            layers.append(nn.Tanh())
        layers.append(nn.Linear(width, 4))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def spirals(n: int = 4096, seed: int = 0) -> TensorDataset:
    """Four interleaved spirals: easy to see, hard for a linear model."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (n,), generator=gen)
    radius = torch.rand(n, generator=gen) * 3 + 0.2
    angle = radius * 1.6 + label * (torch.pi / 2) + 0.15 * torch.randn(n, generator=gen)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return TensorDataset(x, label)


def train(name: str, layernorm: bool, args: argparse.Namespace) -> tuple[float, list[str]]:
    """Fit one model; return its accuracy on the training set and its hidden stack's layers."""
    seed_everything(0, verbose=False)
    trainer = Trainer(
        max_steps=args.steps,
        callbacks=[LayerDiagnostics(every_n_steps=10, histogram_every_n_steps=100)],
        logger=TensorBoardLogger(args.logdir, name=name, version=""),
        log_every_n_steps=10,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    data = spirals()
    model = DeepMLP(layernorm=layernorm)
    start = time.perf_counter()
    trainer.fit(model, DataLoader(data, batch_size=64, shuffle=True))
    print(f"{name}: {args.steps} steps in {time.perf_counter() - start:.0f} s")
    layers = [(f"net.{k}", next(m.parameters(), None) is not None) for k, m in enumerate(model.net)]
    stack = [layers[k][0] for k in hidden_stack(layers)]
    with torch.no_grad():
        x, y = data.tensors
        return (model(x).argmax(1) == y).float().mean().item(), stack


def first(series: list[tuple[int, float]]) -> float:
    return series[0][1]


def last(series: list[tuple[int, float]]) -> float:
    return series[-1][1]


def report(logdir: Path, results: dict[str, tuple[float, list[str]]]) -> None:
    """A table read back from the event files the runs wrote."""
    runs = read_scalars(logdir)
    print(
        f"\n{'run':<10} {'loss first->last':>18} {'accuracy':>9} "
        f"{'depth_log10 step 0':>19} {'depth_log10 last':>17} {'first/last backprop, step 0':>28}"
    )
    for name, (acc, stack) in results.items():
        tags = runs[name]
        # the hidden stack's ends, read from the per-layer tags: the health value, checked
        ratio = first(tags[f"backprop/norm/{stack[0]}"]) / first(tags[f"backprop/norm/{stack[-1]}"])
        depth = tags["health/backprop_depth_log10"]
        loss = tags["train/loss"]
        print(
            f"{name:<10} {first(loss):>8.3f} -> {last(loss):<7.3f} {acc:>9.3f} "
            f"{first(depth):>19.2f} {last(depth):>17.2f} {ratio:>28.2e}"
        )
    print(
        "depth_log10 = log10(backprop norm at the first / at the last layer of the hidden stack, "
        "the layers between the input projection and the head): 0 is flat, negative means the "
        "gradient vanishes toward the input."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per run")
    parser.add_argument("--logdir", type=Path, default=Path("runs/demo"), help="log directory")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: a second thread only contends for the cores
    runs = {"no_norm": False, "layernorm": True}
    results = {name: train(name, layernorm, args) for name, layernorm in runs.items()}
    report(args.logdir, results)
    logdir = args.logdir.resolve()
    print(f"\nTensorBoard logs: {logdir}")
    print(f"Open them with:   tensorboard --logdir {logdir}   then browse http://localhost:6006")
    print("Look at: CUSTOM SCALARS > Health and Depth (log10), both runs in each chart;")
    print("         IMAGES > heatmaps (same colour scale in both runs); TEXT; HPARAMS.")
    print(f"Without a browser: ln-diagnostics summary {logdir / 'no_norm'}")


if __name__ == "__main__":
    main()
