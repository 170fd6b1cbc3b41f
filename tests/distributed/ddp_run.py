"""2-process DDP runs (gloo on CPU) launched by test_ddp.py; not collected by pytest.

Usage: python ddp_run.py OUT_DIR. The two processes are started once and run several fits, one
per entry of ``RUNS``, each into ``OUT_DIR/<run>/``: ``LayerDiagnostics()`` with its defaults
first, then the options under test. Each rank trains on its own data (rank r's samples are
shifted by 3r) and saves its step-0 batch to ``OUT_DIR/<run>/batch{r}.pt``; rank 0 saves the
initial weights to ``OUT_DIR/<run>/init.pt`` and each rank the float64 total norm of its
(averaged) gradients at every step to ``OUT_DIR/<run>/norms{r}.pt``. Only rank 1 runs
``only_rank1``, so that a module that ran on one rank and not the other is exercised. Warnings of
ours are counted per rank.
"""

import os
import sys
import warnings
from pathlib import Path

import torch
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.collect import packing

LR = 0.1  # large enough that θ_t − θ_{t+1} keeps its digits in float32
#: run name -> (LayerDiagnostics options, max_steps)
RUNS = {
    "default": ({}, 2),
    # histograms at steps 0 and 10, the shift probe every step (by default they would run at
    # step 0 only in 11 steps: every 500 and 100 steps)
    "every_step": (
        {"every_n_steps": 1, "histogram_every_n_steps": 10, "shift_every_n_steps": 1},
        11,
    ),
    "grouped": ({"group_depth": 1}, 1),
    # logs at steps 0 and 5: the window sentinels of steps 1..5, against norms{rank}.pt
    "window": ({"every_n_steps": 5}, 6),
    "mismatched": ({}, 1),  # rank 1 watches fewer modules: an error at setup, not a hang
}


class RankData(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        gen = torch.Generator().manual_seed(index)
        return torch.randn(6, generator=gen)


class Net(LightningModule):
    def __init__(self, out: Path | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
        self.only_rank1 = nn.ReLU()
        self.out = out
        self.norms: list[float] = []  # total gradient norm of every step, from float64 norms

    def forward(self, x):
        return self.net(x)

    def loss(self, x, rank):
        """This rank's loss on its batch ``x`` (the reference in test_ddp.py calls it too)."""
        h = self.net[1](self.net[0](x))
        if rank == 1:
            h = self.only_rank1(h)
        return self.net[2](h).pow(2).mean()

    def training_step(self, batch, batch_idx):
        x = batch + 3.0 * self.global_rank
        if self.global_step == 0 and self.out is not None:
            torch.save(x, self.out / f"batch{self.global_rank}.pt")
            self.out = None
        return self.loss(x, self.global_rank)

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad.double().norm() for p in self.parameters() if p.grad is not None]
        self.norms.append(torch.stack(grads).norm().item())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)

    def train_dataloader(self):
        return DataLoader(RankData(), batch_size=8, shuffle=False)


class CountingGather:
    """Counts the collectives the plugin issues (one per logging step is the contract)."""

    def __init__(self, gather):
        self.gather = gather
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.gather(*args, **kwargs)


def fit(out: Path, options: dict, max_steps: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counter = CountingGather(packing.dist.all_gather)
    packing.dist.all_gather = counter
    seed_everything(0)
    model = Net(out)
    if out.name == "mismatched" and os.environ.get("LOCAL_RANK") == "1":
        options = {"include": "net.*"}
    trainer = Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_steps=max_steps,
        logger=TensorBoardLogger(out, name="tb", version=""),
        callbacks=[LayerDiagnostics(**options)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if trainer.global_rank == 0:
        torch.save(model.state_dict(), out / "init.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(model)
        except ValueError as exc:
            (out / f"error{trainer.global_rank}.txt").write_text(str(exc))
    ours = [m for m in map(str, (w.message for w in caught)) if "iagnostics" in m]
    rank = trainer.global_rank
    torch.save(model.norms, out / f"norms{rank}.pt")
    (out / f"warnings{rank}.txt").write_text("\n".join(ours))
    (out / f"collectives{rank}.txt").write_text(str(counter.calls))
    packing.dist.all_gather = counter.gather


if __name__ == "__main__":
    for name, (options, max_steps) in RUNS.items():
        fit(Path(sys.argv[1]) / name, options, max_steps)
