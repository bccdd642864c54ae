"""Progress that shows in a terminal and when piped.

In a terminal rich draws a live progress bar. Anywhere else (a pipe, a log
file, CI) rich draws nothing at all, so a long run looked hung:
:class:`PlainProgress` prints a plain line now and then instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rich.console import Console


class PlainProgress:
    """Plain progress lines, at most one every ``every_s`` seconds (see :meth:`tick`)."""

    def __init__(
        self,
        console: Console,
        *,
        every_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.every_s = every_s
        self.clock = clock
        self.started = clock()
        self._last = -math.inf

    def elapsed(self) -> float:
        """Seconds since this progress began."""
        return self.clock() - self.started

    def line(self, text: str) -> None:
        """Print ``text`` now (plain: never read as markup)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        self._last = self.clock()

    def tick(self, text: Callable[[], str]) -> bool:
        """Print ``text()`` if ``every_s`` went by since the last line; says whether it did.

        ``text`` is only called when a line is due, so it may be costly.
        """
        if self.clock() - self._last < self.every_s:
            return False
        self.line(text())
        return True
