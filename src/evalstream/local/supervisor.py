"""Child processes for ``evalstream up`` and tests: start, wait for the ready line, stop with grace.

Each child writes its output to a log file. Servers started on port 0 print one ready line with
their address (e.g. ``evalstream-judge listening on 127.0.0.1:40123``); ``start`` waits for that
line, with a deadline, and returns the match.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from evalstream.runtime.procs import wait_until

__all__ = ["ChildProcess", "ChildStartError", "python_module"]

log = logging.getLogger(__name__)


class ChildStartError(RuntimeError):
    """A child process exited early or never printed its ready line."""


def python_module(module: str, *args: str) -> list[str]:
    """Command line to run ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


@dataclass(kw_only=True)
class ChildProcess:
    name: str
    cmd: list[str]
    log_file: Path
    ready: str | None = None  # regex the output must match before the child counts as started
    env: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def output(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 60.0) -> re.Match[str] | None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log.info("starting %s: %s (log %s)", self.name, " ".join(self.cmd), self.log_file)
        with self.log_file.open("wb") as out:
            self._proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        if self.ready is None:
            return None
        pattern = re.compile(self.ready)
        found: list[re.Match[str]] = []

        def is_ready() -> bool:
            if match := pattern.search(self.output()):
                found.append(match)
                return True
            return not self.alive

        try:
            wait_until(is_ready, timeout=timeout, what=f"{self.name} to print {self.ready!r}")
        except TimeoutError as exc:
            self.stop()
            raise ChildStartError(
                f"{self.name} did not start in {timeout:.0f}s; log: {self.log_file}"
            ) from exc
        if not found:
            tail = "\n".join(self.output().splitlines()[-20:])
            raise ChildStartError(
                f"{self.name} exited with code {self.returncode} before it was ready; "
                f"log {self.log_file}:\n{tail}"
            )
        return found[0]

    def signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        if self._proc is None:
            raise ChildStartError(f"{self.name} was never started")
        return self._proc.wait(timeout)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs: killing it", self.name, grace)
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
