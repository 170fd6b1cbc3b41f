"""Covariate shift by depth: a deep tanh MLP with and without LayerNorm.

``python examples/shift_depth.py`` trains 8×Linear(64)+Tanh (and the same with LayerNorm after
every Linear) on a synthetic regression task for 100 Adam steps with shift probing every 10 steps,
then prints ``shift/mean_init`` per Linear layer at the last probe, read back from the event files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.tensorboard.reader import read_scalars

STRIDES = {"no_norm": 2, "layernorm": 3}


class TanhMLP(LightningModule):
    def __init__(self, layernorm: bool, depth: int = 8, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(16 if i == 0 else width, width))
            if layernorm:
                layers.append(nn.LayerNorm(width))
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--logdir", type=Path, default=Path("runs/shift_depth"))
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 16, generator=gen)
    y = torch.sin(x[:, :4].sum(1, keepdim=True)) + 0.1 * torch.randn(2048, 1, generator=gen)
    for name, layernorm in (("no_norm", False), ("layernorm", True)):
        seed_everything(0, verbose=False)
        Trainer(
            max_steps=args.steps,
            callbacks=[LayerDiagnostics(every_n_steps=10, shift_every_n_steps=10)],
            logger=TensorBoardLogger(args.logdir, name=name, version=""),
            accelerator="cpu",
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
        ).fit(TanhMLP(layernorm), DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
    runs = read_scalars(args.logdir)
    # Linear layers sit at every 2nd (Linear, Tanh) or 3rd (Linear, LayerNorm, Tanh) position
    linears = {name: [f"net.{i * stride}" for i in range(9)] for name, stride in STRIDES.items()}
    last_step = runs["no_norm"]["health/shift_mean_init"][-1][0]
    print(f"\nshift/mean_init at the last probe (step {last_step})")
    print(f"{'Linear #':<10} {'no_norm':>10} {'layernorm':>10}")
    for i, (plain, normed) in enumerate(zip(linears["no_norm"], linears["layernorm"], strict=True)):
        a = runs["no_norm"][f"shift/mean_init/{plain}"][-1][1]
        b = runs["layernorm"][f"shift/mean_init/{normed}"][-1][1]
        print(f"{i:<10} {a:>10.3f} {b:>10.3f}")
    a, b = (runs[n]["health/shift_mean_init"][-1][1] for n in ("no_norm", "layernorm"))
    print(f"{'health':<10} {a:>10.3f} {b:>10.3f}")


if __name__ == "__main__":
    main()
