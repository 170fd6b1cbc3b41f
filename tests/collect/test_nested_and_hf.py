"""The collector and the shift probe on nested tensors and on Hugging Face activation modules."""

import pytest
import torch
from torch import nn

from ln_diagnostics.collect.collector import Collector, select_modules
from ln_diagnostics.collect.shift import ShiftProbe

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")


def rows_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3, bias=False))


def jagged_batch():
    gen = torch.Generator().manual_seed(1)
    parts = [torch.randn(n, 4, generator=gen) for n in (5, 2, 7)]
    return torch.nested.nested_tensor(parts, layout=torch.jagged), torch.cat(parts)


def test_nested_activation_and_backprop_statistics_match_a_dense_float64_computation():
    model = rows_model()
    nested, rows = jagged_batch()
    collector = Collector(model, select_modules(model))
    collector.attach()
    collector.begin_step(0, scalars=True, histograms=True)
    model(nested).values().square().sum().backward()
    collector.before_optimizer_step()
    report = collector.end_step()
    collector.detach()

    ref = [rows.double()]
    for layer in model.double():  # the rows, one layer at a time, in float64
        ref.append(layer(ref[-1]))
        ref[-1].retain_grad()
    ref[-1].square().sum().backward()
    for k in range(3):
        out = ref[k + 1]
        assert report.scalars[f"activations/mean/{k}"] == pytest.approx(out.mean().item(), rel=1e-5)
        assert report.scalars[f"activations/std/{k}"] == pytest.approx(
            out.std(unbiased=False).item(), rel=1e-5
        )
        assert report.scalars[f"backprop/norm/{k}"] == pytest.approx(
            out.grad.norm().item(), rel=1e-5
        )
        assert report.histograms[f"activations/hist/{k}"].num == out.numel()


def test_shift_probe_on_a_nested_batch_equals_the_probe_on_its_rows():
    model = rows_model()
    nested, rows = jagged_batch()
    probes = [ShiftProbe(model, select_modules(model), batch=batch) for batch in (nested, rows)]
    for probe in probes:
        probe.measure(0)
    with torch.no_grad():
        model[0].weight.mul_(1.5)
        model[2].weight.add_(0.1)
    on_nested, on_rows = (probe.measure(1) for probe in probes)
    assert on_nested.keys() == on_rows.keys()
    for tag, value in on_rows.items():
        assert on_nested[tag] == pytest.approx(value, rel=1e-5, abs=1e-7), tag
    assert on_nested["shift/logvar_step/2"] > 0.1 and on_nested["shift/mean_init/0"] > 0.01


class ToSparse(nn.Module):
    def forward(self, x):
        return x.to_sparse()


def test_a_layer_the_probe_cannot_fit_is_named_and_dropped_while_the_others_go_on():
    model = nn.Sequential(nn.Linear(4, 4), ToSparse())
    modules = [("0", model[0]), ("1", model[1])]
    probe = ShiftProbe(model, modules, batch=torch.randn(8, 4))
    with pytest.warns(RuntimeWarning, match="could not fit layer '1' .*no shift metrics"):
        out = probe.measure(0)
    assert "shift/mean_init/0" in out and not any(tag.endswith("/1") for tag in out)
    assert not probe.disabled and "shift/mean_step/0" in probe.measure(1)


def hf_activations():
    activations = pytest.importorskip("transformers.activations")
    return {name: activations.ACT2FN[name] for name in activations.ACT2CLS}


def test_every_hugging_face_activation_is_watched_by_default():
    for name, act in hf_activations().items():
        model = nn.Sequential(nn.Linear(4, 4), act, nn.Dropout())
        assert [n for n, _ in select_modules(model)] == ["0", "1"], (name, type(act).__name__)


def test_saturation_of_activations_outside_torch_is_decided_by_their_response():
    from ln_diagnostics.collect.selection import saturation_kind

    kinds = {name: saturation_kind(act) for name, act in hf_activations().items()}
    # tanh and sigmoid are torch's; Laplace's activation is a Gaussian CDF, bounded by 0 and 1;
    # GELUTanh is a GELU (tanh approximation), unbounded
    assert {name: kind for name, kind in kinds.items() if kind} == {
        "laplace": "sigmoid",
        "sigmoid": "sigmoid",
        "tanh": "tanh",
    }

    class Tanh(nn.Module):  # timm's, abridged
        def forward(self, x):
            return x.tanh()

    class HardSigmoid(nn.Module):
        def forward(self, x):
            return (x / 6 + 0.5).clamp(0, 1)

    class ScaledTanhActivation(nn.Module):
        def forward(self, x):
            return 2 * x.tanh()

    assert [saturation_kind(m()) for m in (Tanh, HardSigmoid, ScaledTanhActivation)] == [
        "tanh",
        "sigmoid",
        None,
    ]


def test_a_tiny_gpt2_logs_dead_unit_statistics_of_its_new_gelu_activations():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=8)
    model = transformers.GPT2LMHeadModel(config)
    acts = {n: m for n, m in model.named_modules() if n.endswith("mlp.act")}
    assert [type(m).__name__ for m in acts.values()] == ["NewGELUActivation"] * 2
    captured = {}
    for name, module in acts.items():
        module.register_forward_hook(lambda m, a, out, name=name: captured.setdefault(name, out))
    collector = Collector(model, select_modules(model))
    collector.attach()
    collector.begin_step(0, scalars=True, histograms=False)
    ids = torch.randint(0, 50, (3, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    collector.before_optimizer_step()
    report = collector.end_step()
    collector.detach()
    for name, out in captured.items():
        ref = out.detach().double()
        assert report.scalars[f"activations/mean/{name}"] == pytest.approx(
            ref.mean().item(), rel=1e-5
        )
        assert report.scalars[f"activations/zero_frac/{name}"] == (ref == 0).double().mean().item()
        assert report.scalars[f"backprop/norm/{name}"] > 0
        assert f"activations/saturated_frac/{name}" not in report.scalars  # GELU: unbounded
