"""``ln-diagnostics``: check, compare and summarise TensorBoard diagnostics from the shell.

Commands (exit codes: 0 pass, 1 a threshold or regression failed, 2 bad usage or bad input)::

    ln-diagnostics check LOGDIR --thresholds FILE [--json OUT] [--junit OUT] [--failures-only]
    ln-diagnostics compare BASELINE CANDIDATE [--tags GLOB]... [--rtol R] [--atol A]
                           [--over last|mean] [--json OUT] [--failures-only]
    ln-diagnostics summary LOGDIR [--wide]
    ln-diagnostics diagnose LOGDIR [--json OUT] [--fail-on error|warning]
    ln-diagnostics baseline RUN_DIR --out FILE [--force] [--factor F] [--margin M]

Each also takes ``--allow-partial`` and ``--merge`` (how to read a live or resumed run).

Example:
    >>> main(["check", "lightning_logs", "--thresholds", "thresholds.toml"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ln_diagnostics._table import text_table
from ln_diagnostics.diagnose import severity_rank
from ln_diagnostics.tags import HEALTH, clip, matches, natural_key, parse_tag
from ln_diagnostics.tensorboard.diagnosis import (
    diagnose_logdir,
    finding_results,
    logdir_json,
    logdir_report,
)
from ln_diagnostics.tensorboard.reader import (
    LogDirError,
    RunScan,
    SinkFor,
    find_runs,
    run_name,
    scan_run,
)
from ln_diagnostics.thresholds.baseline import (
    DEFAULT_FACTOR,
    DEFAULT_FRACTION_MARGIN,
    BaselineError,
    baseline_bounds,
    baseline_toml,
)
from ln_diagnostics.thresholds.engine import (
    RuleIndex,
    RuleResult,
    RunEvaluator,
    SeriesFold,
    closest_tags,
)
from ln_diagnostics.thresholds.rules import Rule, RuleError, load_rules

PROG = "ln-diagnostics"
EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


class InputError(ValueError):
    """Bad input found by a command; reported as one line on stderr with exit code 2."""


# ----------------------------------------------------------------------------- formatting


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _json_number(value: float) -> float | str:
    """JSON has no NaN or infinity: non-finite values become ``"nan"``, ``"inf"``, ``"-inf"``."""
    return value if math.isfinite(value) else str(value)


def _write_text(path: str, text: str, what: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise InputError(
            f"cannot write the {what} to '{path}': {error.strerror or error}"
        ) from None


# ----------------------------------------------------------------------------- check


def _scan(args: argparse.Namespace, run_dir: Path, sink_for: SinkFor) -> RunScan:
    """Read one run with the command's reading options; note each incomplete record read up to."""
    scan = scan_run(run_dir, sink_for, allow_partial=args.allow_partial, merge=args.merge)
    _note_partial(args, scan.partial)
    return scan


def _note_partial(args: argparse.Namespace, partial: Iterable[tuple[Path, int]]) -> None:
    for path, offset in partial:
        print(
            f"{PROG} {args.command}: note: '{path}' ends inside the record at byte {offset}; "
            "read up to it (--allow-partial)",
            file=sys.stderr,
        )


