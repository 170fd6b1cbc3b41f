"""The depth pictures drawn in a helper process, off the training path.

A heat map or a depth profile takes matplotlib 0.1-0.5 s to draw. In the training process that
time stalls the step that draws (and, at fit end, the fit), and a thread would not help: drawing
holds the GIL, so every kernel the training loop returns from would wait for it. A
:class:`Painter` hands each drawing to one helper process (the Python running training, with
``-c`` calling :func:`main`; started by :meth:`Painter.start` and kept for the run), which renders
it with the same functions (:mod:`ln_diagnostics.tensorboard.heatmap`) and sends back the
encoded ``Summary``. The training process writes it into its own event file when it is back: at
a later logging step, or at :meth:`Painter.close`, which waits for every drawing still out.

The helper says when it is ready (matplotlib imported and warmed up, ~1 s after
:meth:`Painter.start`): a drawing asked for before that, as in a fit of a few seconds, or by a
painter never started, is drawn in the training process at once, since waiting for the helper
would take longer.

Nothing is lost or silent: if the helper cannot start or stops, the painter says so once and draws
in the training process from then on, the drawings that were out included; a drawing that fails
warns with its error; :meth:`Painter.close` names the steps it gave up on after
:data:`WAIT_S` seconds.

Example:
    >>> from ln_diagnostics.tensorboard.heatmap import BACKPROP_SCALE
    >>> written = []
    >>> painter = Painter(lambda summary, step: written.append((summary.value[0].tag, step)))
    >>> painter.start()
    >>> painter.wait_until_ready()
    True
    >>> painter.submit(7, [Picture("heatmaps/x", "heatmap", {
    ...     "values": [[0.0]], "row_labels": ["a"], "steps": [7], "scale": BACKPROP_SCALE})])
    >>> painter.close()
    >>> written
    [('heatmaps/x', 7)]
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from tensorboard.compat.proto.summary_pb2 import Summary

from ln_diagnostics.tensorboard.heatmap import Scale, render_heatmap, render_profiles
from ln_diagnostics.tensorboard.writer import image_summary

__all__ = ["WAIT_S", "Painter", "Picture", "render"]

#: Longest :meth:`Painter.close` waits for the drawings still out.
WAIT_S = 60.0
#: The job id of the helper's message that it is ready.
_READY = -1

_RENDERERS: dict[str, Callable[..., Any]] = {
    "heatmap": render_heatmap,
    "profiles": render_profiles,
}


class Picture(NamedTuple):
    """One image to draw: ``render_<kind>(**args)`` written under ``tag``."""

    tag: str
    kind: str
    args: dict[str, Any]


def render(picture: Picture) -> Summary:
    """Draw ``picture`` and encode it as an image ``Summary``."""
    return image_summary(picture.tag, _RENDERERS[picture.kind](**picture.args))


class _Job(NamedTuple):
    step: int
    pictures: Sequence[Picture]


class Painter:
    """Draws :class:`Picture` lists in a helper process and writes them as they come back.

    Args:
        write: ``write(summary, step)`` appends an image to the run's event file; called in the
            training process, from :meth:`submit`, :meth:`poll`, :meth:`wait_until_ready` and
            :meth:`close` only.
        warn: how to warn (once per message is the caller's business).
    """

    def __init__(
        self,
        write: Callable[[Summary, int], None],
        warn: Callable[[str], None] = warnings.warn,
    ) -> None:
        self._write, self._warn = write, warn
        self._process: subprocess.Popen[bytes] | None = None
        self._done: queue.SimpleQueue[tuple[int, list[bytes], str | None] | None] = (
            queue.SimpleQueue()
        )
        self._pending: dict[int, _Job] = {}
        self._next_id = 0
        self._in_process = False
        self._ready = False

    # ------------------------------------------------------------------ the helper
    def start(self) -> None:
        """Start the helper now (it imports matplotlib while training goes on); idempotent."""
        if self._process is not None or self._in_process:
            return
        if getattr(sys, "frozen", False):  # its executable is the application, not Python
            self._give_up("cannot start in a frozen application")
            return
        root = str(Path(__file__).resolve().parents[2])  # this copy of ln_diagnostics
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _HELPER, root],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # Ctrl+C stops the training, not the drawing
            )
        except (OSError, ValueError) as exc:
            self._give_up(f"could not start ({type(exc).__name__}: {exc})")
            return
        stdout = self._process.stdout
        assert stdout is not None  # stdout=PIPE
        self._done = queue.SimpleQueue()  # this helper's results only
        self._ready = False
        threading.Thread(
            target=_read_messages,
            args=(stdout, self._done),
            name="ln-diagnostics-painter",
            daemon=True,
        ).start()

    def _give_up(self, why: str) -> None:
        """Draw in this process from now on, the drawings that were out first."""
        self._warn(
            f"ln-diagnostics: the helper process that draws the heat maps and the depth profile "
            f"{why}; they are drawn in the training process from now on, which stalls the "
            "logging step that draws them for a few hundred milliseconds."
        )
        self._in_process = True
        self._stop()
        pending, self._pending = self._pending, {}
        for job in pending.values():
            self._draw_here(job)

    def _stop(self) -> None:
        """End the helper (it holds nothing to save: what it drew has been received)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        if process.stdin is not None:
            with suppress(OSError):
                process.stdin.close()

    def wait_until_ready(self, timeout: float = WAIT_S) -> bool:
        """Wait (at most ``timeout`` s) until the started helper is ready; whether it is."""
        deadline = time.monotonic() + timeout
        while not self._ready and self._process is not None:
            try:
                message = self._done.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self._receive(message)
        return self._ready

    # ------------------------------------------------------------------ drawings
    def submit(self, step: int, pictures: Sequence[Picture]) -> None:
        """Draw ``pictures`` for ``step``; they are written once drawn (see :meth:`poll`)."""
        self.poll()
        job = _Job(step, list(pictures))
        if not job.pictures:
            return
        if self._process is None or not self._ready:  # no helper, or one still starting up
            self._draw_here(job)
            return
        job_id, self._next_id = self._next_id, self._next_id + 1
        self._pending[job_id] = job
        stdin = self._process.stdin
        assert stdin is not None  # stdin=PIPE
        try:
            pickle.dump((job_id, job.pictures), stdin)
            stdin.flush()
        except OSError as exc:
            self._give_up(f"stopped ({type(exc).__name__}: {exc})")
        except BaseException:  # e.g. Ctrl+C halfway through the job: the helper cannot go on
            del self._pending[job_id]
            self._stop()
            raise

    def poll(self) -> None:
        """Write the drawings that are back, without waiting."""
        while self._process is not None:
            try:
                message = self._done.get_nowait()
            except queue.Empty:
                return
            self._receive(message)

    def close(self, timeout: float = WAIT_S) -> None:
        """Wait for the drawings still out (at most ``timeout`` s), write them, stop the helper."""
        deadline = time.monotonic() + timeout
        try:
            while self._pending:
                try:
                    message = self._done.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    steps = sorted({job.step for job in self._pending.values()})
                    self._warn(
                        f"ln-diagnostics: the heat maps and depth profile of step(s) {steps} "
                        f"were not drawn within {timeout:g} s and are missing from TensorBoard."
                    )
                    self._pending = {}
                    break
                self._receive(message)
        finally:
            self._stop()

    def _receive(self, message: tuple[int, list[bytes], str | None] | None) -> None:
        if message is None:  # the helper's output ended
            if self._process is not None:  # not by our hand
                code = self._process.poll()
                self._give_up("stopped" if code is None else f"stopped (exit code {code})")
            return
        job_id, encoded, error = message
        if job_id == _READY:
            self._ready = True
            return
        job = self._pending.pop(job_id, None)
        if job is not None:
            self._deliver(job.step, [Summary.FromString(data) for data in encoded], error)

    def _draw_here(self, job: _Job) -> None:
        self._deliver(job.step, *_render_all(job.pictures))

    def _deliver(self, step: int, summaries: list[Summary], error: str | None) -> None:
        """Write a job's drawings, or warn with the error that stopped them."""
        if error is not None:
            self._warn(f"ln-diagnostics: drawing the pictures of step {step} failed:\n{error}")
        for summary in summaries:
            self._write(summary, step)


def _render_all(pictures: Sequence[Picture]) -> tuple[list[Summary], str | None]:
    """Draw ``pictures``: their summaries, or none and the traceback of the failure."""
    try:
        return [render(picture) for picture in pictures], None
    except Exception:
        return [], traceback.format_exc()


def _read_messages(stream: BinaryIO, messages: queue.SimpleQueue[Any]) -> None:
    """A reader thread: each message of ``stream`` into ``messages``, then ``None`` at its end or
    at anything it cannot read (the painter reads the helper's results so, the helper its jobs)."""
    with stream, suppress(Exception):
        while True:
            messages.put(pickle.load(stream))
    messages.put(None)


def _warm_up() -> None:
    """Draw a throw-away picture: matplotlib's import and font cache are paid before the first
    job, while the run trains, not while a job is waited for."""
    scale = Scale(0.0, 1.0, False, "viridis", "")
    render(
        Picture(
            "", "heatmap", {"values": [[0.0]], "row_labels": [""], "steps": [0], "scale": scale}
        )
    )


#: The helper's command line: this copy of the package first on the path if it is not there.
_HELPER = (
    "import sys; root = sys.argv[1]; root in sys.path or sys.path.insert(0, root); "
    "from ln_diagnostics.tensorboard.painter import main; main()"
)


def main() -> None:
    """The helper: draw each job read from standard input, write its result to standard out.

    The results go to a copy of file descriptor 1, which then points to standard error, so that
    nothing else (a print, a library's C code) can write into them. A thread reads the jobs as
    they come, so that the training process never blocks writing a job larger than the pipe's
    buffer while a drawing is in progress here.
    """
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    threading.Thread(target=_read_messages, args=(sys.stdin.buffer, jobs), daemon=True).start()
    _warm_up()
    pickle.dump((_READY, [], None), results)
    results.flush()
    while (job := jobs.get()) is not None:
        job_id, pictures = job
        summaries, error = _render_all(pictures)
        encoded = [summary.SerializeToString() for summary in summaries]
        pickle.dump((job_id, encoded, error), results)
        results.flush()
