"""Progress of a local run: records read / scored / errors and records/s while it runs.

The steps add to one process-wide, thread-safe tally (`pipeline.counters.TALLY`) where they
already count: the reading step (`pipeline.read.CheckedRecords`: records read, malformed and
invalid ones as errors) and the scoring step (`pipeline.inference.dofn.RunInferenceFn`:
records scored, records the model failed on as errors). `pipeline.runners.launch.launch`
runs a `Reporter` thread beside a local run that shows the tally on stderr:

- on a terminal, one line rewritten in place (``\\r``) twice a second, e.g.
  ``read 1,234,567 · scored 1,230,000 · errors 4,567 · 152,300 records/s · 0:08``,
  ended with a newline when the run ends, so the summary printed after it starts clean;
- otherwise (a log file, CI), a line ``adpredict progress: read … · 0:30`` every 30
  seconds (``ADPREDICT_PROGRESS_SECONDS`` sets the period), and one last line with the
  final numbers if the run lasted long enough to print any.

Only runs whose steps execute in this process can be followed this way: the FnApiRunner
(what a local ``DirectRunner`` run uses here) in its ``in_memory`` and ``multi_threading``
modes. Under ``--direct_running_mode multi_processing`` the steps run in worker processes
whose tallies this process cannot see, and on Dataflow on remote workers: no reporter is
started for them. Dataflow shows the Beam counters instead (`pipeline.counters`).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from pipeline.counters import TALLY, Tally
from pipeline.runners.local import runs_in_process

PERIOD_ENV = "ADPREDICT_PROGRESS_SECONDS"
LOG_PERIOD = 30.0  # seconds between log lines when stderr is not a terminal
TTY_PERIOD = 0.5  # seconds between redraws on a terminal
LOG_PREFIX = "adpredict progress: "


def elapsed_text(seconds: float) -> str:
    """0:08, 12:34, 1:02:03."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(read: int, scored: int, errors: int, seconds: float) -> str:
    """`read 1,234,567 · scored 1,230,000 · errors 4,567 · 152,300 records/s · 0:08`;
    records/s is records read over the time so far."""
    rate = read / seconds if seconds > 0 else 0.0
    return (
        f"read {read:,} · scored {scored:,} · errors {errors:,} · "
        f"{rate:,.0f} records/s · {elapsed_text(seconds)}"
    )


def log_period() -> float:
    """Seconds between log lines: ADPREDICT_PROGRESS_SECONDS, else LOG_PERIOD."""
    value = os.environ.get(PERIOD_ENV)
    if value:
        try:
            if float(value) > 0:
                return float(value)
        except ValueError:
            pass
    return LOG_PERIOD


class Reporter:
    """Shows `tally` on `stream` (stderr) from a daemon thread between start() and stop().

    Also a context manager. The tally is reset at start, so each run counts from zero.
    """

    def __init__(self, stream=None, tally: Tally = TALLY, period: float | None = None, clock=time.monotonic):
        self._stream = stream if stream is not None else sys.stderr
        self._tally = tally
        try:
            self._tty = bool(self._stream.isatty())
        except (AttributeError, ValueError):  # a closed or odd stream
            self._tty = False
        self._period = period if period is not None else (TTY_PERIOD if self._tty else log_period())
        self._clock = clock
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = 0  # lines drawn or logged
        self._width = 0  # of the line now on the terminal

    @property
    def tty(self) -> bool:
        return self._tty

    def start(self) -> Reporter:
        self._tally.reset()
        self._started = self._clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="adpredict-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the thread and, if anything was shown, shows the final numbers and ends the line."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._shown:
            self.show(final=True)

    def __enter__(self) -> Reporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self.show()

    def line(self) -> str:
        return progress_line(*self._tally.snapshot(), self._clock() - self._started)

    def show(self, final: bool = False) -> None:
        """Draws the line in place (terminal) or logs it; `final` ends a terminal's line."""
        line = self.line()
        try:
            if self._tty:
                padding = " " * max(0, self._width - len(line))  # clears what a longer line left
                self._stream.write("\r" + line + padding + ("\n" if final else ""))
                self._width = 0 if final else len(line)
            else:
                self._stream.write(f"{LOG_PREFIX}{line}\n")
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: progress is not worth failing a run
            return
        self._shown += 1


def reporter_for(options, stream=None) -> Reporter | None:
    """A Reporter for a run with `options`, or None where its steps run elsewhere or the
    user turned progress off (--no_progress)."""
    if options.get_all_options().get("no_progress") or not runs_in_process(options):
        return None
    return Reporter(stream)
