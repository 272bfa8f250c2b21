"""A server binary on a loopback port, started with the one launcher (``supervisor.ChildProcess``),
ready when ``GET /-/ready`` answers: the common part of Prometheus and Alertmanager.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from evalstream.local.supervisor import ChildProcess, ChildStartError, http_probe
from evalstream.runtime.procs import free_port

__all__ = ["HttpServerProcess"]


@dataclass(kw_only=True)
class HttpServerProcess(ABC):
    """Base of a server binary on a loopback port that says it is ready on ``GET /-/ready`` (Prometheus,
    Alertmanager): its data folder, address, config file, one ``ChildProcess``, and stop. A subclass
    says where its binary is, what its config holds and which flags it takes."""

    #: The child's name; its log is ``<data_dir>/<name>.log``.
    name: ClassVar[str]
    #: What ``_launch`` raises when the child does not get ready.
    error: ClassVar[type[RuntimeError]]

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, chosen at the first start and kept
    startup_timeout: float = 30.0
    _child: ChildProcess | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.alive

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @abstractmethod
    def _binary(self) -> str:
        """The binary's path; raises ``error`` saying what to install when it is missing."""

    @abstractmethod
    def _config(self) -> str:
        """The config file's text (written to ``<data_dir>/<name>.yml``)."""

    @abstractmethod
    def _flags(self) -> list[str]:
        """Command-line flags besides ``--config.file``."""

    def start(self) -> Self:
        """Pick the port (once), write the config, start the binary, wait until it is ready."""
        binary = self._binary()
        if self.port == 0:
            self.port = free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / f"{self.name}.yml"
        config.write_text(self._config())
        self._child = ChildProcess(
            name=self.name,
            cmd=[binary, f"--config.file={config}", *self._flags()],
            log_file=self.log_file,
            append_log=True,
            ready=http_probe(f"{self.url}/-/ready"),
            host=self.host,
            port=self.port,
        )
        try:
            self._child.start(timeout=self.startup_timeout)
        except ChildStartError as exc:
            raise self.error(f"{self.name} did not become ready on {self.url}: {exc}") from exc
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self._child is not None:
            self._child.stop(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