def _check(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    rules = load_rules(args.thresholds)
    index = RuleIndex(rules)
    results: list[tuple[str, RuleResult]] = []
    skipped: list[tuple[Rule, str]] = []
    runs = find_runs(args.logdir)
    run_dirs = set(runs)
    for run_dir in runs:
        run = run_name(args.logdir, run_dir)
        evaluator = RunEvaluator(index)
        _scan(args, run_dir, evaluator.sink)
        evaluation = evaluator.evaluation()
        # Every run must match every rule: per run, not overall. A run folder inside another
        # run's folder is part of that run (SummaryWriter.add_scalars and add_hparams write
        # their events in sub-folders of the run): the enclosing run answers for the rules.
        part_of_a_run = any(parent in run_dirs for parent in run_dir.parents)
        for rule in () if part_of_a_run else evaluation.unmatched:
            reason = (
                f"{evaluator.describe_unmatched(rule)} (searched run '{run}' under '{args.logdir}')"
            )
            if not rule.optional:
                raise InputError(
                    f"{args.thresholds}: {reason}; fix the glob or set optional = true"
                )
            skipped.append((rule, reason))
        results.extend((run, result) for result in evaluation.results)
    results.extend(
        finding_results(rules, args.logdir, allow_partial=args.allow_partial, merge=args.merge)
    )
    results = _ordered(rules, results)
    shown = (
        [(run, r) for run, r in results if _status(r) != "PASS"] if args.failures_only else results
    )
    if shown:
        print(_check_table(shown))
    for _rule, reason in skipped:
        print(f"SKIP {reason} (optional)")
    counts = _counts(results)
    print(
        f"{len(results)} checks: {counts['passed']} passed, {counts['failed']} failed"
        + (f", {counts['warned']} warned" if counts["warned"] else "")
        + (f", {len(skipped)} optional rules skipped" if skipped else "")
    )
    if args.json:
        _write_text(args.json, _check_json(args, results, skipped), "JSON report")
    if args.junit:
        report = _check_junit(rules, results, skipped, seconds=time.perf_counter() - started)
        _write_text(args.junit, report, "JUnit report")
    return EXIT_FAIL if counts["failed"] else EXIT_OK


def _status(result: RuleResult) -> str:
    """``PASS``, ``FAIL``, or ``WARN`` for a failing rule of ``severity = "warn"``."""
    if result.passed:
        return "PASS"
    return "WARN" if result.rule.severity == "warn" else "FAIL"


def _counts(results: Sequence[tuple[str, RuleResult]]) -> dict[str, int]:
    counts = {"PASS": 0, "FAIL": 0, "WARN": 0}
    for _, result in results:
        counts[_status(result)] += 1
    return {"passed": counts["PASS"], "failed": counts["FAIL"], "warned": counts["WARN"]}


def _ordered(
    rules: Sequence[Rule], results: Iterable[tuple[str, RuleResult]]
) -> list[tuple[str, RuleResult]]:
    """Results in rule order, then run and tag in natural order (``net.2`` before ``net.10``)."""
    position = {id(rule): index for index, rule in enumerate(rules)}
    return sorted(
        results,
        key=lambda item: (
            position[id(item[1].rule)],
            natural_key(item[0]),
            natural_key(item[1].tag),
        ),
    )


def _check_table(results: Sequence[tuple[str, RuleResult]]) -> str:
    """One row per (run, tag); FIRST is the step of the first point beyond a bound and
    CROSSINGS how many points were (``-`` and 0 for a rule that passed)."""
    return text_table(
        ["RULE", "RUN", "TAG", "VALUE", "STEP", "FIRST", "CROSSINGS", "BOUND", "OVER", "RESULT"],
        [
            [
                r.rule.label,
                run,
                r.tag,
                _fmt(r.value),
                str(r.step),
                "-" if r.first_step is None else str(r.first_step),
                str(r.crossings),
                r.bound,
                r.rule.over,
                _status(r),
            ]
            for run, r in results
        ],
    )


def _check_json(
    args: argparse.Namespace,
    results: Sequence[tuple[str, RuleResult]],
    skipped: Sequence[tuple[Rule, str]],
) -> str:
    counts = _counts(results)
    report = {
        "command": "check",
        "logdir": str(args.logdir),
        "thresholds": str(args.thresholds),
        "passed": counts["failed"] == 0,
        "counts": {
            "checks": len(results),
            "failed": counts["failed"],
            "warned": counts["warned"],
            "skipped": len(skipped),
        },
        "results": [
            {
                "rule": r.rule.label,
                "pattern": r.rule.tag,
                "over": r.rule.over,
                "run": run,
                "tag": r.tag,
                "value": _json_number(r.value),
                "step": r.step,
                "min": None if r.rule.min is None else _json_number(r.rule.min),
                "max": None if r.rule.max is None else _json_number(r.rule.max),
                "bound": r.bound,
                "points": r.points,
                "first_step": r.first_step,
                "crossings": r.crossings,
                "passed": r.passed,
                "severity": r.rule.severity,
                "status": _status(r),
            }
            for run, r in results
        ],
        "skipped": [
            {"rule": rule.label, "pattern": rule.tag, "reason": why} for rule, why in skipped
        ],
    }
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def _check_junit(
    rules: Sequence[Rule],
    results: Sequence[tuple[str, RuleResult]],
    skipped: Sequence[tuple[Rule, str]],
    *,
    seconds: float,
) -> str:
    """One ``<testsuite>`` per rule, one ``<testcase>`` per (run, tag), in one pass.

    Valid against the strict JUnit schema CI servers read (Jenkins' ``junit-10.xsd``):
    ``tests``/``failures``/``errors`` on every suite, ``time`` on suites and cases, no
    ``skipped`` attribute on ``<testsuites>``. A case takes no time of its own (it is a verdict
    on logged values), so ``time`` is 0 on cases and the check's wall time on the whole report.
    A rule with ``severity = "warn"`` that fails is a passing case with the warning in its
    ``<system-out>``. With one run, case names are the tags; with several, ``RUN:TAG``.
    """
    cases: dict[int, list[tuple[str, RuleResult]]] = {id(rule): [] for rule in rules}
    for run, result in results:
        cases[id(result.rule)].append((run, result))
    reasons: dict[int, list[str]] = {id(rule): [] for rule in rules}
    for rule, why in skipped:
        reasons[id(rule)].append(why)
    single_run = len({run for run, _ in results}) <= 1
    wall = f"{seconds:.3f}"
    root = ET.Element("testsuites", name=f"{PROG} check", time=wall)
    tests = failures = 0
    for rule in rules:
        suite_cases, suite_reasons = cases[id(rule)], reasons[id(rule)]
        suite_failures = sum(_status(r) == "FAIL" for _, r in suite_cases)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=rule.label,
            tests=str(len(suite_cases) + len(suite_reasons)),
            failures=str(suite_failures),
            errors="0",
            skipped=str(len(suite_reasons)),
            time="0",
        )
        for run, r in suite_cases:
            name = r.tag if single_run else f"{run}:{r.tag}"
            case = ET.SubElement(suite, "testcase", name=name, classname=rule.label, time="0")
            if r.passed:
                continue
            message = f"{r.tag} = {_fmt(r.value)} at step {r.step} ({r.bound}, over {rule.over})"
            detail = f"rule {rule.label!r} pattern {rule.tag!r} run {run!r}: {message}"
            if rule.over == "all":
                detail += f"; first beyond the bound at step {r.first_step}, {r.crossings} points"
            if _status(r) == "WARN":
                ET.SubElement(case, "system-out").text = f"WARN {detail}"
            else:
                failure = ET.SubElement(case, "failure", message=message, type="ThresholdViolation")
                failure.text = detail
        for why in suite_reasons:
            case = ET.SubElement(suite, "testcase", name=rule.tag, classname=rule.label, time="0")
            ET.SubElement(case, "skipped", message=why)
        tests += len(suite_cases) + len(suite_reasons)
        failures += suite_failures
    root.set("tests", str(tests))
    root.set("failures", str(failures))
    root.set("errors", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ----------------------------------------------------------------------------- compare


RunFolds = dict[str, SeriesFold]  # tag -> the fold of its points (last point, mean, ...)


def _read_folds(
    args: argparse.Namespace, logdir: str, keep: Callable[[str], bool] | None = None
) -> tuple[dict[str, RunFolds], set[str]]:
    """Every run's scalar tags (those ``keep`` accepts) folded as read, and all tags met.

    Runs without a scalar are left out; none with one is an error.
    """
    runs: dict[str, RunFolds] = {}
    tags: set[str] = set()
    for run_dir in find_runs(logdir):
        folds: RunFolds = {}

        def sink_for(tag: str, folds: RunFolds = folds) -> Callable[[int, float], None] | None:
            if keep is not None and not keep(tag):
                return None
            fold = folds[tag] = SeriesFold()
            return fold.add

        scan = _scan(args, run_dir, sink_for)
        tags.update(scan.tags)
        if scan.tags:
            runs[run_name(logdir, run_dir)] = folds
    if not runs:
        raise LogDirError(f"the event files under '{logdir}' hold no scalars")
    return runs, tags


def _reduce(fold: SeriesFold, over: str) -> float:
    """The mean, or the point of the highest step (of several there, the one written last)."""
    return fold.mean if over == "mean" else fold.last


def _differs(base: float, cand: float, rtol: float, atol: float) -> bool:
    if math.isnan(base) or math.isnan(cand):
        return math.isnan(base) != math.isnan(cand)
    if math.isinf(base) or math.isinf(cand):
        return base != cand
    return abs(cand - base) > atol + rtol * abs(base)


def _pair_runs(
    base: Mapping[str, RunFolds], cand: Mapping[str, RunFolds], args: argparse.Namespace
) -> list[tuple[str, str]]:
    if len(base) == 1 and len(cand) == 1:
        return [(next(iter(base)), next(iter(cand)))]
    common = sorted(set(base) & set(cand), key=natural_key)
    if not common:
        raise InputError(
            f"no run to compare: '{args.baseline}' holds {', '.join(sorted(base))} and "
            f"'{args.candidate}' holds {', '.join(sorted(cand))}; with several runs on a side, "
            "runs are matched by their path relative to BASELINE and CANDIDATE"
        )
    return [(run, run) for run in common]


def _compare(args: argparse.Namespace) -> int:
    globs = args.tags or ["*"]
    base_runs, base_tags = _read_folds(args, args.baseline, lambda tag: matches(tag, globs))
    cand_runs, cand_tags = _read_folds(args, args.candidate, lambda tag: matches(tag, globs))
    pairs = _pair_runs(base_runs, cand_runs, args)
    all_tags = base_tags | cand_tags
    for glob in globs:
        if not any(matches(tag, [glob]) for tag in all_tags):
            close = closest_tags(glob, all_tags)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise InputError(f"--tags {glob!r} matches no scalar tag on either side{hint}")

    report: list[dict[str, Any]] = []
    total = differing = 0
    for base_name, cand_name in pairs:
        base, cand = base_runs[base_name], cand_runs[cand_name]
        common = sorted((tag for tag in base if tag in cand), key=natural_key)
        rows, entries = [], []
        for tag in common:
            b, c = _reduce(base[tag], args.over), _reduce(cand[tag], args.over)
            differs = _differs(b, c, args.rtol, args.atol)
            rel = (c - b) / abs(b) if b != 0 and math.isfinite(b) and math.isfinite(c) else None
            rows.append(
                [
                    tag,
                    _fmt(b),
                    _fmt(c),
                    f"{c - b:+.3g}",
                    "n/a" if rel is None else f"{rel * 100:+.3g}%",
                    "DIFF" if differs else "ok",
                ]
            )
            entries.append(
                {
                    "tag": tag,
                    "baseline": _json_number(b),
                    "candidate": _json_number(c),
                    "relative_change": rel,
                    "differs": differs,
                }
            )
            differing += differs
        total += len(common)
        only_base = sorted((tag for tag in base if tag not in cand), key=natural_key)
        only_cand = sorted((tag for tag in cand if tag not in base), key=natural_key)
        label = base_name if base_name == cand_name else f"{base_name} vs {cand_name}"
        print(f"run {label}: {args.over} value per tag")
        if args.failures_only:
            rows = [row for row in rows if row[-1] == "DIFF"]
        if rows:
            print(text_table(["TAG", "BASELINE", "CANDIDATE", "DELTA", "REL", "RESULT"], rows))
        elif not common:
            print("(no tag in common)")
        if only_base:
            print(f"only in baseline ({len(only_base)}): {', '.join(only_base)}")
        if only_cand:
            print(f"only in candidate ({len(only_cand)}): {', '.join(only_cand)}")
        report.append(
            {
                "baseline_run": base_name,
                "candidate_run": cand_name,
                "tags": entries,
                "only_in_baseline": only_base,
                "only_in_candidate": only_cand,
            }
        )
    for name in sorted(set(base_runs) - {b for b, _ in pairs}, key=natural_key):
        print(f"run only in baseline, not compared: {name}")
    for name in sorted(set(cand_runs) - {c for _, c in pairs}, key=natural_key):
        print(f"run only in candidate, not compared: {name}")
    if total == 0:
        raise InputError(
            f"'{args.baseline}' and '{args.candidate}' have no scalar tag in common"
            + (f" among --tags {' '.join(globs)}" if args.tags else "")
        )
    print(
        f"{total} tags compared: {total - differing} within tolerance, {differing} differ "
        f"(|candidate - baseline| > atol + rtol*|baseline|, atol={args.atol:g}, rtol={args.rtol:g})"
    )
    if args.json:
        document = {
            "command": "compare",
            "baseline": str(args.baseline),
            "candidate": str(args.candidate),
            "over": args.over,
            "rtol": args.rtol,
            "atol": args.atol,
            "passed": differing == 0,
            "compared": total,
            "differing": differing,
            "runs": report,
        }
        _write_text(
            args.json, json.dumps(document, indent=2, allow_nan=False) + "\n", "JSON report"
        )
    return EXIT_FAIL if differing else EXIT_OK


# ----------------------------------------------------------------------------- summary


def _summary(args: argparse.Namespace) -> int:
    runs, _ = _read_folds(args, args.logdir)
    for index, (run, scalars) in enumerate(runs.items()):
        if index:
            print()
        last_step = max(fold.last_step for fold in scalars.values())
        width = None if args.wide else SUMMARY_WIDTH
        print(clip(f"run {run} (latest values, last step {last_step})", width, keep="start"))
        layers: dict[str, dict[str, float]] = {}
        columns: dict[str, None] = {}
        health: list[list[str]] = []
        other: list[list[str]] = []
        for tag, fold in scalars.items():
            step, value = fold.last_step, fold.last
            parsed = parse_tag(tag)
            if parsed is None:
                other.append([tag, _fmt(value), str(step)])
            elif parsed.group == HEALTH:
                health.append([tag, _fmt(value), str(step)])
            else:
                assert parsed.layer is not None  # per-layer groups always carry a layer
                prefix = tag[: len(tag) - len(f"{parsed.group}/{parsed.stat}/{parsed.layer}")]
                column = f"{parsed.group}/{parsed.stat}"
                columns.setdefault(column)
                layers.setdefault(prefix + parsed.layer, {})[column] = value
        if layers:
            print(_layer_table(layers, list(columns), width))
        if health:
            print(_scalar_table("HEALTH", health, width))
        if other:
            print(_scalar_table("OTHER SCALAR", other, width))
    return EXIT_OK


#: The width ``summary`` fits without ``--wide``.
SUMMARY_WIDTH = 100
#: The per-layer columns of ``summary`` without ``--wide``: (header, ``group/stat``).
SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ACT_STD", "activations/std"),
    ("ZERO_FRAC", "activations/zero_frac"),
    ("GRAD_NORM", "gradients/norm"),
    ("UPD_RATIO", "updates/ratio"),
    ("BACKPROP", "backprop/norm"),
)


