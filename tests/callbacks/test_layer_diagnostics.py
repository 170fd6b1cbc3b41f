"""LayerDiagnostics end to end: real Trainer.fit runs, event files read back by TensorBoard."""

import gc
import pickle
import weakref

import pytest
import torch
from pytorch_lightning import Callback, seed_everything
from pytorch_lightning.demos import LightningLSTM, LightningTransformer
from pytorch_lightning.demos.boring_classes import BoringModel, DemoModel, RandomDataset
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from ln_diagnostics.callbacks import LayerDiagnostics

VOCAB = 50


def tokens(n=64, length=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(0, VOCAB, (n, length + 1), generator=gen)
    return DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=8)


class OfflineTransformer(LightningTransformer):
    def prepare_data(self):  # the demo downloads WikiText2; these tests use synthetic tokens
        pass


class OfflineLSTM(LightningLSTM):
    def prepare_data(self):
        pass


class GradNormProbe(Callback):
    """Records, independently of the plugin, a layer's gradient norm in float64 at every step."""

    def __init__(self, module_name):
        self.module_name = module_name
        self.norms = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        module = pl_module.get_submodule(self.module_name)
        flat = torch.cat([p.grad.double().reshape(-1) for p in module.parameters()])
        self.norms[trainer.global_step] = flat.norm().item()


@pytest.mark.parametrize(
    ("make_model", "loader", "layer"),
    [
        (BoringModel, lambda: DataLoader(RandomDataset(32, 64), batch_size=4), "layer"),
        (DemoModel, lambda: DataLoader(RandomDataset(32, 64), batch_size=4), "l1"),
        (lambda: OfflineTransformer(vocab_size=VOCAB), tokens, "model.decoder"),
        (lambda: OfflineLSTM(vocab_size=VOCAB), tokens, "model.rnn"),
    ],
    ids=["BoringModel", "DemoModel", "LightningTransformer", "LightningLSTM"],
)
def test_demo_models_log_tags_and_gradient_norms_equal_an_independent_computation(
    make_trainer, events, hooks, make_model, loader, layer
):
    seed_everything(0)
    model = make_model()
    probe = GradNormProbe(layer)
    diag = LayerDiagnostics(every_n_steps=3, histogram_every_n_steps=6)
    run = make_trainer([diag, probe], max_steps=7)
    run.fit(model, train_dataloaders=loader())
    acc = events(run.logger.log_dir)
    tags = acc.Tags()["scalars"]
    for group in (
        "activations/std/",
        "gradients/norm/",
        "parameters/norm/",
        "updates/ratio/",
        "backprop/norm/",
    ):
        assert f"{group}{layer}" in tags, (group, sorted(tags)[:20])
    for name in ("grad_norm_total", "param_norm_total", "nonfinite_activations", "nonfinite_grads"):
        assert f"health/{name}" in tags
    logged = acc.Scalars(f"gradients/norm/{layer}")
    assert [e.step for e in logged] == [0, 3, 6]
    for event in logged:
        # torch's float32 CPU norm kernel drifts ~5e-5 relative on the LSTM's 1M-element weights
        assert event.value == pytest.approx(probe.norms[event.step], rel=1e-4)
    assert [e.step for e in acc.Histograms(f"activations/hist/{layer}")] == [0, 6]
    assert hooks(model) == 0


def test_default_interval_follows_the_trainers_log_every_n_steps(make_trainer, events):
    diag = LayerDiagnostics(histogram_every_n_steps=0)
    run = make_trainer([diag], max_steps=9, log_every_n_steps=4)
    run.fit(BoringModel())
    acc = events(run.logger.log_dir)
    assert [e.step for e in acc.Scalars("activations/mean/layer")] == [0, 4, 8]
    assert acc.Tags()["histograms"] == []


def test_gradient_accumulation_reads_accumulated_gradients_once_per_optimizer_step(
    make_trainer, events
):
    seed_everything(1)
    probe = GradNormProbe("layer")
    run = make_trainer(
        [LayerDiagnostics(every_n_steps=1), probe], max_steps=3, accumulate_grad_batches=2
    )
    run.fit(BoringModel())
    acc = events(run.logger.log_dir)
    logged = acc.Scalars("gradients/norm/layer")
    assert [e.step for e in logged] == [0, 1, 2]
    for event in logged:
        assert event.value == pytest.approx(probe.norms[event.step], rel=1e-5)


