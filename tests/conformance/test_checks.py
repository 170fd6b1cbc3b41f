"""The conformance checks themselves fail when what they check is broken."""

import warnings

import conformance_models as m
import torch
from conformance_harness import (
    OK,
    PACKAGE_DIR,
    Run,
    check_grad_norms,
    check_layers,
    evaluate,
    fit_once,
)
from pytorch_lightning import Callback
from torch import nn


class BreaksEverything(Callback):
    """A stand-in for a faulty plugin: it warns from a file of the package, draws from the RNG
    (so dropout masks change), leaves a forward hook, removes a module and logs nothing."""

    def setup(self, trainer, pl_module, stage):
        pl_module.net[2] = nn.Identity()  # the first GELU
        pl_module.net[0].register_forward_hook(lambda *args: None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.rand(1)
        warnings.warn_explicit(
            "broken", RuntimeWarning, str(PACKAGE_DIR / "collect" / "collector.py"), 1
        )
        warnings.warn("not ours", UserWarning, stacklevel=1)


def test_every_check_fails_on_a_plugin_that_breaks_it(make_trainer, events, hooks, tensor_hooks):
    def trainer(callbacks):
        return make_trainer(callbacks, max_steps=4, log_every_n_steps=2)

    def counts(model):
        return hooks(model), tensor_hooks(model)

    plain = fit_once(m.MLP, trainer, [], plugin=None, hook_counts=counts)
    broken = fit_once(m.MLP, trainer, [], plugin=BreaksEverything(), hook_counts=counts)
    results = evaluate(plain, broken, swap=True, events=events)
    assert {check: value.split(" ", 1)[0] for check, value in results.items()} == dict.fromkeys(
        results, "FAIL"
    ), results
    assert len(broken.warnings) == 4, broken.warnings  # ours only, each of the 4 batches
    assert results["swap"] == "FAIL swap removed GELU x1"
    assert results["hooks"] == (
        "FAIL hooks (module, tensor) (1, 0) != (0, 0) without us; pickle: AttributeError: "
        "Can't pickle local object 'BreaksEverything.setup.<locals>.<lambda>'"
    )


def _run(grads, layer_params):
    return Run(grads={0: grads}, layer_params=layer_params)


def test_gradient_norms_must_match_float64_within_1e_5():
    run = _run({"a.weight": torch.tensor([3.0, 4.0], dtype=torch.float64)}, {"a": ["a.weight"]})
    for value, expected in ((5 * (1 + 5e-6), OK), (5 * (1 + 2e-5), "FAIL")):
        scalars = {"gradients/norm/a": {0: value}, "health/grad_norm_total": {0: 5.0}}
        assert check_grad_norms(run, run, scalars).split(" ", 1)[0] == expected
    assert check_grad_norms(run, run, {}) == "FAIL no gradient norms logged"


def test_layers_that_ran_need_activations_and_every_gradient_a_layer():
    grads = {"a.weight": torch.ones(2), "b.weight": torch.ones(2)}
    run = _run(grads, {"a": ["a.weight"], "b": ["b.weight"]})
    run.expected = ["a", "b"]
    logged = {"activations/mean/a": {0: 0.0}, "gradients/norm/a": {0: 1.0}}
    assert check_layers(run, run, logged) == (
        "FAIL no activations/ for b; gradient of b.weight in no gradients/norm/"
    )
    logged |= {"activations/mean/b": {0: 0.0}, "gradients/norm/b": {0: 1.0}}
    assert check_layers(run, run, logged) == OK
