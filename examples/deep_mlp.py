"""A 50-layer MLP on handwritten digits: no normalization, BatchNorm, LayerNorm.

``python examples/deep_mlp.py`` trains the same very deep tanh MLP (50 × Linear(64) + a head) on
scikit-learn's ``load_digits`` (1,797 8×8 images shipped with the package; 1,297 for training,
500 held out) three times, with plain SGD (momentum 0.9, lr 0.01, gradient norm clipped at 1.0,
the same for every run): without normalization, with BatchNorm1d and with LayerNorm after every
hidden Linear. ``LayerDiagnostics`` logs every layer to TensorBoard under ``--logdir``; the table
is read back from the event files:

* test accuracy (eval mode) after training;
* the backprop-norm ratio first/last layer, ‖∂L/∂y‖ at the first Linear over the same at the
  head, at step 0 and at the last logging step (1 = flat, 1e-10 = the input end gets nothing);
* ``activations/std`` of the last hidden activation at step 0 and at the end.

Without normalization the gradient reaching the first layer is ~10 orders of magnitude smaller
than at the head and the net does not learn; both normalizations keep the gradient flowing.
SGD is used on purpose: Adam rescales every parameter's step and hides vanishing gradients.
``--activation relu`` runs the same comparison with ReLU. Options: ``--steps``, ``--logdir``,
``--depth``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Literal

import torch
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.tensorboard.reader import read_scalars

Norm = Literal["none", "batchnorm", "layernorm"]
RUNS: dict[str, Norm] = {"no_norm": "none", "batchnorm": "batchnorm", "layernorm": "layernorm"}


def digits(n_train: int = 1297, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits as standardized 64-feature vectors: (train, test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-3  # some border pixels are always 0
    x = (x - mean) / std
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


class DeepMLP(LightningModule):
    """``depth`` × (Linear → optional norm → activation), then a Linear head with 10 outputs."""

    def __init__(
        self,
        norm: Norm = "none",
        depth: int = 50,
        width: int = 64,
        activation: Literal["tanh", "relu"] = "tanh",
        lr: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(64 if i == 0 else width, width))
            if norm == "batchnorm":
                layers.append(nn.BatchNorm1d(width))
            elif norm == "layernorm":
                layers.append(nn.LayerNorm(width))
            layers.append(nn.Tanh() if activation == "tanh" else nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def train(name: str, norm: Norm, args: argparse.Namespace) -> None:
    """Fit one model, then log its test accuracy as ``test/acc`` into the same run."""
    seed_everything(0, verbose=False)
    train_set, test_set = digits()
    logger = TensorBoardLogger(args.logdir, name=name, version="", default_hp_metric=False)
    trainer = Trainer(
        max_steps=args.steps,
        callbacks=[
            LayerDiagnostics(
                every_n_steps=20, histogram_every_n_steps=args.steps, shift_every_n_steps=0
            )
        ],
        logger=logger,
        log_every_n_steps=20,
        gradient_clip_val=1.0,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    model = DeepMLP(norm=norm, depth=args.depth, activation=args.activation)
    start = time.perf_counter()
    trainer.fit(model, DataLoader(train_set, batch_size=64, shuffle=True, drop_last=True))
    model.eval()
    with torch.no_grad():
        x, y = test_set.tensors
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    logger.log_metrics({"test/acc": accuracy}, step=trainer.global_step)
    logger.experiment.flush()
    print(f"{name}: {trainer.global_step} steps in {time.perf_counter() - start:.0f} s")


def report(logdir: Path, depth: int) -> None:
    """The results table, read back from the event files the runs wrote."""
    runs = read_scalars(logdir)
    last_hidden = f"net.{len(DeepMLP(norm='none', depth=depth).net) - 1}"
    header = (
        f"{'run':<10} {'test_acc':>8} {'loss first->last':>17} {'bp first/last @0':>17} "
        f"{'bp first/last end':>18} {'act std @0':>11} {'act std end':>12}"
    )
    print("\n" + header)
    for name in RUNS:
        tags = runs[name]
        # the hidden-layer index of the last activation depends on the norm layers
        layers = [t.rsplit("/", 1)[1] for t in tags if t.startswith("activations/std/net.")]
        act = f"activations/std/{layers[-1]}"
        first_bp, head_bp = tags["backprop/norm/net.0"], tags["backprop/norm/head"]
        ratio_0 = first_bp[0][1] / head_bp[0][1]
        ratio_end = first_bp[-1][1] / head_bp[-1][1]
        loss = tags.get("train/loss", [(0, math.nan)])  # absent when a run is very short
        print(
            f"{name:<10} {tags['test/acc'][-1][1]:>8.3f} {loss[0][1]:>7.3f} -> {loss[-1][1]:<6.3f} "
            f"{ratio_0:>17.2e} {ratio_end:>18.2e} {tags[act][0][1]:>11.3f} "
            f"{tags[act][-1][1]:>12.3f}"
        )
    print(
        "bp first/last = backprop/norm at net.0 / at the head (gradient w.r.t. the layer output);"
        f" act std = activations/std of the last hidden activation ({last_hidden} without norm)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per run")
    parser.add_argument("--logdir", type=Path, default=Path("runs/deep_mlp"), help="log directory")
    parser.add_argument("--depth", type=int, default=50, help="hidden layers")
    parser.add_argument("--activation", choices=["tanh", "relu"], default="tanh")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrices: one thread is fastest and immune to contention
    for name, norm in RUNS.items():
        train(name, norm, args)
    report(args.logdir, args.depth)
    print(f"\nTensorBoard logs: {args.logdir.resolve()}  (IMAGES > heatmaps/backprop_log10_norm)")


if __name__ == "__main__":
    main()