def test_validation_forward_passes_are_not_collected(make_trainer, events):
    class Counting(BoringModel):
        calls = 0

        def validation_step(self, batch, batch_idx):
            Counting.calls += 1
            return super().validation_step(batch, batch_idx)

    diag = LayerDiagnostics(every_n_steps=1)
    run = make_trainer([diag], max_steps=4, val_check_interval=2, limit_val_batches=3)
    run.fit(Counting())
    assert Counting.calls > 0
    acc = events(run.logger.log_dir)
    assert len(acc.Scalars("activations/mean/layer")) == 4
    assert not any(t.startswith("val/") for t in acc.Tags()["scalars"])


def test_other_loggers_get_scalars_through_log_metrics_and_one_warning(tmp_path, make_trainer):
    diag = LayerDiagnostics(every_n_steps=2)
    run = make_trainer([diag], max_steps=3, logger=CSVLogger(tmp_path))
    with pytest.warns(UserWarning, match="histograms need a TensorBoardLogger.*CSVLogger"):
        run.fit(BoringModel())
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "gradients/norm/layer" in text.splitlines()[0]


def test_no_logger_and_nothing_matched_fail_at_setup_with_clear_messages(make_trainer):
    with pytest.raises(ValueError, match=r"needs a logger .* \(logger=False\)"):
        make_trainer([LayerDiagnostics()], max_steps=1, logger=False).fit(BoringModel())
    with pytest.raises(ValueError, match=r"no module of BoringModel matched .* layer \(Linear\)"):
        make_trainer([LayerDiagnostics(include="encoder.*")], max_steps=1).fit(BoringModel())


def test_exception_mid_fit_removes_hooks_and_keeps_logged_values(make_trainer, events, hooks):
    class Exploding(BoringModel):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise RuntimeError("crash at step 3")
            return super().training_step(batch, batch_idx)

    model = Exploding()
    run = make_trainer([LayerDiagnostics(every_n_steps=1)], max_steps=10)
    with pytest.raises(RuntimeError, match="crash at step 3"):
        run.fit(model)
    assert hooks(model) == 0
    acc = events(run.logger.log_dir)
    assert [e.step for e in acc.Scalars("gradients/norm/layer")] == [0, 1, 2]


def test_after_fit_the_model_has_no_hooks_pickles_and_is_collectable(make_trainer, hooks):
    diag = LayerDiagnostics(every_n_steps=1)
    model = BoringModel()
    make_trainer([diag], max_steps=3).fit(model)
    assert hooks(model) == 0
    pickle.loads(pickle.dumps(model))
    restored = pickle.loads(pickle.dumps(diag))
    assert restored.n_logged == 3
    ref = weakref.ref(model)
    del model, diag, restored  # Lightning binds pl_module.log onto every callback
    gc.collect()
    assert ref() is None


def test_counters_survive_a_checkpoint_resume(tmp_path, make_trainer):
    seed_everything(2)
    first = LayerDiagnostics(every_n_steps=2)
    run = make_trainer([first], max_steps=4)
    run.fit(BoringModel())
    ckpt = tmp_path / "resume.ckpt"
    run.save_checkpoint(ckpt)
    second = LayerDiagnostics(every_n_steps=2)
    make_trainer([second], max_steps=8).fit(BoringModel(), ckpt_path=ckpt)
    assert first.n_logged == 2
    assert second.n_logged == 4  # 2 restored + steps 4 and 6
    assert second.last_logged.step == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps must be an integer >= 1; got 0"),
        ({"every_n_steps": "10"}, "every_n_steps must be an integer >= 1; got '10'"),
        (
            {"histogram_every_n_steps": -5},
            "histogram_every_n_steps must be an integer >= 0; got -5",
        ),
        ({"exclude": [""]}, "exclude must be a glob string or a list of non-empty glob strings"),
        ({"types": "torch.nn.Linearr"}, "types: could not import 'torch.nn.Linearr'"),
        ({"track_updates": 1}, "track_updates must be True or False; got 1"),
    ],
)
def test_bad_arguments_are_rejected_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayerDiagnostics(**kwargs)


def test_the_unified_lightning_package_runs_the_callback(tmp_path, events):
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.demos.boring_classes import BoringModel as UnifiedBoring
    from lightning.pytorch.loggers import TensorBoardLogger as UnifiedTB

    run = lightning.pytorch.Trainer(
        max_steps=3,
        callbacks=[LayerDiagnostics(every_n_steps=1)],
        logger=UnifiedTB(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    run.fit(UnifiedBoring())
    acc = events(run.logger.log_dir)
    assert [e.step for e in acc.Scalars("gradients/norm/layer")] == [0, 1, 2]
