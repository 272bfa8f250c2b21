"""The one launcher for child processes: ``evalstream up``, the local servers, tests and benchmarks.

``ChildProcess`` starts a command with an environment, sends its output to a log file (or reads its
stdout through a pipe), waits with a deadline until it is ready, restarts it with the same command
(so a server given a fixed port comes back on that port), and stops it with a grace period (the
stop signal, then SIGKILL). Readiness is either a ``ReadyLine`` (``evalstream.runtime.ready``: the
server prints the line with the same object the launcher parses it with) or a probe, a function
that says whether the child serves yet (``http_probe``, ``port_probe``).

Children never outlive their parent:

- Each child runs in its own session and process group, so a Ctrl-C at the terminal reaches only
  the parent, which then stops the children in order. ``stop`` and ``kill`` end the whole group,
  grandchildren included, while the child's pid is still held (before it is reaped).
- On Linux each child asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so a
  parent that is killed, or exits without stopping them, takes its children along. The kernel sends
  that signal when the *thread* that forked the child ends, not the process; so every child is forked
  by one long-lived launcher thread (``_spawn``), never by the caller's thread, which may be a worker
  that finishes long before the child should. That thread ends only when the interpreter exits.
  Grandchildren are not covered by it: a child that forks must stop its own children.

Exceptions: ``ChildStartError`` (the child exited before it was ready, or did not get ready in time).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import httpx

from evalstream.runtime.procs import port_open, wait_until
from evalstream.runtime.ready import ReadyLine

__all__ = [
    "ChildProcess",
    "ChildStartError",
    "Probe",
    "http_probe",
    "port_probe",
    "python_module",
]

log = logging.getLogger(__name__)

#: Says whether a started child serves yet (checked until it does, the child exits, or time is up).
Probe = Callable[[], bool]

_PR_SET_PDEATHSIG: Final = 1


class ChildStartError(RuntimeError):
    """A child process exited early or never got ready."""


def python_module(module: str, *args: str) -> list[str]:
    """Command line to run ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def http_probe(url: str) -> Probe:
    """Ready when ``GET url`` answers 200 (e.g. Prometheus's ``/-/ready``)."""

    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def port_probe(host: str, port: int) -> Probe:
    """Ready when ``host:port`` accepts a TCP connection."""
    return lambda: port_open(host, port)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when its parent (thread) ends; None
    where there is no ``prctl`` (not Linux). Resolved before the fork: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            os._exit(125)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody would stop us
            os._exit(125)

    return preexec


class _Spawner:
    """The one long-lived thread that forks every child (see the module docstring for why)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def run(
        self, fork: Callable[[Callable[[], None] | None], subprocess.Popen[bytes]]
    ) -> subprocess.Popen[bytes]:
        """``fork(preexec_fn)`` on the launcher thread; its ``Popen``."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evalstream-launcher")
            pool = self._pool
        return pool.submit(fork, _die_with_parent()).result()


_spawn: Final = _Spawner()


