"""The covariate-shift probe on LightningModules without ``forward``, with default options.

The common shape: ``training_step`` calls ``self.net(x)`` or ``self.model(**batch).loss`` and the
module defines no ``forward``. The probe then runs ``training_step`` itself (no grad, logging
muted, RNG and buffers restored), so ``shift/*`` is logged and training is unchanged.
"""

import warnings

import pytest
import torch
from pytorch_lightning import LightningModule, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics

STEPS = 6  # log_every_n_steps=2: scalars at steps 0, 2, 4; by default shift at step 0

#: ``torch.is_grad_enabled()`` at each ``NoForward.training_step`` call (outside the module:
#: the probe restores the module's own attributes).
GRAD_AT_STEP: list[bool] = []


class NoForward(LightningModule):
    """``training_step`` calls ``self.net``; no ``forward``; returns a dict like many do."""

    def __init__(self, lr=0.05, freeze_below=0):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(8, 16),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(16, 16),
            nn.Tanh(),
            nn.Linear(16, 1),
        )
        for layer in self.net[:freeze_below]:
            layer.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        GRAD_AT_STEP.append(torch.is_grad_enabled())
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return {"loss": loss}

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    def train_dataloader(self):
        x = torch.randn(96, 8, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


class ManualNoForward(NoForward):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        x, y = batch
        self.manual_backward(nn.functional.mse_loss(self.net(x), y))
        opt.step()


def gpt2_module(lr=1e-2):
    from transformers import GPT2Config, GPT2LMHeadModel

    class GPT2NoForward(LightningModule):
        def __init__(self):
            super().__init__()
            config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
            self.model = GPT2LMHeadModel(config)

        def training_step(self, batch):  # no batch_idx: Lightning allows it
            loss = self.model(**batch).loss
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=lr)

        def train_dataloader(self):
            ids = torch.randint(0, 64, (48, 16), generator=torch.Generator().manual_seed(0))
            return DataLoader([{"input_ids": r, "labels": r} for r in ids], batch_size=8)

    return GPT2NoForward()