def _fitted(
    label: str, labels: Sequence[str], rest: Sequence[int], width: int | None
) -> int | None:
    """The width of a table's first column when the other columns take ``rest``."""
    if width is None:
        return None
    room = width - sum(w + 2 for w in rest)
    return max(len(label), min(max(len(text) for text in labels), room))


def _layer_table(
    layers: Mapping[str, Mapping[str, float]], columns: Sequence[str], width: int | None
) -> str:
    """One row per layer in natural order; with a ``width``, the columns of ``SUMMARY_COLUMNS``
    that the run logged, 4 significant digits, and layer names cut from the left to fit."""
    names = sorted(layers, key=natural_key)
    if width is None:
        headers, chosen, digits = list(columns), list(columns), _fmt
    else:
        picked = [(header, column) for header, column in SUMMARY_COLUMNS if column in columns]
        headers, chosen = [h for h, _ in picked], [c for _, c in picked]
        digits = "{:.4g}".format
    cells = [[digits(layers[n][c]) if c in layers[n] else "-" for c in chosen] for n in names]
    rest = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    label_width = _fitted("LAYER", names, rest, width)
    text = text_table(
        ["LAYER", *headers],
        [[clip(name, label_width), *row] for name, row in zip(names, cells, strict=True)],
    )
    hidden = len(columns) - len(chosen)
    if hidden:
        text += f"\n(+{hidden} more column{'s' if hidden > 1 else ''} with --wide)"
    return text


