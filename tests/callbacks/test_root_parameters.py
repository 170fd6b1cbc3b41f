"""Parameters held by a container (a ViT's ``cls_token`` and ``pos_embed``) are logged under the
container's name, through a real ``Trainer.fit`` with default options."""

import copy

import pytest
import torch
from pytorch_lightning import LightningModule, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics
from ln_diagnostics.collect.collector import Collector
from ln_diagnostics.collect.selection import parameter_owners, select_modules

LR = 0.05


class TinyViT(nn.Module):
    """Patch embedding, class token and position embedding on the model itself, one block."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, kernel_size=4, stride=4)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, 16))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 5, 16))
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def images():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)


class Classifier(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = TinyViT()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)

    def train_dataloader(self):
        return DataLoader(TensorDataset(*images()), batch_size=8)


def test_vit_root_parameters_are_logged_under_their_owner_with_default_options(
    make_trainer, events
):
    seed_everything(0)
    model = Classifier()
    ref = copy.deepcopy(model.net).double()
    x, y = images()
    nn.functional.cross_entropy(ref(x.double()), y).backward()
    own = [ref.cls_token, ref.pos_embed]
    p_norm = torch.cat([p.detach().reshape(-1) for p in own]).norm().item()
    g_norm = torch.cat([p.grad.reshape(-1) for p in own]).norm().item()

    trainer = make_trainer([LayerDiagnostics()], max_steps=1)
    trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    logged = {tag: acc.Scalars(tag)[0].value for tag in acc.Tags()["scalars"]}
    assert logged["parameters/norm/net"] == pytest.approx(p_norm, rel=1e-5)
    assert logged["gradients/norm/net"] == pytest.approx(g_norm, rel=1e-4)
    assert logged["gradients/ratio/net"] == pytest.approx(g_norm / p_norm, rel=1e-4)
    assert logged["updates/ratio/net"] == pytest.approx(LR * g_norm / p_norm, rel=1e-4)  # SGD
    assert not any(tag.endswith("/net") for tag in logged if tag.startswith("activations/"))


def test_parameters_on_the_root_module_log_as_root_and_join_their_block_when_grouped():
    torch.manual_seed(0)
    vit = TinyViT()
    modules = select_modules(vit)
    owners = parameter_owners(vit, modules)
    assert [(name, [p.shape for p in params]) for name, params in owners] == [
        ("", [vit.cls_token.shape, vit.pos_embed.shape])
    ]
    covered = {id(p) for _, m in modules for p in m.parameters()}
    covered |= {id(p) for _, params in owners for p in params}
    assert covered == {id(p) for p in vit.parameters()}
    assert parameter_owners(vit, modules, include=["blocks"]) == []
    assert parameter_owners(vit, modules, exclude=["*"]) == []

    collector = Collector(vit, modules, owners=owners)
    collector.attach()
    collector.begin_step(0, scalars=True, histograms=False)
    vit(images()[0]).square().mean().backward()
    collector.before_optimizer_step()
    report = collector.end_step()
    own = torch.cat([vit.cls_token.detach().reshape(-1), vit.pos_embed.detach().reshape(-1)])
    assert report.scalars["parameters/norm/<root>"] == pytest.approx(
        own.double().norm().item(), rel=1e-6
    )
    assert "gradients/norm/<root>" in report.scalars

    # grouped by the first name part: the owner stays its own block, named as before
    collector.set_groups({name: name.split(".")[0] for name in collector.layer_names})
    collector.begin_step(1, scalars=True, histograms=False)
    vit(images()[0]).square().mean().backward()
    collector.before_optimizer_step()
    grouped = collector.end_step().scalars
    collector.detach()
    assert grouped["parameters/norm/<root>"] == report.scalars["parameters/norm/<root>"]
    blocks = {tag.split("/", 2)[2] for tag in grouped if tag.startswith("parameters/norm/")}
    assert blocks == {"<root>", "patch_embed", "blocks", "norm", "head"}
