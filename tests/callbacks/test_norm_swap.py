"""NormSwap end to end on real Lightning runs, read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

import inspect
import logging
import typing
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lightning_utilities.core import rank_zero as lu_rank_zero
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks.norm_swap import NormSwap
from ln_diagnostics.nn.norms import ChannelLayerNorm

TRAINER_KW = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "accelerator": "cpu",
    "devices": 1,
}


def _data(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = torch.stack([x[:, 0] - 2 * x[:, 1], x[:, 2] * x[:, 3]], dim=1)
    return TensorDataset(x, y)


class BNRegressor(pl.LightningModule):
    """An MLP with BatchNorm1d on (N, C): cannot train at batch size 1."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))
        self.losses: list[float] = []
        self.state_at_train_start: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.detach())
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def on_train_start(self) -> None:
        self.state_at_train_start = {k: v.clone() for k, v in self.state_dict().items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _loader(batch_size: int = 1) -> DataLoader:
    return DataLoader(_data(), batch_size=batch_size, shuffle=False)


def _mean(xs: list[torch.Tensor]) -> float:
    return torch.stack(xs).mean().item()


def test_batchnorm_model_fails_at_batch_size_one() -> None:
    trainer = pl.Trainer(max_steps=3, **TRAINER_KW)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        trainer.fit(BNRegressor(), _loader(batch_size=1))


@pytest.fixture(scope="module")
def swapped_run(tmp_path_factory: pytest.TempPathFactory):
    """One real fit at batch size 1 with NormSwap and a TensorBoard logger, then a validate."""
    root = tmp_path_factory.mktemp("norm_swap_run")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    lu_rank_zero.log.addHandler(handler)
    try:
        model = BNRegressor()
        old_bn = model.net[1]
        logger = TensorBoardLogger(save_dir=str(root), name="run")
        kw = {**TRAINER_KW, "logger": logger}
        trainer = pl.Trainer(max_steps=48, log_every_n_steps=1000, **kw)
        callback = NormSwap(target="layernorm")
        trainer.callbacks.append(callback)
        trainer.fit(model, _loader(batch_size=1))
        trainer.validate(model, _loader(batch_size=4), verbose=False)
    finally:
        lu_rank_zero.log.removeHandler(handler)
    return {
        "model": model,
        "old_bn": old_bn,
        "trainer": trainer,
        "callback": callback,
        "records": records,
        "log_dir": logger.log_dir,
    }


def test_trains_at_batch_size_one_after_swap(swapped_run) -> None:
    model = swapped_run["model"]
    assert isinstance(model.net[1], ChannelLayerNorm)
    losses = model.losses
    assert len(losses) == 48
    first, last = _mean(losses[:16]), _mean(losses[-16:])  # same 16 samples each epoch
    assert last < 0.5 * first, (first, last)


def test_optimizer_holds_the_new_parameters(swapped_run) -> None:
    model, old_bn = swapped_run["model"], swapped_run["old_bn"]
    opt_params = [p for g in swapped_run["trainer"].optimizers[0].param_groups for p in g["params"]]
    assert {id(p) for p in opt_params} == {id(p) for p in model.parameters()}
    assert any(p is model.net[1].weight for p in opt_params)
    assert not any(p is old_bn.weight or p is old_bn.bias for p in opt_params)


def test_report_logged_once_to_console_and_tensorboard(swapped_run) -> None:
    reports = [r for r in swapped_run["records"] if r.startswith("swap_batchnorm(")]
    assert len(reports) == 1  # fit and the later validate: logged once
    lines = reports[0].splitlines()
    assert lines[0] == "swap_batchnorm(target='layernorm'): 1 BatchNorm layer swapped"
    assert lines[3].split() == ["net.1", "BatchNorm1d", "ChannelLayerNorm"]
    assert swapped_run["callback"].report.swapped[0].name == "net.1"

    acc = EventAccumulator(swapped_run["log_dir"], size_guidance={"tensors": 0})
    acc.Reload()
    assert "norm_swap/report/text_summary" in acc.Tags()["tensors"]
    events = acc.Tensors("norm_swap/report/text_summary")
    assert len(events) == 1 and events[0].step == 0
    text = events[0].tensor_proto.string_val[0].decode()
    assert "| `net.1` | BatchNorm1d | ChannelLayerNorm |" in text
    assert text.startswith("swap_batchnorm(target='layernorm'): 1 BatchNorm layer swapped")


def test_train_and_eval_agree_after_swap(swapped_run) -> None:
    model = swapped_run["model"]
    x = _data().tensors[0]
    y_train = model.train()(x)
    y_eval = model.eval()(x)
    torch.testing.assert_close(y_train, y_eval, atol=0, rtol=0)


def test_resume_and_validate_from_swapped_checkpoint(tmp_path: Path) -> None:
    first = BNRegressor(seed=0)
    trainer = pl.Trainer(max_steps=5, default_root_dir=str(tmp_path), **TRAINER_KW)
    trainer.callbacks.append(NormSwap())
    trainer.fit(first, _loader())
    ckpt = tmp_path / "swapped.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert "net.1.weight" in saved and "net.1.running_mean" not in saved

    # Without the swap, the checkpoint does not fit the model.
    with pytest.raises(RuntimeError, match="running_mean"):
        BNRegressor(seed=1).load_state_dict(saved)

    # Resume a fit on a fresh, unswapped model: NormSwap swaps before the restore.
    resumed = BNRegressor(seed=1)
    trainer = pl.Trainer(max_steps=8, default_root_dir=str(tmp_path), **TRAINER_KW)
    trainer.callbacks.append(NormSwap())
    trainer.fit(resumed, _loader(), ckpt_path=str(ckpt))
    assert trainer.global_step == 8
    start = resumed.state_at_train_start
    assert start is not None and start.keys() == saved.keys()
    assert all(torch.equal(start[k], saved[k]) for k in saved)
    assert len(resumed.losses) == 3  # steps 6..8 only

    # Validate (not fit) from the checkpoint on a fresh, unswapped model.
    fresh = BNRegressor(seed=2)
    trainer = pl.Trainer(**TRAINER_KW)
    trainer.callbacks.append(NormSwap())
    trainer.validate(fresh, _loader(batch_size=4), ckpt_path=str(ckpt), verbose=False)
    assert isinstance(fresh.net[1], ChannelLayerNorm)
    state = fresh.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


class NoBN(BoringModel):
    pass


def test_warns_once_when_nothing_matches() -> None:
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, **TRAINER_KW)
    trainer.callbacks.append(NormSwap(target="rmsnorm", exclude=["layer*"]))
    with pytest.warns(UserWarning) as rec:
        trainer.fit(NoBN())
    ours = [str(w.message) for w in rec if "NormSwap" in str(w.message)]
    assert ours == [
        "NormSwap(target='rmsnorm', include=None, exclude=['layer*']) matched no BatchNorm layer "
        "in NoBN (stage 'fit'); nothing was swapped."
    ]


