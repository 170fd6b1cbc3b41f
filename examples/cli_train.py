"""Train with ``LightningCLI`` and the YAML presets in ``callbacks/``; gate the run in CI.

The model (an MLP on scikit-learn's ``load_digits``) and its data module are built by
``pytorch_lightning.cli.LightningCLI``, so every option is a command-line flag or a YAML key, and
the diagnostics callbacks come from a preset::

    python examples/cli_train.py fit --config callbacks/layer_diagnostics.yaml \\
        --trainer.max_steps 50 --trainer.default_root_dir runs/cli_train
    python examples/cli_train.py fit --config callbacks/layernorm_swap.yaml --model.lr 0.05

Like the other examples it also runs as ``python examples/cli_train.py --steps N --logdir DIR``
(shorthand for ``fit --config callbacks/layer_diagnostics.yaml --trainer.max_steps N
--trainer.logger ... DIR``; ``--lr`` and ``--config`` pass through). After training it prints a
table of ``health/`` scalars read back from the run's event files.

CI gate, two commands (exit code 0 on a healthy run, 1 when a rule fails)::

    python examples/cli_train.py --steps 60 --logdir runs/ci
    ln-diagnostics check runs/ci --thresholds examples/thresholds.toml

The same with ``--lr 50`` (a learning rate that blows the weights up) makes ``check`` exit 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from pytorch_lightning import LightningDataModule, LightningModule
from pytorch_lightning.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.tensorboard.reader import read_scalars

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = {"fit", "validate", "test", "predict"}


class DigitsData(LightningDataModule):
    """scikit-learn's digits (64 standardized features), 1,297 train / 500 validation samples."""

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32)
        y = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        train, val = order[:1297], order[1297:]
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-3)
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=500)


class DigitsMLP(LightningModule):
    """``depth`` × (Linear → BatchNorm1d → ReLU) and a head; SGD with momentum.

    The BatchNorm layers give the ``layernorm_swap.yaml`` preset something to replace.
    """

    def __init__(self, depth: int = 4, width: int = 128, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(64 if i == 0 else width, width), nn.BatchNorm1d(width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def shorthand(argv: list[str]) -> list[str]:
    """Translate ``--steps N --logdir DIR [--lr X] [--config F]`` into LightningCLI arguments."""
    parser = argparse.ArgumentParser(prog="cli_train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--logdir", type=Path, default=Path("runs/cli_train"))
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument(
        "--config", type=Path, default=ROOT / "callbacks" / "layer_diagnostics.yaml"
    )
    args = parser.parse_args(argv)
    return [
        "fit",
        "--config",
        str(args.config),
        "--trainer.max_steps",
        str(args.steps),
        "--trainer.log_every_n_steps",
        "10",
        "--trainer.val_check_interval",
        "1.0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.logger.class_path",
        "pytorch_lightning.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir",
        str(args.logdir),
        "--trainer.logger.init_args.name",
        "",
        "--trainer.logger.init_args.version",
        "",
        "--trainer.logger.init_args.default_hp_metric",
        "false",
        "--model.lr",
        str(args.lr),
        "--seed_everything",
        "0",
    ]


def report(log_dir: str) -> None:
    """``health/`` scalars and the validation accuracy, read back from the event files."""
    tags = read_scalars(log_dir)["."]
    print(f"\nrun: {log_dir}")
    print(f"{'tag':<34} {'first':>11} {'last':>11} {'max':>11}")
    for tag in (
        "train/loss",
        "val/acc",
        "health/grad_norm_total",
        "health/update_ratio_total",
        "health/nonfinite_activations",
        "health/backprop_depth_log10",
    ):
        if tag in tags:
            values = [value for _, value in tags[tag]]
            worst = max(values, key=lambda v: (math.isnan(v), v))  # a NaN counts as the largest
            print(f"{tag:<34} {values[0]:>11.4g} {values[-1]:>11.4g} {worst:>11.4g}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help", "--print_config"):
        argv = shorthand(argv)
    torch.set_num_threads(1)  # small tensors: one thread is fastest and immune to contention
    cli = LightningCLI(DigitsMLP, DigitsData, args=argv, save_config_kwargs={"overwrite": True})
    logger = cli.trainer.logger
    if logger is not None and logger.log_dir is not None and Path(logger.log_dir).is_dir():
        report(logger.log_dir)


if __name__ == "__main__":
    main()
