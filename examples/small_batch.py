"""BatchNorm at batch size 1 and 2 versus the same CNN after ``NormSwap(target="layernorm")``.

``python examples/small_batch.py`` trains a small BatchNorm CNN (two Conv2d+BatchNorm2d+ReLU
blocks, max-pool, Linear+BatchNorm1d+ReLU, Linear head) on scikit-learn's ``load_digits`` as
1×8×8 images (1,297 for training, 500 held out), with SGD (lr 0.01, momentum 0.9), for the same
number of optimizer steps at batch size 32 (reference), 2 and 1 — each once as built and once with
the ``NormSwap(target="layernorm")`` callback, which replaces every BatchNorm with a per-sample
``ChannelLayerNorm`` before the optimizer is built. Test accuracy is measured in eval mode, where
BatchNorm uses its running statistics instead of the batch's.

What to expect: at batch size 1 BatchNorm1d cannot train at all ("Expected more than 1 value per
channel when training"); at batch size 2 it trains on two-sample statistics and evaluates with
running averages, and the accuracy drops; the LayerNorm version computes the same function in
train and eval mode and trains at every batch size. ``LayerDiagnostics`` logs every run under
``--logdir``; ``test/acc`` is written into each run and the table is read back from the event
files. Options: ``--steps`` (per run), ``--logdir``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from pytorch_lightning import Callback, LightningModule, Trainer, seed_everything
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics, NormSwap
from ln_diagnostics.tensorboard.reader import read_scalars

# (run name, batch size, swap BatchNorm for LayerNorm)
RUNS: list[tuple[str, int, bool]] = [
    ("bs32_batchnorm", 32, False),
    ("bs2_batchnorm", 2, False),
    ("bs2_layernorm", 2, True),
    ("bs1_batchnorm", 1, False),
    ("bs1_layernorm", 1, True),
]


def digit_images(n_train: int = 1297, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits as standardized 1×8×8 images: (train, test)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    x = (x - x[train].mean()) / x[train].std()
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


class DigitCNN(LightningModule):
    """Conv-BN-ReLU ×2, max-pool, Linear-BN-ReLU, Linear: a textbook BatchNorm CNN."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def train(name: str, batch_size: int, layernorm: bool, args: argparse.Namespace) -> str | None:
    """Fit one configuration and log ``test/acc`` into its run; return the error if it failed."""
    seed_everything(0, verbose=False)
    train_set, test_set = digit_images()
    logger = TensorBoardLogger(args.logdir, name=name, version="", default_hp_metric=False)
    callbacks: list[Callback] = [NormSwap(target="layernorm")] if layernorm else []
    callbacks.append(LayerDiagnostics(every_n_steps=50, shift_every_n_steps=0))
    trainer = Trainer(
        max_steps=args.steps,
        callbacks=callbacks,
        logger=logger,
        log_every_n_steps=50,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    model = DigitCNN()
    start = time.perf_counter()
    try:
        # drop_last: 1,297 is odd, and a last batch of one sample would crash BatchNorm1d at
        # batch size 2 as well
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
        trainer.fit(model, loader)
    except ValueError as error:  # BatchNorm1d in training mode with one sample per channel
        print(f"{name}: failed after {trainer.global_step} steps: {error}")
        return str(error)
    model.eval()
    with torch.no_grad():
        x, y = test_set.tensors
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    logger.log_metrics({"test/acc": accuracy}, step=trainer.global_step)
    logger.experiment.flush()
    print(f"{name}: {trainer.global_step} steps in {time.perf_counter() - start:.0f} s")
    return None


def report(logdir: Path, errors: dict[str, str | None]) -> None:
    """The results table: test accuracy read back from the event files, or the error."""
    runs = read_scalars(logdir)
    print(
        f"\n{'run':<15} {'batch':>5} {'norm':<10} {'train loss (last)':>17}  test acc (eval mode)"
    )
    for name, batch_size, layernorm in RUNS:
        norm = "layernorm" if layernorm else "batchnorm"
        error = errors[name]
        if error is not None:
            print(f"{name:<15} {batch_size:>5} {norm:<10} {'-':>17}  error: {error}")
            continue
        tags = runs[name]
        loss = tags.get("train/loss", [(0, math.nan)])[-1][1]  # absent when a run is very short
        print(f"{name:<15} {batch_size:>5} {norm:<10} {loss:>17.3f}  {tags['test/acc'][-1][1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per run")
    parser.add_argument("--logdir", type=Path, default=Path("runs/small_batch"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: one thread is fastest and immune to contention
    errors = {name: train(name, bs, layernorm, args) for name, bs, layernorm in RUNS}
    report(args.logdir, errors)
    print(f"\nTensorBoard logs: {args.logdir.resolve()}")


if __name__ == "__main__":
    main()