def test_constructor_is_a_typed_keyword_only_schema() -> None:
    params = inspect.signature(NormSwap.__init__).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in params.items() if n != "self")
    hints = typing.get_type_hints(NormSwap.__init__)
    assert typing.get_args(hints["target"]) == ("layernorm", "groupnorm", "rmsnorm")
    with pytest.raises(TypeError):
        NormSwap("layernorm")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"target": "LayerNorm"},
            ValueError,
            "target must be one of 'layernorm', 'groupnorm', 'rmsnorm'; got 'LayerNorm'",
        ),
        (
            {"include": [3]},
            TypeError,
            "include must be a glob string or a list of non-empty glob strings; got [3]",
        ),
        ({"copy_affine": None}, TypeError, "copy_affine must be True or False; got None"),
    ],
)
def test_bad_arguments_are_rejected_in_init(
    kwargs: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        NormSwap(**kwargs)
    assert str(info.value) == message


def test_runs_under_the_unified_lightning_package() -> None:
    lightning_pytorch = pytest.importorskip("lightning.pytorch")

    class Model(lightning_pytorch.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Model()
    trainer = lightning_pytorch.Trainer(max_steps=2, **TRAINER_KW)
    trainer.callbacks.append(NormSwap())
    trainer.fit(model, _loader(batch_size=1))
    assert isinstance(model.net[1], ChannelLayerNorm)
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert id(model.net[1].weight) in opt_params


def test_exported_from_callbacks_package() -> None:
    import ln_diagnostics.callbacks

    assert ln_diagnostics.callbacks.NormSwap is NormSwap
    assert "NormSwap" in ln_diagnostics.callbacks.__all__
