"""``ln_diagnostics.attach()`` under Lightning Fabric, with DDP on two CPU processes.

``python examples/fabric_ddp.py`` starts two gloo processes with
``Fabric(accelerator="cpu", strategy="ddp", devices=2)``, sets the model and optimizer up with
``fabric.setup`` and attaches the diagnostics to the Fabric-wrapped module on every rank, with
the ``SummaryWriter`` on rank 0 only. Each rank trains a 12-layer tanh MLP on its own half of
scikit-learn's ``load_digits``; every rank's ``diag.last_logged`` holds the statistics of both
halves together. Rank 0 prints the findings at the end and a line per logging step:

    step   0  grad_norm_total 1.18e-01  depth_log10 -2.63  (both ranks, 2 x 64 samples)

Options: ``--steps``, ``--logdir``, ``--devices`` (1 runs without DDP).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import ln_diagnostics


def digits(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of scikit-learn's digits, standardized."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = torch.tensor(data.target, dtype=torch.long)
    return x[rank::world], y[rank::world]


def mlp(depth: int = 12, width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(64 if i == 0 else width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--logdir", type=Path, default=Path("runs/fabric_ddp"))
    parser.add_argument("--devices", type=int, default=2, help="processes (1: no DDP)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    strategy = "ddp" if args.devices > 1 else "auto"
    fabric = Fabric(accelerator="cpu", strategy=strategy, devices=args.devices)
    fabric.launch()
    fabric.seed_everything(0)
    x, y = digits(fabric.global_rank, fabric.world_size)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    writer = SummaryWriter(str(args.logdir)) if fabric.global_rank == 0 else None
    generator = torch.Generator().manual_seed(fabric.global_rank)
    with ln_diagnostics.attach(model, writer=writer, every_n_steps=50) as diag:
        for _ in range(args.steps):
            index = torch.randint(0, len(x), (64,), generator=generator)
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            fabric.backward(loss)
            diag.before_optimizer_step()  # gradients are DDP-averaged by now
            optimizer.step()
            optimizer.zero_grad()
            report = diag.step()
            if report is not None and fabric.global_rank == 0:
                scalars = report.scalars
                print(
                    f"step {report.step:>3}  grad_norm_total "
                    f"{scalars['health/grad_norm_total']:.2e}  depth_log10 "
                    f"{scalars.get('health/backprop_depth_log10', float('nan')):+.2f}  "
                    f"(both ranks, {fabric.world_size} x 64 samples)",
                    flush=True,
                )
    if writer is not None:
        writer.close()
        print(f"\nTensorBoard logs: {args.logdir.resolve()}")


if __name__ == "__main__":
    main()
