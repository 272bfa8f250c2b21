"""Small helpers for starting and waiting on local processes and ports.

Tests and ``evalstream up`` start real servers (broker, judges, Prometheus) on free loopback ports
and wait on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

__all__ = ["free_port", "port_open", "wait_until"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for servers that cannot bind port 0 themselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; then raise TimeoutError."""
    deadline = clock() + timeout
    while not condition():
        if clock() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        sleep(interval)
