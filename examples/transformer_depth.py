"""Post-LN versus Pre-LN transformers: gradient norm by layer index at initialization.

``python examples/transformer_depth.py`` builds ``nn.TransformerEncoder`` stacks (d_model 64,
4 heads, feed-forward 128, no dropout) with ``norm_first=False`` (Post-LN, the original
Transformer) and ``norm_first=True`` (Pre-LN, with a final LayerNorm) at 6 and 24 layers, and
trains each for ``--steps`` Adam steps on a synthetic task (reverse a sequence of 16 tokens).
Weights are initialized as ``nn.Transformer`` does (Xavier-uniform on every matrix of the
encoder; ``--init default`` keeps the layers' own initialization). ``LayerDiagnostics`` watches
the second feed-forward Linear of every layer (``encoder.layers.<i>.linear2``), the embedding and
the head.

The table, read back from the event files, gives at step 0 the parameter gradient norm
(``gradients/norm``) of the first, middle and last encoder layer's ``linear2`` and the ratio
last/first, and the same ratio for ``backprop/norm`` (gradient with respect to the layer's output).
Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture": at initialization
Post-LN gradients grow toward the output layer, Pre-LN gradients stay flat across depth. The same
picture is the TensorBoard image ``heatmaps/backprop_log10_norm`` (layers top to bottom in forward
order, logging steps left to right), drawn at step 0 and every ``histogram_every_n_steps``.
Options: ``--steps``, ``--logdir``, ``--depths``, ``--init``, ``--heatmap-every``.
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

VOCAB, LENGTH = 32, 16


class Encoder(LightningModule):
    """Token embedding + learned positions, an ``nn.TransformerEncoder``, a per-token head."""

    def __init__(
        self,
        num_layers: int,
        norm_first: bool,
        d_model: int = 64,
        init: Literal["xavier", "default"] = "xavier",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.position = nn.Parameter(torch.randn(LENGTH, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            nhead=4,
            dim_feedforward=2 * d_model,
            dropout=0.0,
            batch_first=True,
            norm_first=norm_first,
        )
        self.encoder = nn.TransformerEncoder(
            layer,
            num_layers=num_layers,
            norm=nn.LayerNorm(d_model) if norm_first else None,  # Pre-LN needs a final norm
            enable_nested_tensor=False,
        )
        self.head = nn.Linear(d_model, VOCAB)
        if init == "xavier":  # what nn.Transformer does to its encoder and decoder
            for param in self.encoder.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        tokens, target = batch
        loss = nn.functional.cross_entropy(self(tokens).flatten(0, 1), target.flatten())
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-4)


def reversal(n: int = 4096, seed: int = 0) -> TensorDataset:
    """Random token sequences; the target is the sequence reversed."""
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    return TensorDataset(tokens, tokens.flip(1))


def train(name: str, num_layers: int, norm_first: bool, args: argparse.Namespace) -> None:
    seed_everything(0, verbose=False)
    diagnostics = LayerDiagnostics(
        every_n_steps=10,
        histogram_every_n_steps=args.heatmap_every,  # also the heat map refresh; step 0 always
        shift_every_n_steps=0,
        include=["embed", "encoder.layers.*.linear2", "head"],
    )
    trainer = Trainer(
        max_steps=args.steps,
        callbacks=[diagnostics],
        logger=TensorBoardLogger(args.logdir, name=name, version="", default_hp_metric=False),
        log_every_n_steps=10,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    trainer.fit(
        Encoder(num_layers, norm_first, init=args.init), DataLoader(reversal(), batch_size=32)
    )
    print(f"{name}: {trainer.global_step} steps in {time.perf_counter() - start:.0f} s")


def run_name(num_layers: int, norm_first: bool) -> str:
    return f"{'pre' if norm_first else 'post'}_ln_{num_layers}"


def report(logdir: Path, depths: list[int]) -> None:
    """Step-0 gradient norms of the first, middle and last layer, read back from the event files."""
    runs = read_scalars(logdir)
    print(
        f"\n{'run':<11} {'layers':>6} {'grad first':>10} {'grad middle':>11} {'grad last':>10} "
        f"{'grad last/first':>15} {'backprop last/first':>19} {'loss first->last':>17}"
    )
    for num_layers in depths:
        for norm_first in (False, True):
            name = run_name(num_layers, norm_first)
            tags = runs[name]
            index = (0, num_layers // 2, num_layers - 1)
            grad = [tags[f"gradients/norm/encoder.layers.{i}.linear2"][0][1] for i in index]
            bp = [tags[f"backprop/norm/encoder.layers.{i}.linear2"][0][1] for i in index]
            loss = tags.get("train/loss", [(0, math.nan)])  # absent when a run is very short
            print(
                f"{name:<11} {num_layers:>6} {grad[0]:>10.2e} {grad[1]:>11.2e} {grad[2]:>10.2e} "
                f"{grad[2] / grad[0]:>15.2f} {bp[2] / bp[0]:>19.2f} "
                f"{loss[0][1]:>7.3f} -> {loss[-1][1]:<6.3f}"
            )
    print(
        "grad = gradients/norm of encoder.layers.<i>.linear2 at step 0 (first, middle, last "
        "layer); backprop = backprop/norm, the gradient w.r.t. that Linear's output."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--logdir", type=Path, default=Path("runs/transformer_depth"))
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 24], help="encoder layers")
    parser.add_argument(
        "--heatmap-every", type=int, default=50, help="heat map and histogram interval (steps)"
    )
    parser.add_argument(
        "--init",
        choices=["xavier", "default"],
        default="xavier",
        help="xavier: nn.Transformer's initialization; default: the layers' own",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: one thread is fastest and immune to contention
    for num_layers in args.depths:
        for norm_first in (False, True):
            train(run_name(num_layers, norm_first), num_layers, norm_first, args)
    report(args.logdir, args.depths)
    print(
        f"\nTensorBoard logs: {args.logdir.resolve()}\n"
        "IMAGES > heatmaps/backprop_log10_norm: one row per layer (input at the top)."
    )


if __name__ == "__main__":
    main()
