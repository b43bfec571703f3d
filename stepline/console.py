"""What the ``stepline`` command prints: tables, progress bars and error lines, drawn by ``rich``.

On a terminal, tables get a header rule and progress bars redraw in place; when output is piped or redirected,
tables are plain aligned columns with no box characters or colours, progress bars are not drawn at all (a log
file would fill with redraws), and nothing wraps. Errors go to stderr as one line ``stepline: error: ...``.

While a long command draws progress, warnings logged by the SDK and the workers are gathered instead of printed
between redraws (:func:`gathered_warnings`), then summarised once: a count per kind of warning and its first
examples.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

#: Wide enough that a piped table never wraps (rich assumes 80 columns when it cannot ask a terminal).
_PIPED_WIDTH = 10_000


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(file=stream, highlight=False, soft_wrap=True, width=None if tty else _PIPED_WIDTH,
                   no_color=not tty)


def print_table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """Print rows under ``columns`` (``(header, "left"|"right")`` pairs) to stdout."""
    out = _console(False)
    t = Table(box=box.SIMPLE_HEAD if out.is_terminal else None, title=title, title_justify="left",
              show_edge=False, pad_edge=False, header_style="bold" if out.is_terminal else "")
    for header, justify in columns:
        t.add_column(header, justify="right" if justify == "right" else "left", no_wrap=True)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    # A table wider than the terminal runs past its edge rather than cutting run ids and reasons with "…".
    needed = Measurement.get(out, out.options.update(width=_PIPED_WIDTH), t).maximum
    out.width = max(out.width, needed)
    out.print(t)


def progress(enabled: bool = True) -> Progress:
    """A progress display on stderr (a context manager); drawn only on a terminal and when ``enabled``."""
    err = _console(True)
    return Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, disable=not (enabled and err.is_terminal), transient=False)


def error(message: str) -> None:
    """One line on stderr: ``stepline: error: <message>``."""
    _console(True).print(f"stepline: error: {message}", markup=False, highlight=False)


class WarningSummary(logging.Handler):
    """Counts warnings by kind (their message template) and keeps the first ``examples`` of each, in order."""

    def __init__(self, examples: int = 2) -> None:
        super().__init__(logging.WARNING)
        self.examples = examples
        self.counts: dict[str, int] = {}
        self.first: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        kind = str(record.msg)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        shown = self.first.setdefault(kind, [])
        if len(shown) < self.examples:
            try:
                shown.append(record.getMessage())
            except (TypeError, ValueError):  # a malformed call: its template is still worth showing
                shown.append(kind)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """``N x <kind>`` per kind, most frequent first, each followed by its first examples."""
        out = []
        for kind, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            label = re.sub(r"%[-+ #0-9.]*[sdifrx]", "…", kind).removeprefix("stepline: ")
            out.append(f"{n} x {label}")
            out += [f"    e.g. {ex.removeprefix('stepline: ')}" for ex in self.first[kind]]
        return out


@contextlib.contextmanager
def gathered_warnings(*loggers: str, examples: int = 2) -> Iterator[WarningSummary]:
    """Gather the warnings of ``loggers`` (e.g. ``"ingest"``) instead of printing them while the block runs."""
    summary = WarningSummary(examples)
    saved = []
    for name in loggers:
        lg = logging.getLogger(name)
        saved.append((lg, lg.propagate))
        lg.addHandler(summary)
        lg.propagate = False  # (nor through the root's handlers, nor Python's last-resort stderr printer)
    try:
        yield summary
    finally:
        for lg, propagate in saved:
            lg.removeHandler(summary)
            lg.propagate = propagate


def print_warnings(summary: WarningSummary, what: str = "warnings") -> None:
    """The summary on stderr, when there is anything to say."""
    if summary.total:
        err = _console(True)
        err.print(f"{summary.total} {what}:", markup=False, highlight=False)
        for line in summary.lines():
            err.print(f"  {line}", markup=False, highlight=False)
