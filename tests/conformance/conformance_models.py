"""Tiny, randomly initialised versions of model shapes people train, as LightningModules.

Each module brings its own deterministic data (the same samples on every call), so a plain run
and a run with ``LayerDiagnostics`` see the same batches. Nothing is downloaded: the Hugging Face
models are built from a config.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader

VOCAB, SEQ, WIDTH, CLASSES, BATCH, SAMPLES, IMAGE = 64, 12, 32, 3, 4, 32, 8


def _gen(index: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + index)


def token_samples(*, per_token_labels: bool) -> list[dict[str, torch.Tensor]]:
    """Dict samples as a Hugging Face tokenizer and collator give them: ``input_ids``,
    ``attention_mask`` (every other sample padded at the end) and ``labels`` (``-100`` on
    padding for a language model, one class per sequence otherwise)."""
    samples = []
    for i in range(SAMPLES):
        ids = torch.randint(1, VOCAB, (SEQ,), generator=_gen(i))
        length = SEQ - (i % 2) * (1 + i % 5)
        mask = (torch.arange(SEQ) < length).long()
        ids = ids * mask
        if per_token_labels:
            labels = ids.masked_fill(mask == 0, -100)
        else:
            labels = torch.randint(0, CLASSES, (), generator=_gen(i + 500))
        samples.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return samples


def padded_token_samples() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(tokens, lengths, label)`` samples of varied length, zero-padded to ``SEQ``."""
    samples = []
    for i in range(SAMPLES):
        length = SEQ - (i * 7) % (SEQ - 2)
        tokens = torch.randint(1, VOCAB, (SEQ,), generator=_gen(i))
        tokens[length:] = 0
        label = torch.randint(0, CLASSES, (), generator=_gen(i + 500))
        samples.append((tokens, torch.tensor(length), label))
    return samples


def image_samples() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (
            torch.randn(3, IMAGE, IMAGE, generator=_gen(i)),
            torch.randint(0, 10, (), generator=_gen(i + 500)),
        )
        for i in range(SAMPLES)
    ]


def vector_samples(features: int = 20) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (
            torch.randn(features, generator=_gen(i)),
            torch.randint(0, 10, (), generator=_gen(i + 500)),
        )
        for i in range(SAMPLES)
    ]


class Base(LightningModule):
    """Data, optimizer and a logged loss, as in most training scripts."""

    def __init__(self, data: list) -> None:
        super().__init__()
        self.data = data

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=BATCH, shuffle=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def logged(self, loss: torch.Tensor) -> torch.Tensor:
        self.log("train_loss", loss, batch_size=BATCH)
        return loss


# ---------------------------------------------------------------------- Hugging Face


