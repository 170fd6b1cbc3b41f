"""FSDP2 runs on 2 gloo CPU processes, launched by test_fsdp.py; not collected by pytest.

Usage: python fsdp_run.py OUT_DIR. Lightning's ``ModelParallelStrategy`` starts the second process
and its process group; both processes then run the plain-loop cases on that same group. Each case
writes into ``OUT_DIR/<case>/``: rank 0's event files (``tb/``), the initial weights
(``init.pt``), each rank's step-0 batch (``batch{r}.pt``), the scalars of each rank's reports
(``scalars{r}.json``, every rank gets the global ones) and our warnings (``warnings{r}.txt``).

Cases, default options unless named: ``lightning`` (``fully_shard`` in ``configure_model``),
``sharded`` (``attach`` on a ``fully_shard``ed ``nn.Sequential``), ``one_unsharded`` (the last
layer left out of FSDP, its gradients averaged by hand as DDP would), ``hsdp`` (a 2×1 mesh:
``Replicate`` on one dimension, every rank holds a full copy), ``failures`` (faults injected on
rank 1: reading gradients at step 0, packing at step 1; logs every step).
"""

import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

import ln_diagnostics
from ln_diagnostics.callbacks import LayerDiagnostics

LR = 0.1
STEPS = 3


def make_net():
    """The model of every case (uneven shards: 8 and 3 rows over 2 ranks)."""
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def loss_of(net, x):
    return net(x).pow(2).mean()


def batch(rank, step):
    gen = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(4, 6, generator=gen) + rank


@contextmanager
def recorded(out, rank):
    """Write our warnings of the block to ``warnings{rank}.txt``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    ours = [str(w.message) for w in caught if "iagnostics" in str(w.message)]
    (out / f"warnings{rank}.txt").write_text("\n".join(ours))


class Sharded(LightningModule):
    def __init__(self, out):
        super().__init__()
        self.net = make_net()
        self.out = out

    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        fully_shard(self.net[0], mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def forward(self, x):
        return self.net(x)

    def training_step(self, x, batch_idx):
        x = x + self.global_rank
        if self.global_step == 0 and batch_idx == 0:
            torch.save(x, self.out / f"batch{self.global_rank}.pt")
        return loss_of(self.net, x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)

    def train_dataloader(self):
        return DataLoader(torch.randn(64, 6, generator=torch.Generator().manual_seed(1)), 4)


def lightning_case(out):
    seed_everything(0)
    model = Sharded(out)
    trainer = Trainer(
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        devices=2,
        accelerator="cpu",
        max_steps=STEPS,
        logger=TensorBoardLogger(out, name="tb", version=""),
        callbacks=[LayerDiagnostics()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    if trainer.global_rank == 0:
        torch.save(model.net.state_dict(), out / "init.pt")
    with recorded(out, trainer.global_rank):
        trainer.fit(model)
    scalars = dict(trainer.callbacks[0].last_logged.scalars)
    (out / f"scalars{trainer.global_rank}.json").write_text(json.dumps({"0": scalars}))


def shard(case, net):
    mesh = init_device_mesh("cpu", (2,))
    if case == "hsdp":
        fully_shard(net, mesh=init_device_mesh("cpu", (2, 1), mesh_dim_names=("rep", "shard")))
    elif case == "one_unsharded":
        fully_shard(net[0], mesh=mesh)  # net[2] keeps plain parameters
    else:
        fully_shard(net[0], mesh=mesh)
        fully_shard(net, mesh=mesh)


def inject_failures(collector):
    """Rank 1 fails reading gradients at step 0 and packing at step 1."""
    read, pack = collector._read_gradients, collector._pack

    def failing_read(optimizer):
        if collector.step == 0:
            raise RuntimeError("injected gradient failure")
        read(optimizer)

    def failing_pack():
        if collector.step == 1 and collector._status == 0:
            raise RuntimeError("injected packing failure")
        return pack()

    collector._read_gradients, collector._pack = failing_read, failing_pack


@contextmanager
def counted_calls(out, rank):
    """Count our collectives (``all_gather``; FSDP2's own are ``all_gather_into_tensor`` and
    ``reduce_scatter_tensor``) and any gathering of a full DTensor into ``calls{rank}.json``."""
    targets = [(dist, "all_gather"), (DTensor, "full_tensor"), (DTensor, "redistribute")]
    counts = dict.fromkeys((name for _, name in targets), 0)
    originals = [getattr(owner, name) for owner, name in targets]

    def counting(name, original):
        def call(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)

        return call

    for (owner, name), original in zip(targets, originals, strict=True):
        setattr(owner, name, counting(name, original))
    try:
        yield
    finally:
        for (owner, name), original in zip(targets, originals, strict=True):
            setattr(owner, name, original)
    (out / f"calls{rank}.json").write_text(json.dumps(counts))


def plain_case(case, out, rank):
    torch.manual_seed(0)
    net = make_net()
    if rank == 0:
        torch.save(net.state_dict(), out / "init.pt")
    shard(case, net)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    writer = SummaryWriter(out / "tb") if rank == 0 else None
    options = {"every_n_steps": 1} if case == "failures" else {}
    reports = {}
    diagnostics = ln_diagnostics.attach(net, writer=writer, **options)
    with recorded(out, rank), counted_calls(out, rank), diagnostics as diag:
        if case == "failures" and rank == 1:
            inject_failures(diag.collector)
        for step in range(STEPS):
            x = batch(rank, step)
            if step == 0:
                torch.save(x, out / f"batch{rank}.pt")
            loss_of(net, x).backward()
            if case == "one_unsharded":  # what DDP would do for the layer FSDP does not hold
                for p in net[2].parameters():
                    dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
            diag.before_optimizer_step()
            opt.step()
            opt.zero_grad()
            report = diag.step()
            if report is not None:
                reports[str(step)] = report.scalars
    (out / f"scalars{rank}.json").write_text(json.dumps(reports))
    (out / f"steps{rank}.txt").write_text(str(diag.global_step))


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name in ("lightning", "sharded", "one_unsharded", "hsdp", "failures"):
        (root / name).mkdir(parents=True, exist_ok=True)
    lightning_case(root / "lightning")
    rank = dist.get_rank()
    for name in ("sharded", "one_unsharded", "hsdp", "failures"):
        plain_case(name, root / name, rank)
        dist.barrier()
