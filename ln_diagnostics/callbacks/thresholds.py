"""``DiagnosticThresholds``: fail, stop or warn when a live diagnostic leaves its bounds.

The callback computes nothing itself. Every callback in ``trainer.callbacks`` that has a
``last_logged`` attribute (``LayerDiagnostics`` does) is a *source*: after each training batch,
and once more when training ends, each source's newest ``LoggedScalars`` is handed to a
:class:`~ln_diagnostics.thresholds.live.LiveEvaluator` if its step has not been handed over yet.
A source that offers ``add_listener`` (``LayerDiagnostics`` does) also calls the check the
moment it emits a step, so a violation is caught on its own step whether the source comes before
or after this callback in ``Trainer(callbacks=[...])``; a step is counted once however it
arrives. Two sources that log one tag at one step give two points, as they do in the event file.
Rules are the same ``[[rule]]`` tables ``ln-diagnostics check`` reads, evaluated by the same
engine, so the callback never fails a run that ``ln-diagnostics check`` would pass on the same
values; when each kind of rule is decided is told in :mod:`ln_diagnostics.thresholds.live`.
The folds of every tag are kept in the callback state, so a resumed run is judged on all of it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from ln_diagnostics._validate import check_choice
from ln_diagnostics.thresholds.live import LiveEvaluator, Violation
from ln_diagnostics.thresholds.rules import Rule, RuleError, load_rules, parse_rules

OnViolation = Literal["raise", "stop", "warn"]
ON_VIOLATION_CHOICES: tuple[str, ...] = ("raise", "stop", "warn")


class DiagnosticThresholds(pl.Callback):
    """Check live diagnostics against threshold rules while a model trains.

    Args:
        rules: a TOML threshold file (``str`` or path) or a list of rule dicts with the keys of a
            ``[[rule]]`` table: ``tag`` (glob), ``min``/``max``, ``over`` (``all``, ``last``,
            ``mean``, ``max``, ``min``), ``after_step``, ``optional``, ``name``, ``severity``
            (``"error"``, or ``"warn"``: a failing rule warns whatever ``on_violation`` says);
            or ``finding`` (a finding kind or glob) instead of ``tag`` and bounds, judged at fit
            end on ``LayerDiagnostics.diagnose()``.
        on_violation: ``"raise"`` raises :class:`ln_diagnostics.ThresholdViolation` naming rule,
            the worst tag, value, bound and step, and every tag that fails the rule there;
            ``"stop"`` prints that message and sets ``trainer.should_stop``; ``"warn"`` warns
            once per rule.

    Attributes:
        rules: the parsed rules.
        evaluator: the :class:`~ln_diagnostics.thresholds.live.LiveEvaluator` fed with every
            checked step; ``evaluator.results()`` are the verdicts ``ln-diagnostics check``
            gives on the same values.

    Raises:
        ValueError: a rule is invalid or the file is missing or malformed (the message names the
            argument or file, the key, what was expected and what was received), or
            ``on_violation`` is not one of the choices.

    A non-optional rule that matched no logged tag by the end of training gets a warning: live
    runs may log some tags late, so this is not an error here (``ln-diagnostics check`` makes it
    one). Statistics from ``LayerDiagnostics`` are global across DDP ranks, so every rank reaches
    the same verdict; only rank 0 prints and warns.

    Example:
        >>> from pytorch_lightning import Trainer
        >>> from ln_diagnostics.callbacks import LayerDiagnostics
        >>> thresholds = DiagnosticThresholds(
        ...     [{"tag": "gradients/norm/*", "max": 10.0}, {"tag": "health/*", "max": 1e3}],
        ...     on_violation="stop",
        ... )
        >>> trainer = Trainer(callbacks=[LayerDiagnostics(), thresholds])  # doctest: +SKIP
    """

    def __init__(
        self,
        # the list first: jsonargparse (LightningCLI) tries a Union's members in order, and
        # ``str`` would accept a YAML list of rules as its text
        rules: Sequence[Mapping[str, Any]] | str | os.PathLike[str],
        *,
        on_violation: OnViolation = "raise",
    ) -> None:
        super().__init__()
        check_choice("on_violation", on_violation, ON_VIOLATION_CHOICES)
        try:
            if isinstance(rules, (str, os.PathLike)):
                self.rules: tuple[Rule, ...] = load_rules(rules)
                self._source = os.fspath(rules)
            else:
                self.rules = parse_rules(rules, source="DiagnosticThresholds(rules=...)")
                # by content: two callbacks with different inline rules need distinct state keys
                digest = hashlib.sha1("\n".join(r.key for r in self.rules).encode()).hexdigest()
                self._source = f"{len(self.rules)} rules {digest[:12]}"
        except RuleError as error:
            raise RuleError(f"DiagnosticThresholds: {error}") from None
        self.on_violation: OnViolation = on_violation
        self.evaluator = LiveEvaluator(self.rules)
        self._checked_steps: dict[str, int] = {}
        self._unmatched_warned: set[str] = set()
        self._listening: list[tuple[Any, Callable[[Any], None]]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(rules=self._source)

    # ------------------------------------------------------------------ sources

    def _sources(self, trainer: pl.Trainer) -> list[tuple[str, Any]]:
        found: list[tuple[str, Any]] = []
        names: set[str] = set()
        for callback in getattr(trainer, "callbacks", None) or []:
            if callback is self or not hasattr(callback, "last_logged"):
                continue
            name = getattr(callback, "state_key", type(callback).__qualname__)
            base, count = name, 1
            while name in names:
                count += 1
                name = f"{base}#{count}"
            names.add(name)
            found.append((name, callback))
        return found

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._stop_listening()
        for _, source in self._sources(trainer):
            if callable(getattr(source, "add_listener", None)):
                listener = partial(self._on_logged, trainer)
                source.add_listener(listener)
                self._listening.append((source, listener))
        if not self._sources(trainer) and trainer.is_global_zero:
            warnings.warn(
                "DiagnosticThresholds found no callback exposing `last_logged` in "
                "trainer.callbacks (add LayerDiagnostics()); no threshold will be checked",
                UserWarning,
                stacklevel=2,
            )

    def _on_logged(self, trainer: pl.Trainer, logged: Any) -> None:
        self._poll(trainer)

    def _stop_listening(self) -> None:
        for source, listener in self._listening:
            source.remove_listener(listener)
        self._listening = []

    def _poll(self, trainer: pl.Trainer) -> None:
        for name, source in self._sources(trainer):
            logged = getattr(source, "last_logged", None)
            if logged is None:
                continue
            step = int(logged.step)
            if step <= self._checked_steps.get(name, -1):
                continue
            self._checked_steps[name] = step
            self._act(trainer, self.evaluator.add(step, logged.scalars))

    # ------------------------------------------------------------------ acting

    def _act(self, trainer: pl.Trainer, violations: Sequence[Violation]) -> None:
        """Raise, stop or warn, as ``on_violation`` and each rule's severity say."""
        for violation in violations:
            error = violation.error()
            if violation.rule.severity == "warn":
                if trainer.is_global_zero:
                    warnings.warn(f"DiagnosticThresholds: warn: {error}", UserWarning, stacklevel=2)
            elif self.on_violation == "raise":
                raise error
            elif self.on_violation == "stop":
                trainer.should_stop = True
                if trainer.is_global_zero:
                    print(f"DiagnosticThresholds: stopping: {error}", file=sys.stderr, flush=True)
            elif trainer.is_global_zero:
                warnings.warn(f"DiagnosticThresholds: {error}", UserWarning, stacklevel=2)

    # ------------------------------------------------------------------ hooks

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._poll(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._poll(trainer)
        if any(rule.finding for rule in self.rules):
            for _, source in self._sources(trainer):
                # a source built with diagnosis=False has no findings to offer, not "none found"
                if callable(getattr(source, "diagnose", None)) and getattr(
                    source, "diagnosis", True
                ):
                    self._act(trainer, self.evaluator.add_findings(source.diagnose()))
        self._act(trainer, self.evaluator.finish())
        if not self._checked_steps:
            return  # nothing was logged; ``setup`` already warned when there is no source
        for rule, reason in self.evaluator.unmatched():
            if rule.optional or rule.key in self._unmatched_warned:
                continue
            self._unmatched_warned.add(rule.key)
            if rule.finding:
                reason += (
                    ": no source offers diagnose() with its diagnosis on (LayerDiagnostics() "
                    "does; `ln-diagnostics check` diagnoses the event files)"
                )
            if trainer.is_global_zero:
                warnings.warn(
                    f"DiagnosticThresholds: {reason} (set optional = true if that is expected)",
                    UserWarning,
                    stacklevel=2,
                )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop_listening()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop_listening()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "checked_steps": dict(self._checked_steps),
            "unmatched_warned": sorted(self._unmatched_warned),
            **self.evaluator.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checked_steps = {
            str(k): int(v) for k, v in state_dict.get("checked_steps", {}).items()
        }
        self._unmatched_warned = set(state_dict.get("unmatched_warned", ()))
        incomplete = self.evaluator.load_state_dict(state_dict)
        if incomplete:
            rank_zero_warn(
                "DiagnosticThresholds: the checkpoint was written with other threshold rules; "
                f"{', '.join(repr(rule.label) for rule in incomplete)} count only the points "
                "logged from the resume on"
            )
