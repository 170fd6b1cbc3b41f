"""BatchNorm subclasses that do more than normalize: kept as ``NormAct`` or refused untouched.

``BatchNormAct2d`` below reproduces timm's ``timm.layers.norm_act.BatchNormAct2d`` (timm cannot
be installed beside this CPU torch): a ``nn.BatchNorm2d`` subclass with ``drop`` and ``act``
children whose forward is a copy of BatchNorm2d's, then ``drop``, then ``act``.
"""

from __future__ import annotations

import re

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import NormSwap
from ln_diagnostics.nn.norms import ChannelLayerNorm
from ln_diagnostics.nn.swap import NormAct, swap_batchnorm

C = 6


class BatchNormAct2d(nn.BatchNorm2d):
    def __init__(self, num_features, *, act_layer=nn.ReLU, drop_layer=None, inplace=True):
        super().__init__(num_features)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = act_layer(inplace=inplace)

    def forward(self, x):
        assert x.ndim == 4
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            factor,
            self.eps,
        )
        x = self.drop(x)
        x = self.act(x)
        return x


class DoubledBN(nn.BatchNorm2d):
    """An unknown custom forward: not BatchNorm."""

    def forward(self, x):
        return 2 * super().forward(x)


class ActFirstBN(BatchNormAct2d):
    """timm's children, but the activation comes before the norm."""

    def forward(self, x):
        return nn.BatchNorm2d.forward(self, self.act(self.drop(x)))


class SqueezeBN(nn.BatchNorm2d):
    """A child that is neither drop nor act."""

    def __init__(self, num_features):
        super().__init__(num_features)
        self.se = nn.Conv2d(num_features, num_features, 1)

    def forward(self, x):
        y = super().forward(x)
        return y * torch.sigmoid(self.se(y))


class CheckedBN(nn.BatchNorm2d):
    """Its own forward, but it computes BatchNorm: swapped like a plain one."""

    def forward(self, x):
        if x.shape[1] != self.num_features:
            raise ValueError("wrong channel count")
        return super().forward(x)


def _randomize(layer: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen))


def _model(bn: nn.Module) -> nn.Sequential:
    _randomize(bn)
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1), bn, nn.Conv2d(C, 2, 1))


def _layer_norm64(x, weight, bias, eps):
    """Channel LayerNorm in float64, via F.layer_norm over a channels-last view."""
    y = F.layer_norm(x.double().movedim(1, -1), (x.shape[1],), weight.double(), bias.double(), eps)
    return y.movedim(-1, 1)


ACTS = {"relu": (nn.ReLU, torch.relu), "silu": (nn.SiLU, F.silu)}


