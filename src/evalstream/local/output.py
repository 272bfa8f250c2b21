"""``up``'s own output (stdout), which may break: a pipe whose reader exits, a terminal that closed.
A failed write marks it broken instead of raising, so ``up`` still stops the stack in order.
"""

from __future__ import annotations

import os
import select
import sys
from typing import IO

from rich.console import Console, RenderableType
from rich.table import Table

from evalstream.runtime.tables import print_table

__all__ = ["Output"]


class _Console(Console):
    """rich's Console, but a broken pipe marks ``up``'s output broken instead of exiting at once
    (rich's default raises SystemExit, which would skip stopping the stack)."""

    def __init__(self, output: Output, stream: IO[str]) -> None:
        super().__init__(file=stream)
        self._output = output

    def on_broken_pipe(self) -> None:
        self._output.mark_broken()


class Output:
    """``up``'s own output (stdout), which may break: a pipe whose reader exits, a closed terminal.

    A failed write marks it broken instead of raising, and points stdout at /dev/null so that
    nothing (rich, the interpreter's last flush) tries it again; ``up`` then stops the stack.
    ``reader_gone`` notices a pipe whose reader has exited even while ``up`` writes nothing."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self.console: Console = _Console(self, self._stream)
        self.broken = False

    def print(self, *objects: RenderableType) -> None:
        if self.broken:
            return
        try:
            self.console.print(*objects)
            self._stream.flush()
        except OSError:  # EPIPE, or EIO from a terminal that went away
            self.mark_broken()

    def print_table(self, table: Table) -> None:
        """``print_table`` (a table too wide for the console turned on its side), guarded as ``print``."""
        if self.broken:
            return
        try:
            print_table(self.console, table)
            self._stream.flush()
        except OSError:
            self.mark_broken()

    def reader_gone(self) -> bool:
        """True once stdout is a pipe (or socket) with nobody left to read it."""
        if self.broken:
            return True
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(mask & (select.POLLERR | select.POLLHUP) for _, mask in poller.poll(0)):
            self.mark_broken()
        return self.broken

    def mark_broken(self) -> None:
        """Write nothing more, and send what is still buffered for stdout to /dev/null."""
        self.broken = True
        self.console.quiet = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
