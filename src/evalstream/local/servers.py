"""Our own server processes as ``ChildProcess``es: the command, its ready line, nothing else.

``evalstream up``, the tests and the benchmarks build their judge, replay-LLM, pipeline and exporter
processes here, so each command and each ready line is written once. ``port=0`` lets a server pick
a free port (read ``address`` after ``start``); a fixed port (``free_port()``) lets ``restart`` bring it
back where it was, and lets callers name its address before it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from evalstream.local.supervisor import ChildProcess, python_module
from evalstream.runtime.ready import EXPORTER_READY, JUDGE_READY, LLM_REPLAY_READY, PIPELINE_READY, ReadyLine

__all__ = ["exporter", "judge_server", "pipeline", "replay_llm"]


@dataclass(frozen=True, slots=True)
class _Ours:
    """``python -m MODULE [--port PORT] ARGS``, ready when it prints ``ready``."""

    module: str
    ready: ReadyLine
    default_name: str
    takes_port: bool  # servers take --port; the pipeline and exporter only their --metrics-port
    kind_flag: str | None = None  # the first argument is a kind, passed with this flag (--judge rules)

    def __call__(
        self,
        *args: str,
        name: str | None = None,
        log_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        port: int = 0,
        capture_stdout: bool = False,
    ) -> ChildProcess:
        port_args = ["--port", str(port)] if self.takes_port else []
        default_name = self.default_name
        if self.kind_flag is not None:
            default_name = f"{default_name}-{args[0]}"
            args = (self.kind_flag, *args)
        return ChildProcess(
            name=name or default_name,
            cmd=python_module(self.module, *port_args, *args),
            log_file=log_file,
            ready=self.ready,
            env=dict(env or {}),
            port=port or None,
            capture_stdout=capture_stdout,
        )


#: ``replay_llm(*args)``: the replay LLM server (OpenAI-compatible, recorded verdicts); ``url`` once ready.
replay_llm: Final = _Ours("evalstream.llm_replay", LLM_REPLAY_READY, "llm-replay", takes_port=True)
#: ``pipeline(*args)``: ``python -m evalstream.pipeline ARGS``; ready once it consumes.
pipeline: Final = _Ours("evalstream.pipeline", PIPELINE_READY, "pipeline", takes_port=False)
#: ``exporter(*args)``: ``python -m evalstream.exporter ARGS``; ready once it serves /metrics (``address``).
exporter: Final = _Ours("evalstream.exporter", EXPORTER_READY, "exporter", takes_port=False)
#: ``judge_server(judge, *args)``: ``python -m evalstream.judges.server --port PORT --judge JUDGE ARGS``;
#: ready when it listens; named ``judge-JUDGE`` unless told otherwise.
judge_server: Final = _Ours(
    "evalstream.judges.server", JUDGE_READY, "judge", takes_port=True, kind_flag="--judge"
)
