"""Progress of long work that is not training: decoding a data set into its cache, rendering
the shapes, the IWAE evaluation, writing a sweep report.

    with Progress("IWAE bound (k=1000)", total=10_000, unit="images") as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))

The rule: nothing at all for work done within `after` seconds (2 by default), whatever its
number of steps; the step count says little about the time (the IWAE evaluation of eval.py is 20
batches and half an hour). Past that: a bar with the rate and the time left when stderr is a
terminal; otherwise (a log file, a batch job) a line through `logging` when it starts to show
and at each further tenth done, so that Hydra's train.log / eval.log get them. Either way one
line when the work ends, with its time and rate. The environment variable VAE_PROGRESS_AFTER
sets `after` for every such work: seconds (0 shows all progress), or `off`.

`advance` costs a float addition, a clock read and a comparison; the bar and the lines are
updated at most every 0.1 s. It takes plain numbers, never tensors, so it adds no host-device
synchronisation. Only the process of rank zero reports (the others run the same work).
"""

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

log = logging.getLogger(__name__)

AFTER_VARIABLE = "VAE_PROGRESS_AFTER"
DEFAULT_AFTER = 2.0  # seconds of work before any progress is shown
LOG_EVERY = 0.1  # a log line at each further tenth of the work
REFRESH = 0.1  # seconds between two looks at the clock's verdict

clock = time.monotonic
T = TypeVar("T")


def progress_after() -> float:
    """Seconds of work before progress shows: VAE_PROGRESS_AFTER, else DEFAULT_AFTER."""
    value = os.environ.get(AFTER_VARIABLE, "").strip().lower()
    if not value:
        return DEFAULT_AFTER
    if value in ("off", "never", "no", "false"):
        return math.inf
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        log.warning(
            "%s=%r is not a number of seconds >= 0 or `off`: using %g",
            AFTER_VARIABLE,
            value,
            DEFAULT_AFTER,
        )
        return DEFAULT_AFTER
    return seconds


def duration(seconds: float) -> str:
    """12.3s, 4m 05s, 2h 03m."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _count(value: float) -> str:
    if abs(value - round(value)) < 1e-6:  # a sum of fractions of a step that came out whole
        value = round(value)
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _rate(per_second: float | None, unit: str) -> str:
    if not per_second:
        return f"? {unit}/s"
    if per_second >= 100:
        return f"{per_second:,.0f} {unit}/s"
    return f"{per_second:.3g} {unit}/s"


def _terminal() -> bool:
    """Whether stderr, where the bar would go, is a terminal."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(_rate(task.speed, self.unit), style="progress.data.speed")


class Progress:
    """Progress of `total` units of work named `description` (see the module's docstring);
    a context manager, advanced with `advance(n)` or by iterating `track(items)`. `closing_line`
    False leaves out the line at the end, where the caller's own says that the work is done."""

    def __init__(
        self,
        description: str,
        total: float,
        unit: str = "steps",
        after: float | None = None,
        every: float = LOG_EVERY,
        closing_line: bool = True,
    ):
        self.description, self.total, self.unit = description, max(float(total), 0.0), unit
        self.after = progress_after() if after is None else after
        self.every = every
        self.closing_line = closing_line
        self.done = 0.0
        self._start = self._due = math.inf
        self._mode: str | None = None  # None until shown, then "bar" or "log"
        self._logged = -1  # the last tenth a line was written for
        self._bar: RichProgress | None = None
        self._task = None

    def __enter__(self) -> "Progress":
        self._start = clock()
        self._due = self._start + self.after if rank_zero_only.rank == 0 else math.inf
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elapsed = clock() - self._start
        ended_late = kind is None and elapsed >= self.after and rank_zero_only.rank == 0
        if ended_late and self.closing_line:
            rate = self.done / elapsed if elapsed > 0 else None
            log.info(
                "%s: %s %s in %s, %s",
                self.description,
                _count(self.done),
                self.unit,
                duration(elapsed),
                _rate(rate, self.unit),
            )
        self._due = math.inf

    def advance(self, n: float = 1) -> None:
        self.done += n
        if clock() >= self._due:
            self._show()

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """The items, advancing by one after each."""
        for item in items:
            yield item
            self.advance()

    def _show(self) -> None:
        now = clock()
        self._due = now + REFRESH
        if self._mode is None:
            self._mode = "bar" if _terminal() else "log"
            if self._mode == "bar":
                self._start_bar()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        fraction = self.done / self.total if self.total else 1.0
        tenth = math.floor(fraction / self.every + 1e-9)
        if tenth <= self._logged or fraction >= 1:
            return  # the end is the line of __exit__
        self._logged = tenth
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else None
        left = (self.total - self.done) / rate if rate else math.inf
        log.info(
            "%s: %d%% (%s/%s %s), %s, %s left",
            self.description,
            math.floor(100 * fraction),
            _count(self.done),
            _count(self.total),
            self.unit,
            _rate(rate, self.unit),
            duration(left),
        )

    def _start_bar(self) -> None:
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            _RateColumn(self.unit),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._bar.add_task(self.description, total=self.total, completed=self.done)
        self._bar.start()
