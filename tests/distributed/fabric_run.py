"""2-process DDP under Lightning Fabric (gloo on CPU), launched by test_fabric.py; not collected.

Usage: python fabric_run.py OUT_DIR. ``attach()`` with its default options on every rank, the
writer on rank 0 only. Each rank trains on its own data (rank r's samples are shifted by 3r) and
saves its step-0 batch to ``OUT_DIR/batch{r}.pt``; rank 0 saves the initial weights to
``OUT_DIR/init.pt``. Rank r writes its step-0 report to ``OUT_DIR/report{r}.pt`` and what it
printed to ``OUT_DIR/stdout{r}.txt``.
"""

import contextlib
import io
import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from ln_diagnostics import attach

LR = 0.1
STEPS = 3


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def main(out: Path) -> None:
    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    fabric.launch()
    fabric.seed_everything(0)
    rank = fabric.global_rank
    model = Net()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "init.pt")
    fabric.barrier()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt = fabric.setup(model, opt)
    writer = SummaryWriter(str(out / "tb")) if rank == 0 else None
    printed = io.StringIO()
    reports = {}
    with contextlib.redirect_stdout(printed), attach(model, writer=writer) as diag:
        for step in range(STEPS):
            gen = torch.Generator().manual_seed(step)
            x = torch.randn(8, 6, generator=gen) + 3.0 * rank
            if step == 0:
                torch.save(x, out / f"batch{rank}.pt")
            loss = model(x).pow(2).mean()
            fabric.backward(loss)
            diag.before_optimizer_step()
            opt.step()
            opt.zero_grad()
            report = diag.step()
            if report is not None:
                reports[report.step] = dict(report.scalars)
    torch.save(reports, out / f"report{rank}.pt")
    (out / f"stdout{rank}.txt").write_text(printed.getvalue())
    if writer is not None:
        writer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
