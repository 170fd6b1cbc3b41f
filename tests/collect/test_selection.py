"""Module selection: globs that name containers, and the message when nothing matched."""

import pytest
import torch
from torch import nn

from ln_diagnostics import attach
from ln_diagnostics.collect.selection import select_modules


class Wrapper(nn.Module):
    """What a LightningModule holding a Hugging Face model looks like: ``self.model = ...``."""

    def __init__(self):
        super().__init__()
        transformers = pytest.importorskip("transformers")
        config = transformers.GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=20)
        self.model = transformers.GPT2LMHeadModel(config)

    def forward(self, ids):
        return self.model(input_ids=ids, labels=ids).loss


def test_a_glob_naming_a_container_selects_its_watched_subtree():
    model = Wrapper()
    every = [name for name, _ in select_modules(model)]
    block = [name for name in every if name.startswith("model.transformer.h.0.")]
    assert len(block) == 7  # ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.act, mlp.c_proj
    assert [n for n, _ in select_modules(model, include=["model.transformer.h.0"])] == block
    assert [n for n, _ in select_modules(model, include=["*.h.0"])] == block
    assert [n for n, _ in select_modules(model, include=["*.h.0.attn"])] == [
        "model.transformer.h.0.attn.c_attn",
        "model.transformer.h.0.attn.c_proj",
    ]
    kept = [n for n, _ in select_modules(model, exclude=["model.transformer.h.0"])]
    assert kept == [name for name in every if name not in block]
    # a glob that matches the leaves themselves selects what it did before
    assert [n for n, _ in select_modules(model, include=["*.c_fc"])] == [
        "model.transformer.h.0.mlp.c_fc",
        "model.transformer.h.1.mlp.c_fc",
    ]


def test_attach_on_a_container_glob_logs_that_block_only():
    model = Wrapper()
    ids = torch.randint(0, 20, (2, 6))
    with attach(model, include="model.transformer.h.0", every_n_steps=1) as diag:
        model(ids).backward()
        diag.before_optimizer_step()
        diag.step()
    assert diag.last_logged is not None
    layers = {tag.split("/", 2)[2] for tag in diag.last_logged.scalars if tag.count("/") == 2}
    assert layers == {n for n, _ in select_modules(model, include=["model.transformer.h.0"])}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"include": "1"},
            r"include=\['1'\], exclude=\[\]: include matched 1 \(Sequential\), but no module "
            r"watched by default \(a leaf with parameters, a norm or an activation module\) lies "
            r"in its subtree; some module names: 0 \(Linear\), 2 \(ReLU\)$",
        ),
        ({"include": "9*"}, r"include matched no module name; some module names: 0 \(Linear\)"),
        ({"exclude": ["0", "2"]}, r"exclude removed every module that was left"),
        ({"types": ["torch.nn.Conv2d"]}, r"the model has no module of the given types"),
    ],
)
def test_nothing_matched_says_why_and_lists_modules_that_would_be_watched(kwargs, message):
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout()), nn.ReLU())
    with pytest.raises(ValueError, match=r"^no module of Sequential matched .*" + message):
        attach(model, **kwargs)