@pytest.mark.parametrize("drop", ["identity", "dropout"])
@pytest.mark.parametrize("act", list(ACTS))
def test_timm_batchnorm_act_keeps_drop_and_act_after_the_new_norm(act, drop):
    act_layer, act_fn = ACTS[act]
    old = BatchNormAct2d(
        C, act_layer=act_layer, drop_layer=(lambda: nn.Dropout(0.25)) if drop == "dropout" else None
    )
    model = _model(old)
    weight, bias = old.weight.detach().clone(), old.bias.detach().clone()
    report = swap_batchnorm(model)
    new = model[1]
    assert isinstance(new, NormAct) and isinstance(new.norm, ChannelLayerNorm)
    assert new.drop is old.drop and new.act is old.act  # the very same modules, hooks and all
    (entry,) = report.swapped
    drop_type = "Dropout" if drop == "dropout" else "Identity"
    assert (entry.name, entry.old_type, entry.new_type) == (
        "1",
        "BatchNormAct2d",
        "NormAct(ChannelLayerNorm)",
    )
    assert entry.kept == ("drop", "act")
    assert entry.note == f"kept drop ({drop_type}), act ({act_layer.__name__}) after the new norm"
    assert "NormAct(ChannelLayerNorm)" in str(report) and entry.note in report.to_markdown()

    x = torch.randn(4, C, 5, 5)
    torch.manual_seed(0)
    mask = new.drop(torch.ones_like(x))  # the dropout mask (and 1/(1-p) scale) seed 0 draws
    torch.manual_seed(0)
    got = new(x)
    want = act_fn(_layer_norm64(x, weight, bias, new.norm.eps) * mask.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    if drop == "dropout":
        assert (mask == 0).any()  # the check above did see dropped units


def test_swapped_timm_layer_trains_with_an_inplace_activation():
    model = _model(BatchNormAct2d(C, act_layer=nn.SiLU))
    with pytest.warns(UserWarning, match="dropped the non-zero BatchNorm shift"):
        swap_batchnorm(model, target="rmsnorm")
    model(torch.randn(1, 3, 4, 4)).sum().backward()  # batch size 1, in-place SiLU after the norm
    assert model[1].norm.weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_only_an_act_child_is_kept_too():
    class BNReLU(nn.BatchNorm2d):
        def __init__(self, n):
            super().__init__(n)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(super().forward(x))

    model = _model(BNReLU(C))
    (entry,) = swap_batchnorm(model).swapped
    assert entry.kept == ("act",) and isinstance(model[1].drop, nn.Identity)
    assert (model[1](torch.randn(2, C, 4, 4)) >= 0).all()  # the ReLU is still applied


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: DoubledBN(C), r"its forward is not BatchNorm on a test input"),
        (lambda: ActFirstBN(C, act_layer=nn.SiLU), r"its forward is not BatchNorm -> drop -> act"),
        (lambda: SqueezeBN(C), r"it has children \['se'\] besides drop and act"),
    ],
    ids=["custom-forward", "act-before-norm", "extra-child"],
)
def test_a_subclass_whose_behaviour_cannot_be_kept_is_refused_and_nothing_changes(make, reason):
    model = nn.Sequential(nn.BatchNorm2d(C), _model(make()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    name = type(model[1][1]).__name__
    for dry_run in (True, False):  # a dry run says what the swap would do: refuse
        with pytest.raises(ValueError) as caught:
            swap_batchnorm(model, dry_run=dry_run)
        message = str(caught.value)
        assert f"'1.1' ({name}): " in message and "the model was not changed" in message
        assert re.search(reason, message), message
        assert "exclude=['1.1']" in message
    assert [type(m) for m in model.modules()] == types  # the plain BatchNorm was not swapped
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # nor any buffer touched by the check
    report = swap_batchnorm(model, exclude=["1.1"])
    assert [e.name for e in report.swapped] == ["0"]


def test_a_subclass_that_computes_batchnorm_is_swapped_like_a_plain_one():
    model = _model(CheckedBN(C))
    (entry,) = swap_batchnorm(model).swapped
    assert entry.new_type == "ChannelLayerNorm" and entry.kept == () and entry.note == ""
    assert type(model[1]) is ChannelLayerNorm


def test_the_check_leaves_rng_and_modes_as_they_were():
    model = _model(BatchNormAct2d(C, drop_layer=lambda: nn.Dropout(0.5)))
    model.eval()
    torch.manual_seed(5)
    swap_batchnorm(model)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
    assert not any(m.training for m in model.modules())


def test_meta_tensors_cannot_be_checked_and_are_refused():
    with torch.device("meta"):
        model = _model(BatchNormAct2d(C))
    with pytest.raises(ValueError, match="meta device"):
        swap_batchnorm(model)


class TimmShaped(pl.LightningModule):
    def __init__(self, bn: nn.Module):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, C, 3, padding=1),
            bn,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(C, 1),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x.mean((1, 2, 3))[:, None]), batch_size=1)


def _trainer(make_trainer, callbacks):
    return make_trainer(callbacks, max_steps=3, logger=False)


def test_norm_swap_keeps_timm_activations_and_reports_it(make_trainer):
    model = TimmShaped(BatchNormAct2d(C, act_layer=nn.SiLU))
    act = model.net[1].act
    callback = NormSwap()
    _trainer(make_trainer, [callback]).fit(model)  # batch size 1 trains: no BatchNorm left
    assert isinstance(model.net[1], NormAct) and model.net[1].act is act
    (entry,) = callback.report.swapped
    assert entry.new_type == "NormAct(ChannelLayerNorm)" and entry.kept == ("drop", "act")


def test_norm_swap_refuses_an_unknown_forward_before_training(make_trainer):
    model = TimmShaped(DoubledBN(C))
    with pytest.raises(ValueError, match=r"'net.1' \(DoubledBN\): its forward is not BatchNorm"):
        _trainer(make_trainer, [NormSwap()]).fit(model)
    assert type(model.net[1]) is DoubledBN


class EvalClampedBN(nn.BatchNorm2d):
    """BatchNorm in train mode, but its eval-mode output is clamped: not plain BatchNorm."""

    def forward(self, x):
        y = super().forward(x)
        return y if self.training else y.clamp(-0.5, 0.5)


def test_a_subclass_that_differs_only_in_eval_mode_is_refused_and_left_untouched():
    model = nn.Sequential(nn.Conv2d(3, C, 1), EvalClampedBN(C))
    with pytest.raises(ValueError, match=r"'1' \(EvalClampedBN\): .*in eval mode"):
        swap_batchnorm(model)
    assert type(model[1]) is EvalClampedBN and model[1].training


def test_the_check_runs_no_forward_hook_of_the_layer_or_its_children():
    layer = BatchNormAct2d(C, act_layer=nn.SiLU, drop_layer=nn.Dropout)
    model = nn.Sequential(nn.Conv2d(3, C, 1), layer)
    calls = []
    for module in (layer, layer.drop, layer.act):
        module.register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
        module.register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__)))
    swap_batchnorm(model)
    assert calls == []
    assert isinstance(model[1], NormAct)
    # the kept children keep their hooks
    model(torch.randn(2, 3, 4, 4))
    assert ("post", "SiLU") in calls and ("post", "Dropout") in calls
