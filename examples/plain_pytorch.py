"""``ln_diagnostics.attach()`` in a hand-written PyTorch training loop (no Lightning).

``python examples/plain_pytorch.py`` trains a 6-layer ReLU MLP on scikit-learn's ``load_digits``
with SGD in an ordinary loop on the CPU, with the diagnostics attached through
``ln_diagnostics.attach(model, writer=SummaryWriter(...), every_n_steps=20)``: call
``diag.before_optimizer_step()`` after ``backward()`` and ``diag.step()`` after
``optimizer.step()``. Leaving the ``with`` block removes every hook and flushes the writer.

The script prints a table of the last logging step straight from ``diag.last_logged`` (no event
file needed): per layer the activation std and fraction of zeros (dead ReLU units), the parameter
gradient norm and the update ratio ‖Δθ‖/‖θ‖. The same values are in the TensorBoard logs under
``--logdir``. Options: ``--steps``, ``--logdir``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import ln_diagnostics


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as 64 standardized features and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-3), torch.tensor(data.target, dtype=torch.long)


def mlp(depth: int = 6, width: int = 128) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(64 if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def train(steps: int, logdir: Path) -> ln_diagnostics.Diagnostics:
    """The training loop; returns the detached diagnostics handle."""
    torch.manual_seed(0)
    x, y = digits()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    writer = SummaryWriter(str(logdir))
    with ln_diagnostics.attach(model, writer=writer, every_n_steps=20) as diag:
        for step in range(steps):
            index = torch.randint(0, len(x), (64,))
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            loss.backward()
            diag.before_optimizer_step()  # gradients are read here, before any clipping
            optimizer.step()
            optimizer.zero_grad()
            diag.step()
            if step % 20 == 0:
                writer.add_scalar("train/loss", loss.item(), step)
    writer.close()
    return diag


def report(diag: ln_diagnostics.Diagnostics) -> None:
    """A per-layer table of the last logging step, from ``diag.last_logged``."""
    logged = diag.last_logged
    if logged is None:  # cannot happen after one step: step 0 always logs
        raise RuntimeError("nothing was logged")
    scalars = logged.scalars
    types = {
        name: type(module).__name__
        for name, module in zip(diag.collector.names, diag.collector.modules, strict=True)
    }
    print(f"\nlast logging step: {logged.step}")
    print(
        f"{'layer':<6} {'type':<7} {'act std':>8} {'zero_frac':>9} {'grad norm':>10} "
        f"{'update ratio':>12}"
    )
    for layer, kind in types.items():
        row = [
            scalars.get(f"{group}/{stat}/{layer}", float("nan"))
            for group, stat in (
                ("activations", "std"),
                ("activations", "zero_frac"),
                ("gradients", "norm"),
                ("updates", "ratio"),
            )
        ]
        print(f"{layer:<6} {kind:<7} {row[0]:>8.3f} {row[1]:>9.3f} {row[2]:>10.2e} {row[3]:>12.2e}")
    print(f"health/grad_norm_total = {scalars['health/grad_norm_total']:.3e}")
    print("nan: a ReLU has no parameters, so no gradient or update.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--logdir", type=Path, default=Path("runs/plain_pytorch"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: one thread is fastest and immune to contention
    start = time.perf_counter()
    diag = train(args.steps, args.logdir)
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s")
    report(diag)
    print(f"\nTensorBoard logs: {args.logdir.resolve()}")


if __name__ == "__main__":
    main()
