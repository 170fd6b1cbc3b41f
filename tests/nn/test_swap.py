"""swap_batchnorm: every BatchNorm variant, every target, carry-over, selection, errors."""

from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ln_diagnostics.errors import ArgumentError
from ln_diagnostics.nn.norms import ChannelLayerNorm, ChannelRMSNorm
from ln_diagnostics.nn.swap import SwapReport, swap_batchnorm

C = 6


class MyBatchNorm(nn.BatchNorm2d):
    """A user subclass: must be found like its base class."""


def _lazy_initialized() -> nn.Module:
    bn = nn.LazyBatchNorm2d()
    bn(torch.randn(2, C, 3, 3))
    return bn


VARIANTS = {
    "bn1d_NC": (lambda: nn.BatchNorm1d(C), (5, C)),
    "bn1d_NCL": (lambda: nn.BatchNorm1d(C), (3, C, 7)),
    "bn2d": (lambda: nn.BatchNorm2d(C), (3, C, 4, 5)),
    "bn3d": (lambda: nn.BatchNorm3d(C), (2, C, 3, 4, 2)),
    "syncbn": (lambda: nn.SyncBatchNorm(C), (3, C, 4, 5)),
    "subclass": (lambda: MyBatchNorm(C), (3, C, 4, 5)),
    "lazy_initialized": (_lazy_initialized, (3, C, 4, 5)),
}
TARGETS = ["layernorm", "groupnorm", "rmsnorm"]
NEW_TYPE = {"layernorm": ChannelLayerNorm, "groupnorm": nn.GroupNorm, "rmsnorm": ChannelRMSNorm}


def _reference(
    target: str, x: torch.Tensor, w: np.ndarray, b: np.ndarray, eps: float
) -> np.ndarray:
    """Float64 reference, computed independently of the layers under test."""
    x64 = x.double()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if target == "layernorm":
        if x.dim() == 2:
            return F.layer_norm(
                x64, (x.shape[1],), torch.from_numpy(w), torch.from_numpy(b), eps
            ).numpy()
        y = F.layer_norm(
            x64.movedim(1, -1), (x.shape[1],), torch.from_numpy(w), torch.from_numpy(b), eps
        )
        return y.movedim(-1, 1).numpy()
    a = x64.numpy()
    if target == "groupnorm":
        axes = tuple(range(1, a.ndim))
        mean = a.mean(axis=axes, keepdims=True)
        var = a.var(axis=axes, keepdims=True)
        return (a - mean) / np.sqrt(var + eps) * w.reshape(shape) + b.reshape(shape)
    ms = (a**2).mean(axis=1, keepdims=True)
    return a / np.sqrt(ms + eps) * w.reshape(shape)  # rmsnorm: no shift


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_normalizes_over_the_right_axes_with_identity_affine(variant: str, target: str) -> None:
    build, shape = VARIANTS[variant]
    bn = build()
    model = nn.Sequential(nn.Identity(), bn)
    report = swap_batchnorm(model, target=target)
    new = model[1]
    assert isinstance(new, NEW_TYPE[target])
    assert [(e.name, e.old_type) for e in report.swapped] == [("1", type(bn).__name__)]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 4 + 2
    y = new(x).double()
    if target == "layernorm":  # per sample and position, over channels
        torch.testing.assert_close(
            y.mean(dim=1), torch.zeros_like(y.mean(dim=1)), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            y.var(dim=1, correction=0), torch.ones_like(y[:, 0]), atol=1e-3, rtol=0
        )
    elif target == "groupnorm":  # per sample, over channels and positions
        flat = y.flatten(1)
        torch.testing.assert_close(
            flat.mean(dim=1), torch.zeros(shape[0], dtype=y.dtype), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            flat.var(dim=1, correction=0), torch.ones(shape[0], dtype=y.dtype), atol=1e-3, rtol=0
        )
    else:  # root mean square over channels is one
        torch.testing.assert_close(
            y.square().mean(dim=1), torch.ones_like(y[:, 0]), atol=1e-3, rtol=0
        )


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_carries_affine_and_matches_float64_reference(variant: str, target: str) -> None:
    build, shape = VARIANTS[variant]
    bn = build()
    bn.eps = 1e-3
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(C, generator=g))
    w, b = bn.weight.detach().double().numpy().copy(), bn.bias.detach().double().numpy().copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rmsnorm warns about the dropped bias
        new = swap_batchnorm(bn, target=target).model
    assert new.eps == 1e-3
    np.testing.assert_array_equal(new.weight.detach().double().numpy(), w)
    x = torch.randn(shape, generator=g) * 3 - 1
    np.testing.assert_allclose(
        new(x).detach().double().numpy(), _reference(target, x, w, b, 1e-3), atol=1e-5, rtol=1e-5
    )


