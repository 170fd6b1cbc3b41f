"""Every argument of every public constructor or function refuses a bad value with a message that
names the argument, what was expected and what was received. One row per argument at least, with
values the per-module tests do not already use; a completeness check keeps the table in step
with the signatures. One bad value gets one exception type and one message (but for the
argument's name) from every entry point that takes the argument."""

import inspect
import pickle

import pytest
from torch import nn

from ln_diagnostics import ArgumentError, attach, swap_batchnorm
from ln_diagnostics.callbacks import DiagnosticThresholds, LayerDiagnostics, NormSwap

RULE = {"tag": "health/*", "max": 1.0}
THR = "DiagnosticThresholds: DiagnosticThresholds(rules=...): "


def model():
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


#: (argument, bad value, error type, the complete message) of the probe, grouping and diagnosis
#: options that LayerDiagnostics and attach() share.
PROBE_OPTIONS = [
    ("shift_every_n_steps", "1", ValueError,
     "shift_every_n_steps must be an integer >= 0; got '1'"),
    ("ics_every_n_steps", -1, ValueError,
     "ics_every_n_steps must be an integer >= 0; got -1"),
    ("probe_forward", "model", ValueError,
     "probe_forward must be a callable (module, batch) -> output or None; got 'model'"),
    ("ics_layers", 3, ValueError,
     "ics_layers must be a glob string or a list of non-empty glob strings; got 3"),
    ("ics_loss", 1, ValueError,
     "ics_loss must be a callable (module, batch) -> scalar loss tensor or None; got 1"),
    ("group_depth", 0, ValueError,
     "group_depth must be an integer >= 1; got 0"),
    ("group_depth", 1.5, ValueError,
     "group_depth must be an integer >= 1; got 1.5"),
    ("diagnosis", 1, ValueError,
     "diagnosis must be True or False; got 1"),
]  # fmt: skip

# (callable, argument, bad value, error type, the complete message)
CASES = [
    (LayerDiagnostics, "every_n_steps", True, ValueError,
     "every_n_steps must be an integer >= 1; got True"),
    (LayerDiagnostics, "histogram_every_n_steps", 1.0, ValueError,
     "histogram_every_n_steps must be an integer >= 0; got 1.0"),
    (LayerDiagnostics, "types", [], ValueError,
     "types must be None or a non-empty list of nn.Module classes; got []"),
    (LayerDiagnostics, "types", 5, ValueError,
     "types must be None or a non-empty list of nn.Module classes; got 5"),
    (LayerDiagnostics, "types", [int], ValueError,
     "types must be nn.Module classes or their dotted paths; got <class 'int'>"),
    (LayerDiagnostics, "include", [], ValueError,
     "include must be None or a glob string or a non-empty list of glob strings; got []"),
    (LayerDiagnostics, "include", "", ValueError,
     "include must be a glob string or a list of non-empty glob strings; got ''"),
    (LayerDiagnostics, "exclude", 5, ValueError,
     "exclude must be a glob string or a list of non-empty glob strings; got 5"),
    (LayerDiagnostics, "track_updates", "yes", ValueError,
     "track_updates must be True or False; got 'yes'"),
    *[(LayerDiagnostics, *row) for row in PROBE_OPTIONS],
    (NormSwap, "target", "bn", ValueError,
     "target must be one of 'layernorm', 'groupnorm', 'rmsnorm'; got 'bn'"),
    (NormSwap, "include", "", ValueError,
     "include must be a glob string or a list of non-empty glob strings; got ''"),
    (NormSwap, "exclude", 5, TypeError,
     "exclude must be a glob string or a list of non-empty glob strings; got 5"),
    (NormSwap, "exclude", [None], TypeError,
     "exclude must be a glob string or a list of non-empty glob strings; got [None]"),
    (NormSwap, "copy_affine", 0, TypeError, "copy_affine must be True or False; got 0"),
    (DiagnosticThresholds, "rules", RULE, ValueError,
     THR + "expected a list of rules (tables with keys name, tag, min, max, over, after_step, "
     "optional, severity, finding); got dict"),
    (DiagnosticThresholds, "rules", [{"max": 1}], ValueError,
     THR + "rule 1: missing required key 'tag' (a glob such as 'gradients/norm/*')"),
    (DiagnosticThresholds, "rules", [{**RULE, "maxx": 2}], ValueError,
     THR + "rule 1: unknown key 'maxx'; valid keys: name, tag, min, max, over, after_step, "
     "optional, severity, finding"),
    (DiagnosticThresholds, "rules", [{**RULE, "max": "1"}], ValueError,
     THR + "rule 1: key 'max' must be a number; got str '1'"),
    (DiagnosticThresholds, "rules", [{**RULE, "min": 2}], ValueError,
     THR + "rule 1: 'min' must not exceed 'max'; got min = 2 > max = 1"),
    (DiagnosticThresholds, "rules", [{**RULE, "after_step": -1}], ValueError,
     THR + "rule 1: key 'after_step' must be a non-negative integer; got int -1"),
    (DiagnosticThresholds, "rules", [{**RULE, "optional": "no"}], ValueError,
     THR + "rule 1: key 'optional' must be true or false; got str 'no'"),
    (DiagnosticThresholds, "rules", [{**RULE, "severity": "fatal"}], ValueError,
     THR + "rule 1: key 'severity' must be one of error, warn; got 'fatal'"),
    (DiagnosticThresholds, "on_violation", None, ValueError,
     "on_violation must be one of 'raise', 'stop', 'warn'; got None"),
    (attach, "model", 42, TypeError, "model must be a torch.nn.Module; got int"),
    (attach, "writer", "runs/x", ValueError,
     "writer must be a torch.utils.tensorboard.SummaryWriter or None; got str"),
    (attach, "every_n_steps", 0, ValueError, "every_n_steps must be an integer >= 1; got 0"),
    (attach, "histogram_every_n_steps", "5", ValueError,
     "histogram_every_n_steps must be an integer >= 0; got '5'"),
    (attach, "types", "nn.Linear", ValueError,
     "types: could not import 'nn.Linear' (expected a dotted path to an nn.Module class such "
     "as 'torch.nn.Linear'): No module named 'nn'"),
    (attach, "include", [""], ValueError,
     "include must be a glob string or a list of non-empty glob strings; got ['']"),
    (attach, "exclude", [3], ValueError,
     "exclude must be a glob string or a list of non-empty glob strings; got [3]"),
    (attach, "track_updates", None, ValueError, "track_updates must be True or False; got None"),
    *[(attach, *row) for row in PROBE_OPTIONS],
    (swap_batchnorm, "model", None, TypeError, "model must be a torch.nn.Module; got NoneType"),
    (swap_batchnorm, "target", "LayerNorm", ValueError,
     "target must be one of 'layernorm', 'groupnorm', 'rmsnorm'; got 'LayerNorm'"),
    (swap_batchnorm, "include", ["layers.*", ""], ValueError,
     "include must be a glob string or a list of non-empty glob strings; got ['layers.*', '']"),
    (swap_batchnorm, "exclude", {"a": 1}, TypeError,
     "exclude must be a glob string or a list of non-empty glob strings; got {'a': 1}"),
    (swap_batchnorm, "copy_affine", "yes", TypeError,
     "copy_affine must be True or False; got 'yes'"),
    (swap_batchnorm, "dry_run", None, TypeError, "dry_run must be True or False; got None"),
]  # fmt: skip