@dataclass(kw_only=True)
class ChildProcess:
    """One child process: ``start``, ``restart``, ``stop`` (graceful) or ``kill``.

    ``log_file``: stdout and stderr go there (truncated at the first start unless ``append_log``,
    appended at restarts); None: inherited from the parent. ``capture_stdout``: stdout is read
    through a pipe into ``stdout_lines`` instead (stderr still goes to ``log_file``), for servers
    whose stdout is their interface. ``port``: the fixed port the command binds, if it has one
    (``address`` then works before the child is ready, and ``restart`` brings it back there).
    """

    name: str
    cmd: list[str]
    log_file: Path | None = None
    append_log: bool = False
    ready: ReadyLine | Probe | None = None
    env: dict[str, str] = field(default_factory=dict)
    capture_stdout: bool = False
    stop_signal: signal.Signals = signal.SIGTERM
    host: str = "127.0.0.1"
    port: int | None = None
    cwd: Path | None = None
    #: How long ``start`` waits for readiness unless told otherwise.
    startup_timeout: float = 60.0
    #: The fields of the ready line, once the child printed it.
    fields: dict[str, str] = field(default_factory=dict, init=False)
    #: Lines the child wrote to stdout (with ``capture_stdout``), since the last start.
    stdout_lines: list[str] = field(default_factory=list, init=False, repr=False)
    starts: int = field(default=0, init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)
    _reader: threading.Thread | None = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------------------------- state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def address(self) -> str:
        """``host:port``: from the fixed ``port``, else from the ready line's ``address`` field."""
        if self.port is not None:
            return f"{self.host}:{self.port}"
        if "address" in self.fields:
            return self.fields["address"]
        if "url" in self.fields:
            return self.fields["url"].removeprefix("http://")
        raise ChildStartError(f"{self.name} has no fixed port and has not printed an address yet")

    @property
    def url(self) -> str:
        if "url" in self.fields:
            return self.fields["url"]
        return f"http://{self.address}"

    def output(self) -> str:
        """Everything in the log file (all starts), or the captured stdout of this start."""
        if self.capture_stdout or self.log_file is None:
            return "".join(self.stdout_lines)
        return self.log_text()

    def log_text(self) -> str:
        """Everything in the log file (all starts; stderr alone with ``capture_stdout``)."""
        if self.log_file is None:
            return ""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _output_since_start(self) -> str:
        if self.capture_stdout or self.log_file is None:
            return "".join(self.stdout_lines)
        try:
            with self.log_file.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 20) -> str:
        text = self.output() + (self.log_text() if self.capture_stdout else "")
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------------------- start/stop

    def start(self, *extra: str, timeout: float | None = None) -> str:
        """Start ``cmd`` (plus ``extra`` arguments, for this run only) and wait until it is ready.

        Returns the ready line's first field (its address or URL), else ``address`` where a port is
        known, else "". Raises ``ChildStartError`` if it exits first or is not ready in ``timeout``
        seconds (default ``startup_timeout``; then it is stopped)."""
        if self.alive:
            raise ChildStartError(f"{self.name} is already running (pid {self.pid}); stop it first")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        cmd = [*self.cmd, *extra]
        self.starts += 1
        self.fields = {}
        self.stdout_lines = []
        where = f"log {self.log_file}" if self.log_file else "output inherited"
        log.info("starting %s: %s (%s)", self.name, " ".join(cmd), where)
        with contextlib.ExitStack() as files:
            out: BinaryIO | None = None
            if self.log_file is not None:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                append = self.append_log or self.starts > 1
                log_out = files.enter_context(
                    self.log_file.open("ab") if append else self.log_file.open("wb")
                )
                self._log_offset = log_out.tell()
                out = log_out
            stdout: BinaryIO | int | None = subprocess.PIPE if self.capture_stdout else out
            stderr: BinaryIO | int | None = out if self.capture_stdout or out is None else subprocess.STDOUT
            self._proc = _spawn.run(
                lambda preexec_fn: subprocess.Popen(
                    cmd,
                    stdout=stdout,
                    stderr=stderr,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                    # runs only prctl and getppid (two system calls, no locks): safe beside threads
                    preexec_fn=preexec_fn,  # noqa: PLW1509
                )
            )
        if self.capture_stdout:
            self._reader = threading.Thread(target=self._read_stdout, name=f"{self.name}-stdout", daemon=True)
            self._reader.start()
        self._await_ready(self.startup_timeout if timeout is None else timeout)
        if isinstance(self.ready, ReadyLine) and self.fields:
            return next(iter(self.fields.values()))
        return self.address if self.port is not None else ""

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                self.stdout_lines.append(raw.decode(errors="replace"))

    def _await_ready(self, timeout: float) -> None:
        ready = self.ready
        if ready is None:
            return
        done: list[bool] = []

        def is_ready() -> bool:
            if isinstance(ready, ReadyLine):
                found = ready.search(self._output_since_start())
                if found is not None:
                    self.fields = found
                    done.append(True)
                    return True
            elif ready():
                done.append(True)
                return True
            return not self.alive

        what = f"{self.name} to print {ready.template!r}" if isinstance(ready, ReadyLine) else f"{self.name}"
        try:
            wait_until(is_ready, timeout=timeout, what=what)
        except TimeoutError as exc:
            self.stop()
            raise ChildStartError(
                f"{self.name} was not ready in {timeout:.0f}s ({what}); its output:\n{self._tail()}"
            ) from exc
        if not done:
            if self._reader is not None:
                self._reader.join(5)
            raise ChildStartError(
                f"{self.name} exited with code {self.returncode} before it was ready; "
                f"{f'log {self.log_file}' if self.log_file else 'its output'}:\n{self._tail()}"
            )

    def await_line(self, line: ReadyLine, timeout: float = 30.0) -> dict[str, str]:
        """Wait until ``line`` shows in the output (e.g. ``METRICS_READY``, logged after the ready
        line); its fields. ``TimeoutError`` after ``timeout`` seconds; ``ChildStartError`` if the
        child exits without printing it."""
        found: list[dict[str, str]] = []

        def shown() -> bool:
            fields = line.search(self._output_since_start())
            if fields is not None:
                found.append(fields)
                return True
            return not self.alive

        wait_until(shown, timeout=timeout, what=f"{self.name} to print {line.template!r}")
        if not found:
            raise ChildStartError(
                f"{self.name} exited with code {self.returncode} without printing {line.template!r}; "
                f"its output:\n{self._tail()}"
            )
        return found[0]

    def restart(self, *extra: str, timeout: float | None = None, grace: float = 15.0) -> str:
        """Stop (if running) and start the same command again, e.g. on the same fixed port."""
        self.stop(grace)
        return self.start(*extra, timeout=timeout)

    def signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit; its exit code. ``subprocess.TimeoutExpired`` after ``timeout``."""
        proc = self._proc
        if proc is None:
            raise ChildStartError(f"{self.name} was never started")
        if not self._exited(timeout):
            raise subprocess.TimeoutExpired(self.cmd, timeout)
        self._end_group()
        return proc.wait()

    def stop(self, grace: float = 15.0) -> int | None:
        """``stop_signal``, wait up to ``grace`` seconds, then SIGKILL; then SIGKILL whatever is left in
        its process group. Returns the exit code (None if it was never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(self.stop_signal)
            if not self._exited(grace):
                log.warning("%s did not stop in %.0fs: killing it", self.name, grace)
        self._end_group()
        return proc.wait()

    def kill(self) -> None:
        """SIGKILL the child and its process group at once (fault tests: no chance to clean up)."""
        if self._proc is not None and self._proc.poll() is None:
            self._end_group()
            self._proc.wait()

    def _exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the child to exit *without reaping it* (its pid stays ours)."""
        proc = self._proc
        assert proc is not None
        try:
            wait_until(lambda: self._zombie(proc), timeout=timeout, what=f"{self.name} to exit")
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _zombie(proc: subprocess.Popen[bytes]) -> bool:
        if proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped meanwhile (Popen.poll from another thread)
            return True

    def _end_group(self) -> None:
        """SIGKILL the child's process group. Only while the child is not reaped: its pid, which is
        the group's id, cannot have been given to another process yet."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # pragma: no cover - a group we do not own: leave it
            if exc.errno != errno.EPERM:
                raise
        proc.wait()
        if self._reader is not None:
            self._reader.join(5)
