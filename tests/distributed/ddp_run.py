"""A 2-process DDP run (gloo on CPU) launched by test_ddp.py; not collected by pytest.

Usage: python ddp_run.py OUT_DIR. Each rank trains on its own deterministic data, saves the output
of ``net.1`` at step 0 to ``OUT_DIR/rank{r}.pt``, and only rank 1 runs ``only_rank1`` so that a
module that ran on one rank and not the other is exercised.
"""

import sys
from pathlib import Path

import torch
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.collect import packing

OUT = Path()  # set from the command line below; each DDP rank runs this file with the same argv


class RankData(Dataset):
    """Different values on each rank: rank r's samples are shifted by 3r."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        gen = torch.Generator().manual_seed(index)
        return torch.randn(6, generator=gen)


class Net(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
        self.only_rank1 = nn.ReLU()
        self.captured = None

    def training_step(self, batch, batch_idx):
        x = batch + 3.0 * self.global_rank
        h = self.net[1](self.net[0](x))
        if self.global_step == 0 and self.captured is None:
            self.captured = h.detach().clone()
            torch.save(self.captured, OUT / f"rank{self.global_rank}.pt")
        if self.global_rank == 1:
            h = self.only_rank1(h)
        return self.net[2](h).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

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


if __name__ == "__main__":
    OUT = Path(sys.argv[1])
    counter = CountingGather(packing.dist.all_gather)
    packing.dist.all_gather = counter
    seed_everything(0)
    trainer = Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_steps=3,
        logger=TensorBoardLogger(OUT, name="ddp", version=""),
        callbacks=[LayerDiagnostics(every_n_steps=1, histogram_every_n_steps=0)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Net())
    (OUT / f"collectives{trainer.global_rank}.txt").write_text(str(counter.calls))
