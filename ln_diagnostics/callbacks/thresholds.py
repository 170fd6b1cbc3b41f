"""``DiagnosticThresholds``: fail, stop or warn when a live diagnostic leaves its bounds.

The callback does not compute anything itself. Every callback in ``trainer.callbacks`` that has
a ``last_logged`` attribute (``LayerDiagnostics`` does) is a *source*: after each training batch,
and once more when training ends, each source's newest ``LoggedScalars`` is checked if its step
has not been checked yet. A source that offers ``add_listener`` (``LayerDiagnostics`` does) also
calls the check the moment it emits a step, so a violation is caught on its own step whether the
source comes before or after this callback in ``Trainer(callbacks=[...])``. Rules are the same
``[[rule]]`` tables ``ln-diagnostics check`` reads, evaluated by the same engine.

When a rule is decided:

* ``over="all"``: each new point as it is logged.
* ``over="max"``/``"min"``/``"mean"``: as soon as the verdict can no longer change (a running
  max above ``max``, a running min below ``min``, a NaN), otherwise when training ends, on the
  full history of the run (kept in the callback state, so it survives a resume).
  ``over="last"`` is decided when training ends.

So the callback never fails a run that ``ln-diagnostics check`` would pass on the same values.
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

from ln_diagnostics._validate import check_choice
from ln_diagnostics.errors import ThresholdViolation
from ln_diagnostics.tags import natural_key
from ln_diagnostics.thresholds.engine import (
    RuleResult,
    _excess,
    describe_unmatched,
    evaluate_series,
    is_settled,
    matches,
    value_passes,
)
from ln_diagnostics.thresholds.findings import evaluate_findings
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
        self._aggregate_rules = [rule for rule in self.rules if rule.over != "all"]
        self._checked_steps: dict[str, int] = {}
        self._reported: set[str] = set()
        self._matched: set[str] = set()
        self._unmatched_warned: set[str] = set()
        self._history: dict[str, list[tuple[int, float]]] = {}
        self._seen_tags: set[str] = set()
        self._match_cache: dict[str, tuple[Rule, ...]] = {}
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
            self._check(trainer, step, logged.scalars)

    # ------------------------------------------------------------------ checking

    def _rules_for(self, tag: str) -> tuple[Rule, ...]:
        rules = self._match_cache.get(tag)
        if rules is None:
            rules = self._match_cache[tag] = tuple(r for r in self.rules if matches(r, tag))
        return rules

    def _check(self, trainer: pl.Trainer, step: int, scalars: Mapping[str, float]) -> None:
        self._seen_tags.update(scalars)
        failures: dict[str, list[RuleResult]] = {}
        for tag, raw in scalars.items():
            value = float(raw)
            for rule in self._rules_for(tag):
                if step < rule.after_step:
                    continue
                self._matched.add(rule.key)
                if rule.over != "all":
                    history = self._history.setdefault(tag, [])
                    if not history or history[-1][0] != step:
                        history.append((step, value))
                if value_passes(rule, value):  # a passing point settles nothing
                    continue
                # One point decides over="all"; for an aggregate it decides only a verdict that
                # no later point can undo (the first value above max is the running max, ...).
                result = evaluate_series(rule, tag, [(step, value)])
                if is_settled(result):
                    failures.setdefault(rule.key, []).append(result)
        for results in failures.values():
            self._violation(trainer, results)

    def _aggregate_results(self, rule: Rule) -> list[RuleResult]:
        results = []
        for tag, points in self._history.items():
            if matches(rule, tag):
                selected = [p for p in points if p[0] >= rule.after_step]
                if selected:
                    results.append(evaluate_series(rule, tag, selected))
        return results

    def _violation(self, trainer: pl.Trainer, failures: Sequence[RuleResult]) -> None:
        """Report one rule's failing tags at once: the worst value, and every tag by name."""
        rule = failures[0].rule
        if rule.key in self._reported:
            return
        self._reported.add(rule.key)
        worst = (  # a finding rule has no bound to exceed: its one result is the worst
            failures[0]
            if rule.finding
            else max(failures, key=lambda result: _excess(rule, result.value))
        )
        error = ThresholdViolation(
            rule.label,
            worst.tag,
            worst.value,
            self._bound(worst),
            worst.step,
            failing=sorted((result.tag for result in failures), key=natural_key),
        )
        if rule.severity == "warn":
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

    def _check_findings(self, trainer: pl.Trainer) -> None:
        """``finding`` rules on the diagnosis of every source that offers ``diagnose()``."""
        rules = [rule for rule in self.rules if rule.finding]
        for _name, source in self._sources(trainer) if rules else ():
            if callable(getattr(source, "diagnose", None)):
                self._matched.update(rule.key for rule in rules)
                for result in evaluate_findings(rules, source.diagnose()):
                    if not result.passed:
                        self._violation(trainer, [result])

    @staticmethod
    def _bound(result: RuleResult) -> str:
        over = result.rule.over
        return result.bound if over == "all" else f"{result.bound}, over {over}"

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
        self._check_findings(trainer)
        for rule in self._aggregate_rules:
            failures = [result for result in self._aggregate_results(rule) if not result.passed]
            if failures:
                self._violation(trainer, failures)
        if not self._checked_steps:
            return  # nothing was logged; ``setup`` already warned when there is no source
        last_step = max(self._checked_steps.values())
        for rule in self.rules:
            if rule.optional or rule.key in self._matched or rule.key in self._unmatched_warned:
                continue
            self._unmatched_warned.add(rule.key)
            if trainer.is_global_zero:
                tags: dict[str, list[tuple[int, float]]] = {tag: [] for tag in self._seen_tags}
                reason = describe_unmatched(rule, tags, last_step=last_step)
                warnings.warn(
                    f"DiagnosticThresholds: {reason} in the logged diagnostics "
                    "(set optional = true if that is expected)",
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
            "reported": sorted(self._reported),
            "matched": sorted(self._matched),
            "unmatched_warned": sorted(self._unmatched_warned),
            "history": {tag: [list(p) for p in points] for tag, points in self._history.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checked_steps = {
            str(k): int(v) for k, v in state_dict.get("checked_steps", {}).items()
        }
        self._reported = set(state_dict.get("reported", ()))
        self._matched = set(state_dict.get("matched", ()))
        self._unmatched_warned = set(state_dict.get("unmatched_warned", ()))
        self._history = {
            str(tag): [(int(s), float(v)) for s, v in points]
            for tag, points in state_dict.get("history", {}).items()
        }
