"""Helpers of the distributed tests: the worker scripts run as child processes, and a float64
single-process reference on the union of the ranks' batches to check their logs against."""

import importlib.util
import os
import subprocess
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

HERE = Path(__file__).parent


def _script(name):
    """A worker script of this folder as a module (its ``__main__`` part does not run)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(name, out, timeout=240):
    """Run ``name.py OUT`` (it starts its own two gloo processes); fail with its output."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py"), str(out)],
        timeout=timeout,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _scalars(logdir):
    """``{tag: {step: value}}`` of the event files under ``logdir``, read by TensorBoard."""
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    series = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    return series, acc


def union_reference(model, losses, layers, lr):
    """Step-0 scalars of ``layers`` for ``model`` trained in one process, in float64, on the
    union of the ranks' batches: the loss is the mean of ``losses(model)`` (one per rank), which
    DDP's and FSDP's gradient averaging optimise. ``lr``: the SGD step, for ``updates/ratio``.
    """
    model = model.double()
    outputs, output_grads = defaultdict(list), defaultdict(list)

    def record(name, module, args, output):
        outputs[name].append(output.detach().reshape(-1))
        output.register_hook(lambda grad: output_grads[name].append(grad.reshape(-1)))

    handles = [
        model.get_submodule(name).register_forward_hook(partial(record, name)) for name in layers
    ]
    torch.stack(losses(model)).mean().backward()
    for handle in handles:
        handle.remove()
    want = {}
    for name in layers:
        y = torch.cat(outputs[name])
        want[f"activations/mean/{name}"] = y.mean().item()
        want[f"activations/std/{name}"] = y.std(unbiased=False).item()
        want[f"activations/absmax/{name}"] = y.abs().max().item()
        want[f"backprop/norm/{name}"] = torch.cat(output_grads[name]).norm().item()
        params = list(model.get_submodule(name).parameters())
        if params:
            p = torch.cat([q.detach().reshape(-1) for q in params]).norm().item()
            g = torch.cat([q.grad.reshape(-1) for q in params]).norm().item()
            want[f"parameters/norm/{name}"] = p
            want[f"gradients/norm/{name}"] = g
            want[f"updates/ratio/{name}"] = lr * g / p
    return want


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    """``(output folder, worker module)`` of the test module's ``WORKER`` script, run once."""
    name = request.module.WORKER
    return _launch(name, tmp_path_factory.mktemp(name)), _script(name)


@pytest.fixture(scope="module")
def out(launched):
    """The output folder of the test module's worker run."""
    return launched[0]


@pytest.fixture(scope="module")
def worker(launched):
    """The test module's worker script as a module (its models and constants)."""
    return launched[1]


@pytest.fixture(scope="session")
def scalars():
    return _scalars


@pytest.fixture(scope="session")
def reference():
    return union_reference