def test_float64_model_keeps_dtype_eps_and_grad_flags() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, eps=1e-2)).double()
    model[1].bias.requires_grad_(False)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        model[1].bias.fill_(0.25)
    model.eval()
    swap_batchnorm(model)
    new = model[1]
    assert new.weight.dtype == torch.float64 and new.bias.dtype == torch.float64
    assert new.weight.tolist() == [1.0, 2.0, 3.0, 4.0] and new.bias.tolist() == [0.25] * 4
    assert new.eps == 1e-2 and not new.training
    assert new.weight.requires_grad and not new.bias.requires_grad
    assert model(torch.randn(1, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("target", TARGETS)
def test_affine_false_is_respected(target: str) -> None:
    model = nn.Sequential(nn.BatchNorm2d(4, affine=False))
    swap_batchnorm(model, target=target)
    assert isinstance(model[0], NEW_TYPE[target])
    assert list(model[0].parameters()) == [] and list(model[0].buffers()) == []


def test_copy_affine_false_starts_from_identity() -> None:
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.fill_(5.0)
        bn.bias.fill_(-1.0)
    new = swap_batchnorm(bn, copy_affine=False).model
    assert new.weight.tolist() == [1.0] * 3 and new.bias.tolist() == [0.0] * 3


def test_rmsnorm_drops_bias_notes_and_warns_only_when_nonzero() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[1].bias.fill_(0.5)
    with pytest.warns(
        UserWarning, match=r"dropped the non-zero BatchNorm shift \(beta\) of 1:"
    ) as rec:
        report = swap_batchnorm(model, target="rmsnorm")
    assert len([w for w in rec if "dropped" in str(w.message)]) == 1
    assert [e.note for e in report.swapped] == ["bias dropped (RMSNorm has no shift)"] * 2
    assert "bias dropped (RMSNorm has no shift)" in str(report)


def test_nested_containers_and_state_dict() -> None:
    model = nn.Module()
    model.stem = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model.blocks = nn.ModuleList(
        [nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)) for _ in range(2)]
    )
    model.heads = nn.ModuleDict({"cls": nn.BatchNorm1d(4), "other": nn.Linear(4, 4)})
    report = swap_batchnorm(model)
    assert report.model is model
    assert [e.name for e in report.swapped] == ["stem.1", "blocks.0.1", "blocks.1.1", "heads.cls"]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    keys = set(model.state_dict())
    assert "heads.cls.weight" in keys and not any(
        "running" in k or "num_batches" in k for k in keys
    )


def test_shared_layer_is_replaced_once_and_stays_shared() -> None:
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(bn, nn.Linear(4, 4), bn)
    report = swap_batchnorm(model)
    assert len(report.swapped) == 1 and model[0] is model[2]
    assert isinstance(model[0], ChannelLayerNorm)


def test_root_batchnorm_is_returned_as_new_root() -> None:
    bn = nn.BatchNorm2d(4)
    report = swap_batchnorm(bn, target="groupnorm")
    assert report.model is not bn and isinstance(report.model, nn.GroupNorm)
    assert report.model.num_groups == 1 and report.model.num_channels == 4
    assert [(e.name, e.old_type, e.new_type) for e in report.swapped] == [
        ("", "BatchNorm2d", "GroupNorm")
    ]
    assert "(root)" in str(report)


def _three_bn_model() -> nn.Module:
    model = nn.Module()
    model.encoder = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2))
    model.head = nn.Sequential(nn.BatchNorm1d(2))
    return model


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (None, None, ["encoder.0", "encoder.1", "head.0"]),
        ("encoder.*", None, ["encoder.0", "encoder.1"]),
        (["head.*", "encoder.1"], None, ["encoder.1", "head.0"]),
        (None, ["head.*"], ["encoder.0", "encoder.1"]),
        (["encoder.*"], "*.1", ["encoder.0"]),
        (["Encoder.*"], None, []),  # case-sensitive
    ],
)
def test_include_exclude(include, exclude, expected: list[str]) -> None:
    model = _three_bn_model()
    report = swap_batchnorm(model, include=include, exclude=exclude)
    assert [e.name for e in report.swapped] == expected
    still_bn = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm1d)}
    assert still_bn == {"encoder.0", "encoder.1", "head.0"} - set(expected)


def test_dry_run_changes_nothing() -> None:
    model = _three_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = list(model.modules())
    report = swap_batchnorm(model, target="rmsnorm", dry_run=True)
    assert [e.new_type for e in report.swapped] == ["ChannelRMSNorm"] * 3
    assert list(model.modules()) == modules_before
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert "3 BatchNorm layers would be swapped (dry run)" in str(report)
    bn = nn.BatchNorm1d(2)
    assert swap_batchnorm(bn, dry_run=True).model is bn