def enable_checkpointing(model: nn.Module) -> None:
    """``gradient_checkpointing_enable()``, under the name newer ``transformers`` give it."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()


def gpt2(*, checkpointing: bool = False) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=WIDTH, n_layer=2, n_head=2)
    )
    if checkpointing:
        enable_checkpointing(model)
    return model


def bert_classifier(*, checkpointing: bool = False) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=2 * WIDTH,
            max_position_embeddings=SEQ,
            num_labels=CLASSES,
        )
    )
    if checkpointing:
        enable_checkpointing(model)
    return model


class HFWithForward(Base):
    """``forward`` passes the batch through; ``training_step`` calls ``self(**batch).loss``."""

    def __init__(self, model: nn.Module, data: list) -> None:
        super().__init__(data)
        self.model = model

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch, batch_idx):
        return self.logged(self(**batch).loss)


class HFWithoutForward(Base):
    """No ``forward``: ``training_step`` calls ``self.model(**batch).loss``."""

    def __init__(self, model: nn.Module, data: list) -> None:
        super().__init__(data)
        self.model = model

    def training_step(self, batch, batch_idx):
        return self.logged(self.model(**batch).loss)


# ---------------------------------------------------------------------- sequences


class PaddedEncoder(Base):
    """``nn.TransformerEncoder`` over padded token sequences with ``src_key_padding_mask``.

    ``frozen``: embedding and encoder are frozen and run in eval mode under ``no_grad`` (a
    feature extractor), which takes PyTorch's nested-tensor fast path; only the head trains.
    """

    def __init__(self, *, frozen: bool) -> None:
        super().__init__(padded_token_samples())
        self.frozen = frozen
        self.emb = nn.Embedding(VOCAB, WIDTH)
        layer = nn.TransformerEncoderLayer(
            WIDTH, nhead=2, dim_feedforward=2 * WIDTH, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(WIDTH, CLASSES)
        if frozen:
            self.emb.requires_grad_(False)
            self.encoder.requires_grad_(False)

    def forward(self, tokens, lengths):
        pad = torch.arange(tokens.shape[1], device=tokens.device) >= lengths[:, None]
        if self.frozen:
            self.encoder.eval()
            with torch.no_grad():
                h = self.encoder(self.emb(tokens), src_key_padding_mask=pad)
        else:
            h = self.encoder(self.emb(tokens), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))

    def training_step(self, batch, batch_idx):
        tokens, lengths, labels = batch
        return self.logged(F.cross_entropy(self(tokens, lengths), labels))


class PackedRNN(Base):
    """An LSTM or GRU over ``pack_padded_sequence`` input; the head reads the last hidden state."""

    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__(padded_token_samples())
        self.emb = nn.Embedding(VOCAB, 16)
        self.rnn = cell(16, WIDTH, num_layers=2, batch_first=True)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(
            self.emb(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):  # LSTM: (h_n, c_n)
            hidden = hidden[0]
        return self.head(hidden[-1])

    def training_step(self, batch, batch_idx):
        tokens, lengths, labels = batch
        return self.logged(F.cross_entropy(self(tokens, lengths), labels))


# ---------------------------------------------------------------------- images


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convolutions, a shared in-place ReLU and a skip
    connection (a 1x1 convolution when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """A ResNet-18-shaped network, 8 and 16 channels wide; ``classes=None`` ends at the pool."""

    def __init__(self, norm: type[nn.Module] = nn.BatchNorm2d, classes: int | None = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = norm(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1, norm), BasicBlock(8, 8, 1, norm))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2, norm))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes) if classes else nn.Identity()

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BatchNormAct2d(nn.BatchNorm2d):
    """Shaped like timm's ``BatchNormAct2d``: a BatchNorm2d subclass with ``drop`` and ``act``
    children and its own ``forward`` (batch norm, then drop, then act)."""

    def __init__(self, num_features: int, act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        x = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or self.running_mean is None,
            factor,
            self.eps,
        )
        return self.act(self.drop(x))


class MobileNetish(nn.Module):
    """Stem, depthwise-separable block and head with timm-style ``BatchNormAct2d`` layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(8)
        self.conv_dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
        self.bn2 = BatchNormAct2d(8, act_layer=nn.Hardswish)
        self.conv_pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn3 = BatchNormAct2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        x = self.bn1(self.conv_stem(x))
        x = self.bn3(self.conv_pw(self.bn2(self.conv_dw(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


class ImageTask(Base):
    """Classification of 3x8x8 images into 10 classes."""

    def __init__(self) -> None:
        super().__init__(image_samples())

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.logged(F.cross_entropy(self(x), y))


class ImageClassifier(ImageTask):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


class ViTBlock(nn.Module):
    """Pre-norm transformer block: attention and MLP, each with a residual connection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(ImageTask):
    """A ViT whose ``cls_token`` and ``pos_embed`` are parameters of the LightningModule itself
    (the root module), as in a model written directly in its LightningModule."""

    def __init__(self) -> None:
        super().__init__()
        patches = (IMAGE // 4) ** 2
        self.patch_embed = nn.Conv2d(3, WIDTH, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, WIDTH) * 0.02)
        self.blocks = nn.Sequential(ViTBlock(WIDTH), ViTBlock(WIDTH))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# ---------------------------------------------------------------------- training set-ups


class MLP(Base):
    """Linear/LayerNorm/GELU/Dropout blocks on feature vectors."""

    def __init__(self) -> None:
        super().__init__(vector_samples())
        self.net = nn.Sequential(
            nn.Linear(20, 64),
            nn.LayerNorm(64),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(64, 64),
            nn.LayerNorm(64),
            nn.GELU(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.logged(F.cross_entropy(self(x), y))


def frozen_backbone() -> ImageClassifier:
    """A frozen ResNet backbone (BatchNorm still in training mode) under a trainable head."""
    backbone = ResNet(classes=None).requires_grad_(False)
    return ImageClassifier(nn.Sequential(OrderedDict(backbone=backbone, head=nn.Linear(16, 10))))
