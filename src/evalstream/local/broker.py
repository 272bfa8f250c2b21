"""The embedded Kafka-protocol broker: noida-db, installed from PyPI, started and stopped by us.

noida-db is one binary that speaks the Kafka wire protocol (among others). It keeps data in a JSON
file under its data directory: give each long run a fresh directory. It prints a GLIBC_2.39 warning
on Debian 12 and runs. Any real Kafka cluster works instead: set ``EVALSTREAM_KAFKA_BOOTSTRAP``.

Exceptions: ``BrokerError`` when the binary is missing or the broker does not come up.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from types import TracebackType

from evalstream.runtime.procs import free_port, port_open, wait_until

__all__ = ["BrokerError", "EmbeddedBroker", "broker_binary"]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def broker_binary() -> Path:
    path = Path(str(files("noida_db").joinpath("noida-db")))
    if not path.is_file():
        raise BrokerError(f"noida-db binary not found at {path}: pip install noida-db")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


@dataclass(kw_only=True)
class EmbeddedBroker:
    """A noida-db process serving Kafka on loopback.

    >>> with EmbeddedBroker(data_dir=Path("/tmp/b")) as broker:  # doctest: +SKIP
    ...     broker.bootstrap  # "127.0.0.1:40123"
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    startup_timeout: float = 20.0
    log_file: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if self.port == 0:
            self.port = free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out_path = self.log_file or self.data_dir / "broker.log"
        cmd = [
            str(broker_binary()),
            "start",
            "--only",
            "kafka",
            "--host",
            self.host,
            "--kafka-port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        log.info("starting broker: %s", " ".join(cmd))
        with out_path.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            wait_until(
                lambda: port_open(self.host, self.port) or not self.running,
                timeout=self.startup_timeout,
                what=f"broker on {self.bootstrap}",
            )
        except TimeoutError as exc:
            self.stop()
            raise BrokerError(f"broker did not listen on {self.bootstrap}; see {out_path}") from exc
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError(f"broker exited at start; see {out_path}")
        log.info("broker ready on %s (data in %s)", self.bootstrap, self.data_dir)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGINT, data saved); SIGKILL if it does not exit in ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, for fault tests: no chance to save."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