def test_idempotent() -> None:
    model = _three_bn_model()
    assert len(swap_batchnorm(model).swapped) == 3
    modules = list(model.modules())
    second = swap_batchnorm(model)
    assert second.swapped == [] and list(model.modules()) == modules
    assert str(second) == "swap_batchnorm(target='layernorm'): no BatchNorm layers matched"


def test_report_table_is_aligned() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.add_module("long_name_block", nn.Sequential(nn.BatchNorm3d(4)))
    report = swap_batchnorm(model)
    assert isinstance(report, SwapReport)
    lines = str(report).splitlines()
    assert lines[0] == "swap_batchnorm(target='layernorm'): 2 BatchNorm layers swapped"
    assert lines[1].split() == ["name", "old", "type", "new", "type"]
    assert lines[3].split() == ["1", "BatchNorm2d", "ChannelLayerNorm"]
    assert lines[4].split() == ["long_name_block.0", "BatchNorm3d", "ChannelLayerNorm"]
    # columns start at the same offsets on every row
    col = lines[1].index("old type")
    assert lines[3][col:].startswith("BatchNorm2d") and lines[4][col:].startswith("BatchNorm3d")
    assert lines[2].startswith("-" * len("long_name_block.0") + "  ")
    assert "fine-tune" in lines[-1]
    md = report.to_markdown()
    assert "| `long_name_block.0` | BatchNorm3d | ChannelLayerNorm |" in md


def test_train_and_eval_give_the_same_output_after_swap() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )
    x = torch.randn(4, 3, 6, 6)
    model(x)
    swap_batchnorm(model)
    y_train = model.train()(x)
    y_eval = model.eval()(x)
    torch.testing.assert_close(y_train, y_eval, atol=0, rtol=0)
    torch.testing.assert_close(model(x[:1]), y_eval[:1])  # a sample does not depend on its batch


def test_hooks_on_replaced_layer_warn() -> None:
    model = nn.Sequential(nn.BatchNorm1d(2))
    model[0].register_forward_hook(lambda *args: None)
    with pytest.warns(UserWarning, match=r"hooks registered on 0 were not carried over"):
        swap_batchnorm(model)


def test_uninitialized_lazy_batchnorm_is_refused_before_any_change() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.LazyBatchNorm2d())
    with pytest.raises(
        RuntimeError, match=r"cannot swap '1' \(LazyBatchNorm2d\).*Run one forward pass"
    ):
        swap_batchnorm(model)
    assert isinstance(model[0], nn.BatchNorm1d)  # nothing changed
    assert swap_batchnorm(model, exclude=["1"]).swapped[0].name == "0"  # excluded: fine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_wrapped_model_is_refused() -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        ddp = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
        with pytest.raises(
            ValueError, match=r"got the model of type DistributedDataParallel.*Swap before wrapping"
        ):
            swap_batchnorm(ddp)
        outer = nn.Module()
        outer.module = ddp
        with pytest.raises(
            ValueError, match=r"got submodule 'module' of type DistributedDataParallel"
        ):
            swap_batchnorm(outer, dry_run=True)
        assert isinstance(ddp.module[1], nn.BatchNorm1d)
    finally:
        dist.destroy_process_group()


GLOBS = "a glob string or a list of non-empty glob strings"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"target": "batchnorm"},
            "target must be one of 'layernorm', 'groupnorm', 'rmsnorm'; got 'batchnorm'",
        ),
        ({"target": None}, "target must be one of 'layernorm', 'groupnorm', 'rmsnorm'; got None"),
        ({"include": 3}, f"include must be {GLOBS}; got 3"),
        ({"exclude": ["a", 1]}, f"exclude must be {GLOBS}; got ['a', 1]"),
        (
            {"include": []},
            "include must be None or a glob string or a non-empty list of glob strings; got []",
        ),
        ({"copy_affine": "no"}, "copy_affine must be True or False; got 'no'"),
        ({"dry_run": 1}, "dry_run must be True or False; got 1"),
        ({"model": {"bn": nn.BatchNorm1d(2)}}, "model must be a torch.nn.Module; got dict"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    """A ValueError and a TypeError at once, so either ``except`` keeps working."""
    model = nn.Sequential(nn.BatchNorm1d(2))
    with pytest.raises(ArgumentError) as info:
        swap_batchnorm(**{"model": model, **kwargs})
    assert str(info.value) == message
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert isinstance(model[0], nn.BatchNorm1d)


def test_public_exports() -> None:
    import ln_diagnostics
    import ln_diagnostics.nn

    assert ln_diagnostics.swap_batchnorm is swap_batchnorm
    assert ln_diagnostics.SwapReport is SwapReport
    assert {"swap_batchnorm", "SwapReport"} <= set(ln_diagnostics.__all__)
    assert ln_diagnostics.nn.ChannelLayerNorm is ChannelLayerNorm
