"""Start the replay LLM server as its own process and wait until it listens (tests, benchmarks).

``evalstream up`` and the fault tests use ``evalstream.local.servers.replay_llm`` directly; this is the
context-managed form with the OpenAI-style ``base_url``, its stdout read through a pipe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from evalstream.local.servers import replay_llm
from evalstream.local.supervisor import ChildProcess

__all__ = ["ReplayProcess", "start_replay_server"]


@dataclass(slots=True)
class ReplayProcess:
    child: ChildProcess

    @property
    def url(self) -> str:
        """``http://host:port``, from its ready line."""
        return self.child.url

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``.../v1``)."""
        return f"{self.url}/v1"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in ``timeout`` seconds. Returns the exit code."""
        return self.child.stop(timeout)

    def __enter__(self) -> ReplayProcess:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_replay_server(
    args: Sequence[str] = (), *, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> ReplayProcess:
    """Run ``python -m evalstream.llm_replay --port 0 ARGS`` and wait for its ready line."""
    child = replay_llm(*args, env=env, capture_stdout=True)
    child.start(timeout=timeout)
    return ReplayProcess(child=child)
