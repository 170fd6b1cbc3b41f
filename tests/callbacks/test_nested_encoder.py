"""A frozen ``nn.TransformerEncoder`` with a padding mask passes nested tensors between its
layers: the statistics describe the real tokens only, in a real ``Trainer.fit`` with defaults."""

import copy
import warnings

import pytest
import torch
from pytorch_lightning import LightningModule, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.collect.selection import primary_tensor

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")

LENGTHS = (7, 3, 5, 1)


def padded_batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(len(LENGTHS), max(LENGTHS), 16, generator=gen)
    pad = torch.arange(max(LENGTHS))[None, :] >= torch.tensor(LENGTHS)[:, None]
    x[pad] = 100.0  # padded positions would dominate any statistic that counted them
    return x, pad


class FrozenEncoderWithoutForward(LightningModule):
    """A frozen encoder (eval mode, no grad: PyTorch's nested-tensor fast path) and a head;
    ``training_step`` is the only way in (the shift probe runs it)."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)  # enable_nested_tensor=True by default
        self.encoder.requires_grad_(False)
        self.head = nn.Linear(16, 1)

    def predict(self, x, pad):
        self.encoder.eval()
        with torch.no_grad():
            h = self.encoder(x, src_key_padding_mask=pad)
        return self.head(h.masked_fill(pad[..., None], 0.0)).sum(1)

    def training_step(self, batch, batch_idx):
        x, pad = batch
        return self.predict(x, pad).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(*padded_batch()), batch_size=len(LENGTHS))


class FrozenEncoder(FrozenEncoderWithoutForward):
    """The same with a ``forward`` (the shift probe calls it)."""

    def forward(self, x, pad):
        return self.predict(x, pad)


def reference_outputs(encoder):
    """Each watched encoder module's output over the real tokens, in float64, one sequence at a
    time (no padding, no mask, no nested tensor)."""
    ref = copy.deepcopy(encoder).double()
    outputs: dict[str, list[torch.Tensor]] = {}
    for name, module in ref.named_modules():
        if name.startswith("layers.") and name.count(".") == 2:
            module.register_forward_hook(
                lambda m, a, out, name=name: outputs.setdefault(name, []).append(
                    primary_tensor(out).reshape(-1, 16)
                )
            )
    x, _ = padded_batch()
    with torch.no_grad():
        for b, length in enumerate(LENGTHS):
            ref(x[b : b + 1, :length].double())
    return {name: torch.cat(parts) for name, parts in outputs.items()}


@pytest.mark.parametrize("make", [FrozenEncoder, FrozenEncoderWithoutForward])
def test_nested_encoder_statistics_exclude_padding_with_default_options(make_trainer, events, make):
    seed_everything(0)
    model = make()
    reference = reference_outputs(model.encoder)
    diag = LayerDiagnostics()
    trainer = make_trainer([diag], max_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    ours = [str(w.message) for w in caught if "ln-diagnostics" in str(w.message)]
    assert ours == []

    scalars = events(trainer.logger.log_dir)
    logged = {tag: scalars.Scalars(tag)[0].value for tag in scalars.Tags()["scalars"]}
    assert set(reference) == {
        f"layers.{k}.{m}"
        for k in (0, 1)
        for m in (
            "self_attn",
            "linear1",
            "dropout",
            "linear2",
            "norm1",
            "norm2",
            "dropout1",
            "dropout2",
        )
    }
    for name in ("self_attn", "linear1", "linear2", "norm1", "norm2"):
        for k in (0, 1):
            values = reference[f"layers.{k}.{name}"]
            layer = f"encoder.layers.{k}.{name}"
            assert logged[f"activations/mean/{layer}"] == pytest.approx(
                values.mean().item(), rel=1e-4, abs=1e-5
            ), layer
            assert logged[f"activations/std/{layer}"] == pytest.approx(
                values.std(unbiased=False).item(), rel=1e-4
            ), layer
            assert logged[f"activations/absmax/{layer}"] == pytest.approx(
                values.abs().max().item(), rel=1e-4
            ), layer
            for stat in ("mean_init", "logvar_init", "kl_init", "mean_step"):
                assert logged[f"shift/{stat}/{layer}"] == 0.0, (stat, layer)  # frozen, step 0
