"""Log-reader benchmark: ``check``, ``compare`` and ``summary`` on big logs, beside TensorBoard.

Writes a log of ``layers × 8 stats × steps`` scalar points (one ``Summary`` proto per step, the
way ``LayerDiagnostics`` writes), then measures, each in a fresh process, the wall time and peak
resident memory of

* ``ln-diagnostics check`` (rules that read every point), ``compare`` (the log against itself:
  both sides read) and ``summary``;
* TensorBoard's ``EventAccumulator`` loading every scalar (``size_guidance={"scalars": 0}``),
  which is what the CLI used before it streamed.

Usage::

    python benchmarks/log_reader.py                      # 0.8 M and 8 M points (50, 500 layers)
    python benchmarks/log_reader.py --layers 50 --steps 200 --json out.json

It also times ``check`` with ``--rules`` exact-tag rules (16,000 by default) to show that the
cost is linear in the number of rules.

Peak memory is the child's ``ru_maxrss`` and CPU time its ``ru_utime + ru_stime``, from
``os.wait4``, so every number belongs to one process; CPU seconds stay meaningful on a machine
shared with other work, where wall seconds do not. Logs are written once into ``--workdir``
and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

from ln_diagnostics.tags import ACTIVATIONS, tag
from ln_diagnostics.tensorboard.reader import frame

ROOT = Path(__file__).resolve().parents[1]
STATS = ("mean", "std", "rms", "min", "max", "zero_frac", "kurtosis", "nonfinite")
RULES = """\
[[rule]]
name = "every point bounded"
tag = "activations/*"
max = 1e6
over = "all"

[[rule]]
name = "std mean positive"
tag = "activations/std/*"
min = 0.0
over = "mean"

[[rule]]
name = "not dead at the end"
tag = "activations/zero_frac/*"
max = 1.0
over = "last"
"""
TENSORBOARD = (
    "import sys\n"
    "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
    "acc = EventAccumulator(sys.argv[1], size_guidance={'scalars': 0})\n"
    "acc.Reload()\n"
    "print(sum(len(acc.Scalars(t)) for t in acc.Tags()['scalars']))\n"
)


def write_log(directory: Path, layers: int, steps: int, *, stats: tuple[str, ...] = STATS) -> Path:
    """A run of ``layers × len(stats) × steps`` scalars, one Summary proto per step."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "events.out.tfevents.1700000000.bench.1.0"
    tags = [tag(ACTIVATIONS, stat, f"net.{layer}") for layer in range(layers) for stat in stats]
    rng = np.random.default_rng(0)
    with open(path, "wb") as file:
        file.write(frame(Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString()))
        for step in range(steps):
            values = rng.random(len(tags)).tolist()
            summary = Summary(
                value=[
                    Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, values, strict=True)
                ]
            )
            event = Event(wall_time=1.7e9 + step, step=step, summary=summary)
            file.write(frame(event.SerializeToString()))
    return path


def measure(command: list[str]) -> dict[str, Any]:
    """Run ``command``; its wall and CPU seconds and its peak RSS in MB (it must exit 0)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        if process.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {process.returncode}: {errors.read()[-2000:]!r}"
            )
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_mb": round(usage.ru_maxrss / 1024, 1),
    }


def run(layers: int, steps: int, workdir: Path, tensorboard: bool) -> dict[str, Any]:
    """Measure every tool on one log size."""
    logdir = workdir / f"log_{layers}x{len(STATS)}x{steps}"
    path = logdir / "events.out.tfevents.1700000000.bench.1.0"
    if not path.exists():
        write_log(logdir, layers, steps)
    rules = workdir / "rules.toml"
    rules.write_text(RULES)
    cli = [sys.executable, "-m", "ln_diagnostics"]
    tools = {
        "check": [*cli, "check", str(logdir), "--thresholds", str(rules)],
        "compare": [*cli, "compare", str(logdir), str(logdir)],
        "summary": [*cli, "summary", str(logdir)],
    }
    if tensorboard:
        tools["EventAccumulator"] = [sys.executable, "-c", TENSORBOARD, str(logdir)]
    return {
        "points": layers * len(STATS) * steps,
        "layers": layers,
        "steps": steps,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "tools": {name: measure(command) for name, command in tools.items()},
    }


def many_rules(count: int, workdir: Path) -> dict[str, Any]:
    """``check`` with ``count`` exact-tag rules on a log of ``count`` tags × 3 steps."""
    logdir = workdir / f"rules_{count}"
    if not logdir.exists():
        write_log(logdir, count, 3, stats=("std",))
    rules = workdir / f"rules_{count}.toml"
    rules.write_text(
        "".join(
            f'[[rule]]\ntag = "{tag(ACTIVATIONS, "std", f"net.{n}")}"\nmax = 1.0\n'
            for n in range(count)
        )
    )
    command = [sys.executable, "-m", "ln_diagnostics", "check", str(logdir), "--thresholds"]
    return {"rules": count, **measure([*command, str(rules), "--json", str(workdir / "r.json")])}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per size, wall seconds (CPU seconds) / peak MB per tool."""
    tools = list(rows[0]["tools"])
    lines = [
        "| points | file MB | " + " | ".join(f"{t} s (CPU s) / MB" for t in tools) + " |",
        "|---|---|" + "---|" * len(tools),
    ]
    for row in rows:
        cells = [
            f"{row['tools'][t]['seconds']:.1f} ({row['tools'][t]['cpu_seconds']:.1f}) / "
            f"{row['tools'][t]['peak_mb']:.0f}"
            for t in tools
        ]
        lines.append(
            f"| {row['points'] / 1e6:g} M | {row['file_mb']:g} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; return the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="50,500", help="comma-separated layer counts")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, help="where logs are written (default: a temp dir)")
    parser.add_argument("--no-tensorboard", action="store_true", help="skip EventAccumulator")
    parser.add_argument("--rules", type=int, default=16000, help="rule count of the rules run")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ln_diagnostics_log_reader_"))
    rows = [
        run(int(layers), args.steps, workdir, not args.no_tensorboard)
        for layers in args.layers.split(",")
    ]
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    print(table(rows))
    rules = many_rules(args.rules, workdir)
    print(
        f"check, {rules['rules']} exact-tag rules on {rules['rules']} tags x 3 steps (JSON "
        f"report on): {rules['seconds']:.1f} s ({rules['cpu_seconds']:.1f} s CPU) / "
        f"{rules['peak_mb']:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps({"sizes": rows, "rules": rules}, indent=2) + "\n")
    return {"sizes": rows, "rules": rules}


if __name__ == "__main__":
    main()