def fit(make_trainer, callbacks, make):
    seed_everything(3)
    GRAD_AT_STEP.clear()
    model = make()
    trainer = make_trainer(callbacks, max_steps=STEPS, log_every_n_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    ours = [
        str(w.message)
        for w in caught
        if "LayerDiagnostics" in str(w.message) or "ln-diagnostics" in str(w.message)
    ]
    return trainer, model, ours


def shift_series(events, trainer, layer):
    acc = events(trainer.logger.log_dir)
    tags = set(acc.Tags()["scalars"])
    return tags, {
        stat: [(e.step, e.value) for e in acc.Scalars(f"shift/{stat}/{layer}")]
        for stat in ("mean_init", "logvar_init", "kl_step")
        if f"shift/{stat}/{layer}" in tags
    }


def same_parameters(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


MODELS = {"net": NoForward, "gpt2": gpt2_module}
LAYERS = {"net": ("net.0", "net.6"), "gpt2": ("model.transformer.h.0.mlp.c_fc", "model.lm_head")}


@pytest.mark.parametrize("kind", ["net", "gpt2"])
@pytest.mark.parametrize("options", [{}, {"shift_every_n_steps": 2}], ids=["default", "every_2"])
def test_probes_log_shift_and_leave_training_bit_for_bit(make_trainer, events, kind, options):
    _, plain, _ = fit(make_trainer, [], MODELS[kind])
    diag = LayerDiagnostics(**options)
    trainer, probed, ours = fit(make_trainer, [diag], MODELS[kind])
    assert ours == []
    for layer in LAYERS[kind]:
        tags, series = shift_series(events, trainer, layer)
        assert sorted(series) == ["kl_step", "logvar_init", "mean_init"], layer
        steps = [s for s, _ in series["mean_init"]]
        # by default the probe after step 0 is due at step 100 (10x the interval, >= 100)
        assert steps == ([0, 2, 4] if options else [0]), layer
        assert series["mean_init"][0][1] == 0.0  # the reference itself
        if options:
            assert series["mean_init"][-1][1] > 1e-4, layer  # a learning model shifts
    assert "health/shift_kl_step" in tags
    same_parameters(plain, probed)  # weights, BatchNorm statistics: unchanged by the probes


def test_the_probe_runs_training_step_with_logging_muted(make_trainer, events):
    _, plain, _ = fit(make_trainer, [], NoForward)
    assert GRAD_AT_STEP == [True] * STEPS
    trainer, _, _ = fit(make_trainer, [LayerDiagnostics()], NoForward)
    # a no-grad probe before the training step of step 0 (the next one is due at step 100)
    assert GRAD_AT_STEP == [False] + [True] * STEPS
    logged = events(trainer.logger.log_dir).Scalars("train_loss")
    plain_logged = events(plain.trainer.logger.log_dir).Scalars("train_loss")
    assert [(e.step, e.value) for e in logged] == [(e.step, e.value) for e in plain_logged]


@pytest.mark.parametrize("kind", ["net", "gpt2"])
def test_a_model_that_does_not_learn_shows_exactly_zero_shift(make_trainer, kind):
    make = (lambda: NoForward(lr=0.0)) if kind == "net" else (lambda: gpt2_module(lr=0.0))
    diag = LayerDiagnostics(shift_every_n_steps=1)
    _, _, ours = fit(make_trainer, [diag], make)
    assert ours == []
    shift = {k: v for k, v in diag.last_logged.scalars.items() if k.startswith("shift/")}
    assert len(shift) > 20
    assert all(v == 0.0 for v in shift.values()), {k: v for k, v in shift.items() if v}


def test_frozen_layers_do_not_shift_and_the_trained_head_does(make_trainer):
    # net.0 - net.5 frozen (requires_grad False): their outputs on the probe batch are fixed
    diag = LayerDiagnostics(shift_every_n_steps=1)
    fit(make_trainer, [diag], lambda: NoForward(freeze_below=6))
    scalars = diag.last_logged.scalars
    for layer in ("net.0", "net.1", "net.2", "net.4", "net.5"):
        assert scalars[f"shift/mean_init/{layer}"] == 0.0, layer
        assert scalars[f"shift/kl_step/{layer}"] == 0.0, layer
    assert scalars["shift/mean_init/net.6"] > 1e-4


def test_a_given_probe_forward_wins_over_training_step(make_trainer, events):
    calls = []

    def probe_forward(module, batch):
        calls.append(batch[0].shape)
        return module.net(batch[0])

    diag = LayerDiagnostics(probe_forward=probe_forward)
    trainer, _, ours = fit(make_trainer, [diag], NoForward)
    assert ours == [] and GRAD_AT_STEP == [True] * STEPS
    assert calls == [torch.Size([16, 8])]  # step 0's probe
    logged = events(trainer.logger.log_dir).Scalars("shift/mean_init/net.0")
    assert [e.step for e in logged] == [0]


def test_manual_optimization_without_forward_says_once_what_to_pass(make_trainer):
    _, plain, _ = fit(make_trainer, [], ManualNoForward)
    diag = LayerDiagnostics()
    _, probed, ours = fit(make_trainer, [diag], ManualNoForward)
    assert len(ours) == 1
    assert "ManualNoForward has no forward() and uses manual optimization" in ours[0]
    assert "probe_forward=" in ours[0]
    assert not any(k.startswith("shift/") for k in diag.last_logged.scalars)
    same_parameters(plain, probed)  # the optimizer was not stepped by a probe
    diag = LayerDiagnostics(
        probe_forward=lambda module, batch: module.net(batch[0]), shift_every_n_steps=2
    )
    _, _, ours = fit(make_trainer, [diag], ManualNoForward)
    assert ours == [] and "shift/mean_init/net.0" in diag.last_logged.scalars


def test_a_failing_training_step_is_named_in_the_warning(make_trainer):
    class Picky(NoForward):
        def training_step(self, batch, batch_idx):
            if not torch.is_grad_enabled():  # the probe runs under no_grad
                raise KeyError("only the probe sees this")
            return super().training_step(batch, batch_idx)

    diag = LayerDiagnostics()
    _, _, ours = fit(make_trainer, [diag], Picky)
    assert len(ours) == 1
    assert "Picky has no forward(), so the probe ran its training_step" in ours[0]
    assert "KeyError" in ours[0] and "probe_forward" in ours[0]


def test_attributes_a_training_step_sets_are_put_back_in_place():
    from ln_diagnostics.collect.probing import preserved_attributes

    model = NoForward()
    outputs, seen, count = [1.0], {"a": 1}, torch.zeros(2)
    model.outputs, model.net[0].seen, model.count, model.hidden = outputs, seen, count, None
    untouched = torch.ones(3)
    model.untouched = untouched
    version = untouched._version
    with preserved_attributes(model):
        model.outputs.append(2.0)
        model.net[0].seen["b"] = 2
        model.count += 1  # in place
        model.hidden = torch.ones(1)
        model.added = "new"
    assert model.outputs is outputs and outputs == [1.0]
    assert model.net[0].seen is seen and seen == {"a": 1}
    assert model.count is count and count.tolist() == [0.0, 0.0]
    assert model.hidden is None and not hasattr(model, "added")
    assert model.untouched is untouched and untouched._version == version  # not rewritten


class ValidatedFirst(NoForward):
    """Keeps a tensor attribute that ``validation_step`` sets under inference mode."""

    def __init__(self):
        super().__init__()
        self.best_val = torch.tensor(float("inf"))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.best_val = torch.minimum(self.best_val, nn.functional.mse_loss(self.net(x), y))

    val_dataloader = NoForward.train_dataloader


def test_an_inference_tensor_attribute_from_validate_before_fit_is_preserved(make_trainer):
    seed_everything(3)
    model = ValidatedFirst()
    make_trainer([], max_steps=1).validate(model, verbose=False)
    assert model.best_val.is_inference()
    diag = LayerDiagnostics()
    logged = {}
    diag.add_listener(lambda last: logged.setdefault(last.step, last.scalars))
    trainer = make_trainer([diag], max_steps=STEPS, log_every_n_steps=2, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert [str(w.message) for w in caught if "ln-diagnostics" in str(w.message)] == []
    assert "shift/mean_init/net.0" in logged[0]  # the default probe runs at step 0


def test_attribute_bookkeeping_failures_are_reported_as_ours():
    from ln_diagnostics.collect.probing import AttributeStateError, preserved_attributes

    model = NoForward()
    with torch.inference_mode():
        model.kept = torch.zeros(2)
    with torch.inference_mode(), preserved_attributes(model):
        model.kept.add_(1.0)  # changed in place: written back without a version counter
    assert model.kept.tolist() == [0.0, 0.0]

    class Unclonable(torch.Tensor):
        def clone(self, *args, **kwargs):
            raise OSError("cannot copy")

    model.odd = torch.zeros(1).as_subclass(Unclonable)
    with pytest.raises(AttributeStateError, match=r"could not save attribute NoForward\.odd"):
        with preserved_attributes(model):
            pass


class StepsItsScheduler(NoForward):
    """Steps its own scheduler in ``training_step`` (allowed under automatic optimization)."""

    def training_step(self, batch, batch_idx):
        self.lr_schedulers().step()
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def test_a_scheduler_stepped_in_training_step_is_put_back_after_the_probe(make_trainer):
    _, plain, _ = fit(make_trainer, [], StepsItsScheduler)
    trainer, probed, ours = fit(make_trainer, [LayerDiagnostics()], StepsItsScheduler)
    assert ours == []
    # the probe's training_step stepped the scheduler too, and it was put back
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == plain.trainer.optimizers[0].param_groups[0]["lr"] < 0.1 * 0.5**STEPS
    same_parameters(plain, probed)


class WritesToTheExperiment(NoForward):
    def training_step(self, batch, batch_idx):
        self.logger.experiment.add_scalar("mine", float(self.global_step), self.global_step)
        return super().training_step(batch, batch_idx)


def test_a_training_step_that_writes_to_the_logger_itself_is_not_probed_twice(make_trainer, events):
    trainer, _, ours = fit(make_trainer, [LayerDiagnostics()], WritesToTheExperiment)
    points = [(e.step, e.value) for e in events(trainer.logger.log_dir).Scalars("mine")]
    assert points == [(s, float(s)) for s in range(STEPS)]  # one point a step, none from a probe
    assert len(ours) == 1  # the probe says why it stopped and what to pass
    assert "loggers hidden" in ours[0] and "probe_forward" in ours[0]