def _scalar_table(label: str, rows: Sequence[Sequence[str]], width: int | None) -> str:
    """``TAG VALUE STEP`` rows in natural order of the tag, tags cut from the left to fit."""
    rows = sorted(rows, key=lambda row: natural_key(row[0]))
    rest = [
        max(len(head), *(len(row[i]) for row in rows)) for i, head in ((1, "VALUE"), (2, "STEP"))
    ]
    tag_width = _fitted(label, [row[0] for row in rows], rest, width)
    return text_table(
        [label, "VALUE", "STEP"], [[clip(row[0], tag_width), *row[1:]] for row in rows]
    )


# ----------------------------------------------------------------------------- baseline


def _baseline(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out '{out}' is a directory; expected the path of a .toml file")
    if not out.parent.is_dir():
        raise InputError(f"--out '{out}': directory '{out.parent}' does not exist")
    if out.exists() and not args.force:
        raise InputError(f"--out '{out}' already exists; pass --force to overwrite it")
    runs, _ = _read_folds(args, args.run)
    if len(runs) > 1:
        names = sorted(runs, key=natural_key)
        raise InputError(
            f"'{args.run}' holds {len(runs)} runs ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}); pass the directory of the one healthy run"
        )
    ((run, scalars),) = runs.items()
    try:
        bounds = baseline_bounds(scalars, factor=args.factor, fraction_margin=args.margin)
    except BaselineError as error:
        raise InputError(f"run '{run}' under '{args.run}': {error}") from None
    last_step = max(fold.last_step for fold in scalars.values())
    header = [
        f"Threshold rules from the run '{args.run}' (up to step {last_step}), "
        f"written by {PROG} baseline.",
        "Every rule holds for every point that run logged; margins around its range [lo, hi]:",
        f"scale quantities [lo / {args.factor:g}, hi * {args.factor:g}], "
        f"fractions and cosines +-{args.margin:g},",
        f"log10 values +-{math.log10(args.factor):g}, signed values widened by "
        "max(hi - lo, |lo|, |hi|), non-finite counts max = 0.",
        f"Check a run against it: {PROG} check RUN --thresholds {out.name}",
    ]
    _write_text(args.out, baseline_toml(bounds, header=header), "threshold file")
    print(f"{len(bounds)} rules from {len(scalars)} tags of run '{args.run}' written to {out}")
    return EXIT_OK


# ----------------------------------------------------------------------------- diagnose


def _diagnose(args: argparse.Namespace) -> int:
    results = diagnose_logdir(args.logdir, allow_partial=args.allow_partial, merge=args.merge)
    for result in results.values():
        _note_partial(args, result.partial)
    print(logdir_report(results))
    if args.json:
        _write_text(args.json, json.dumps(logdir_json(results), indent=2), "JSON report")
    bar = None if args.fail_on is None else severity_rank(args.fail_on)
    failed = bar is not None and any(
        severity_rank(f.severity) >= bar for r in results.values() for f in r.findings
    )
    return EXIT_FAIL if failed else EXIT_OK


# ----------------------------------------------------------------------------- parser


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number; got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number; got {text!r}")
    return value


_CHECK_EPILOG = """\
threshold file (TOML), one [[rule]] table per rule:
  [[rule]]
  name = "no exploding gradients"   # optional label
  tag = "gradients/norm/*"          # glob over scalar tags ('*' crosses '/')
  max = 10.0                        # min and/or max
  over = "all"                      # all | last | mean | max | min
  after_step = 100                  # ignore warm-up steps
  optional = false                  # matching no tag in a run is an error unless optional
  severity = "error"                # error | warn (a failure prints WARN and passes)

example:
  ln-diagnostics check lightning_logs --thresholds thresholds.toml --junit report.xml
  ln-diagnostics baseline runs/healthy --out thresholds.toml   # rules from a healthy run

exit codes: 0 all rules pass, 1 a rule failed, 2 bad usage or bad input
"""

_COMPARE_EPILOG = """\
A tag differs when |candidate - baseline| > atol + rtol * |baseline|, in either direction
(a diagnostic has no universal "better" side). NaN equals only NaN. Tags on one side only
are listed but do not fail. With one run per side the two are compared; with several, runs
are matched by their path relative to BASELINE and CANDIDATE.

example:
  ln-diagnostics compare runs/main runs/feature --tags 'gradients/norm/*' --rtol 0.2

exit codes: 0 no difference beyond tolerance, 1 a difference, 2 bad usage or bad input
"""

_SUMMARY_EPILOG = """\
One row per layer, in natural order (net.2 before net.10). The table fits 100 columns: the
columns are ACT_STD (activations/std), ZERO_FRAC (activations/zero_frac), GRAD_NORM
(gradients/norm), UPD_RATIO (updates/ratio) and BACKPROP (backprop/norm) where logged, with
4 significant digits; names too long to fit keep their end ("...layers.11.mlp.fc2").
--wide prints every logged group/stat column and full names. health/ scalars and other
scalars follow.

example:
  ln-diagnostics summary lightning_logs/version_0

exit codes: 0 printed, 2 bad usage or bad input
"""


def _factor(text: str) -> float:
    value = _non_negative(text)
    if value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number > 1; got {text!r}")
    return value


_BASELINE_EPILOG = f"""\
Writes one over = "all" rule per tag family (activations/std/*: one statistic over every
layer; each health/ tag on its own) with bounds around the smallest and largest value the run
logged: scale quantities (norms, std, rms, ratios, kurtosis, shift) within --factor either way,
fractions (*_frac) and cosines within --margin, *_log10 values within log10(--factor),
signed values (mean) widened by their own range, non-finite counts max = 0. Scalars outside the
tag grammar (train/loss, epoch) get no rule. A run with a NaN, an infinity or a non-zero
non-finite count is not healthy: exit 2.

example:
  {PROG} baseline runs/healthy --out thresholds.toml
  {PROG} check runs/candidate --thresholds thresholds.toml

exit codes: 0 written, 2 bad usage or bad input (no run, several runs, an unhealthy run,
--out exists without --force or lies in a missing directory)
"""


_DIAGNOSE_EPILOG = f"""\
One findings table per run, as LayerDiagnostics prints at fit end: severity, finding, layer (or
a range of layers), the logging steps it held at, what was measured and what to try. The table
fits the terminal (100 columns when output is not a terminal); --json writes every finding with
its evidence. The layers' order and types come from the run's diagnostics/layers record.

example:
  {PROG} diagnose lightning_logs --fail-on error --json diagnosis.json

exit codes: 0 diagnosed (1 with --fail-on when a finding of that severity or worse exists),
2 bad usage or bad input
"""


_READING_EPILOG = """\
reading: every record of every event file is CRC-checked; a corrupt record, a file or directory
that cannot be read, or event files of one directory that log a tag at overlapping steps (two
runs in one directory) exit 2 naming the file. --allow-partial reads up to an incomplete last
record (a run still being written); --merge reads overlapping files as one resumed run.
"""


def _command(commands: Any, name: str, *, summary: str, description: str, epilog: str) -> Any:
    """A sub-parser for a command that reads event files, with the reading options they share."""
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog + "\n" + _READING_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="read up to an event file's incomplete last record (a run still being written) "
        "instead of exiting 2",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="read several event files of one directory whose steps overlap as one run, in "
        "file order (a run resumed into its own directory) instead of exiting 2",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``ln-diagnostics`` argument parser (one sub-parser per command)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Check, compare and summarise ln-diagnostics TensorBoard logs.",
        epilog="exit codes: 0 pass, 1 a threshold or regression failed, 2 bad usage or input",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = _command(
        commands,
        "check",
        summary="check every run under LOGDIR against threshold rules",
        description="Check every scalar of every run under LOGDIR against threshold rules.",
        epilog=_CHECK_EPILOG,
    )
    check.add_argument(
        "logdir", metavar="LOGDIR", help="TensorBoard log directory (searched recursively)"
    )
    check.add_argument("--thresholds", required=True, metavar="FILE", help="TOML threshold file")
    check.add_argument("--json", metavar="OUT", help="also write a JSON report to OUT")
    check.add_argument("--junit", metavar="OUT", help="also write a JUnit XML report to OUT")
    check.add_argument(
        "--failures-only",
        action="store_true",
        help="print only the rows that did not pass (FAIL and WARN); the summary line counts all",
    )
    check.set_defaults(handler=_check)

    compare = _command(
        commands,
        "compare",
        summary="compare the scalars of two log directories",
        description="Compare the last (or mean) value of every scalar tag of two log directories.",
        epilog=_COMPARE_EPILOG,
    )
    compare.add_argument("baseline", metavar="BASELINE", help="log directory of the reference run")
    compare.add_argument("candidate", metavar="CANDIDATE", help="log directory of the new run")
    compare.add_argument(
        "--tags",
        action="append",
        metavar="GLOB",
        help="only compare tags matching GLOB (repeatable; default: all tags)",
    )
    compare.add_argument(
        "--rtol", type=_non_negative, default=0.1, help="relative tolerance (default 0.1)"
    )
    compare.add_argument(
        "--atol", type=_non_negative, default=0.0, help="absolute tolerance (default 0)"
    )
    compare.add_argument(
        "--over",
        choices=("last", "mean"),
        default="last",
        help="value compared per tag: the last point or the mean of all points (default last)",
    )
    compare.add_argument("--json", metavar="OUT", help="also write a JSON report to OUT")
    compare.add_argument(
        "--failures-only",
        action="store_true",
        help="print only the tags that differ; the summary line counts all",
    )
    compare.set_defaults(handler=_compare)

    summary = _command(
        commands,
        "summary",
        summary="print the latest value of every diagnostic, layer by layer",
        description="Print the latest value of every diagnostic as a per-layer table.",
        epilog=_SUMMARY_EPILOG,
    )
    summary.add_argument(
        "logdir", metavar="LOGDIR", help="TensorBoard log directory (searched recursively)"
    )
    summary.add_argument(
        "--wide",
        action="store_true",
        help=f"every logged column and full names (default: fit {SUMMARY_WIDTH} columns)",
    )
    summary.set_defaults(handler=_summary)

    diagnose = _command(
        commands,
        "diagnose",
        summary="say what is wrong, in which layer, since which step, and what to try",
        description="Diagnose every run under LOGDIR: findings ranked by severity and step.",
        epilog=_DIAGNOSE_EPILOG,
    )
    diagnose.add_argument(
        "logdir", metavar="LOGDIR", help="TensorBoard log directory (searched recursively)"
    )
    diagnose.add_argument("--json", metavar="OUT", help="also write a JSON report to OUT")
    diagnose.add_argument(
        "--fail-on",
        choices=("error", "warning"),
        help="exit 1 when a finding of this severity or worse exists",
    )
    diagnose.set_defaults(handler=_diagnose)

    baseline = _command(
        commands,
        "baseline",
        summary="write a threshold file from a healthy run",
        description="Write a threshold file whose bounds surround what a healthy run logged.",
        epilog=_BASELINE_EPILOG,
    )
    baseline.add_argument("run", metavar="RUN_DIR", help="log directory of one healthy run")
    baseline.add_argument("--out", required=True, metavar="FILE", help="threshold file to write")
    baseline.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    baseline.add_argument(
        "--factor",
        type=_factor,
        default=DEFAULT_FACTOR,
        help=f"how far scale quantities may move, as a factor (default {DEFAULT_FACTOR:g})",
    )
    baseline.add_argument(
        "--margin",
        type=_non_negative,
        default=DEFAULT_FRACTION_MARGIN,
        help=f"how far fractions and cosines may move (default {DEFAULT_FRACTION_MARGIN:g})",
    )
    baseline.set_defaults(handler=_baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``ln-diagnostics`` command line and return its exit code.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 when everything passed, 1 when a threshold or comparison failed, 2 on bad usage or
        bad input (after printing one line that names the file, key or line on stderr).

    Example:
        >>> main(["summary", "does/not/exist"])  # doctest: +SKIP
        2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    try:
        return int(args.handler(args))
    except (RuleError, LogDirError, InputError) as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader went away (`... | head`): no traceback, and no verdict, so never "pass"
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
