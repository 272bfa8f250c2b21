"""Start the replay server as its own process and wait until it listens (tests, ``evalstream up``)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

__all__ = ["ReplayProcess", "start_replay_server"]

_LISTENING = re.compile(rb"evalstream-llm-replay listening on (http://\S+)")


@dataclass(slots=True)
class ReplayProcess:
    proc: subprocess.Popen[bytes]
    url: str  # http://host:port

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``.../v1``)."""
        return f"{self.url}/v1"

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ReplayProcess:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_replay_server(
    args: Sequence[str] = (), *, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> ReplayProcess:
    """Run ``python -m evalstream.llm_replay --port 0 ARGS`` and wait for its listening line."""
    cmd = [sys.executable, "-m", "evalstream.llm_replay", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                proc.kill()
                proc.wait()
                raise RuntimeError(
                    f"replay server did not report listening within {timeout:.0f}s "
                    f"(exit code {proc.returncode}, "
                    f"stdout {seen[-500:]!r}); run {' '.join(cmd)} by hand to see why"
                )
            if sel.select(min(left, 0.5)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                seen += chunk
    match = _LISTENING.search(seen)
    if match is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"replay server printed {seen!r}, expected 'evalstream-llm-replay listening on URL'"
        )
    return ReplayProcess(proc=proc, url=match.group(1).decode())