#: Arguments that take any value: the probe batch is whatever the model's forward accepts.
ANY_VALUE = {(LayerDiagnostics, "probe_batch"), (attach, "probe_batch")}
#: Positional first arguments that have no valid default.
NEEDS_MODEL = {attach, swap_batchnorm}


def call(target, argument, value):
    kwargs = {argument: value}
    if target is DiagnosticThresholds and argument != "rules":
        kwargs["rules"] = [RULE]
    if target in NEEDS_MODEL and argument != "model":
        kwargs["model"] = model()
    return target(**kwargs)


@pytest.mark.parametrize(
    ("target", "argument", "value", "error", "message"),
    CASES,
    ids=[f"{c[0].__name__}-{c[1]}-{c[2]!r}" for c in CASES],
)
def test_bad_value_is_refused_with_argument_expectation_and_value(
    target, argument, value, error, message
):
    with pytest.raises(error) as info:
        call(target, argument, value)
    assert str(info.value) == message
    assert argument in message  # the "rules" rows too, through "DiagnosticThresholds(rules=...)"


def test_every_argument_of_every_public_entry_point_has_a_row():
    covered = {(c[0], c[1]) for c in CASES} | ANY_VALUE
    for target in (LayerDiagnostics, NormSwap, DiagnosticThresholds, attach, swap_batchnorm):
        for name in inspect.signature(target).parameters:
            assert (target, name) in covered, f"{target.__name__}({name}=...) has no bad-value row"


def test_valid_edge_values_are_accepted():
    LayerDiagnostics(exclude=[], types="torch.nn.Linear", include="*", probe_batch=object())
    NormSwap(include="layers.*", exclude="head")
    # an empty exclude list leaves nothing out, as in LayerDiagnostics
    assert NormSwap(exclude=[]).exclude is None
    assert [e.name for e in swap_batchnorm(model(), exclude=[], dry_run=True).swapped] == ["1"]
    with attach(model(), every_n_steps=1, types=[nn.Linear]):
        pass


GLOB_TAKERS = (LayerDiagnostics, NormSwap, swap_batchnorm, attach)

#: (bad value, the (entry point, argument) pairs that must refuse it alike)
SAME_VALUE = [
    *((value, [(t, arg) for t in GLOB_TAKERS])
      for arg in ("include", "exclude") for value in (5, [""], "", [None], ("a", 1), {"a"})),
    ([], [(t, "include") for t in GLOB_TAKERS]),
    *((True, [(t, arg) for t in (LayerDiagnostics, attach)])
      for arg in ("every_n_steps", "histogram_every_n_steps", "group_depth",
                  "shift_every_n_steps", "ics_every_n_steps")),
    (1, [(LayerDiagnostics, "track_updates"), (LayerDiagnostics, "diagnosis"),
         (attach, "track_updates"), (attach, "diagnosis"), (NormSwap, "copy_affine"),
         (swap_batchnorm, "copy_affine"), (swap_batchnorm, "dry_run")]),
    ("LayerNorm", [(NormSwap, "target"), (swap_batchnorm, "target")]),
    ("torch.nn.Nope", [(LayerDiagnostics, "types"), (attach, "types")]),
    (5, [(LayerDiagnostics, "types"), (attach, "types")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "takers"),
    SAME_VALUE,
    ids=[f"{c[0]!r}-{'-'.join(sorted({arg for _, arg in c[1]}))}" for c in SAME_VALUE],
)
def test_one_bad_value_gets_one_error_everywhere(value, takers):
    errors = {}
    for target, argument in takers:
        with pytest.raises(ArgumentError) as info:
            call(target, argument, value)
        assert info.value.argument == argument
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
        errors[f"{target.__name__}({argument}=...)"] = str(info.value).replace(argument, "<arg>")
    assert len(set(errors.values())) == 1, errors


def test_argument_error_survives_pickling():
    """DDP and multiprocessing workers send exceptions across processes."""
    with pytest.raises(ArgumentError) as info:
        NormSwap(exclude=5)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (type(copy), copy.argument, str(copy)) == (ArgumentError, "exclude", str(info.value))
