"""Our own server processes as ``ChildProcess``es: the command, its ready line, nothing else.

``evalstream up``, the tests and the benchmarks build their judge, replay-LLM, pipeline and exporter
processes here, so each command and each ready line is written once. ``port=0`` lets the server pick
a free port (read ``address`` after ``start``); a fixed port (``free_port()``) lets ``restart`` bring it
back where it was, and lets callers name its address before it runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evalstream.local.supervisor import ChildProcess, python_module
from evalstream.runtime.ready import EXPORTER_READY, JUDGE_READY, LLM_REPLAY_READY, PIPELINE_READY

__all__ = ["exporter", "judge_server", "pipeline", "replay_llm"]


def _port_args(port: int) -> list[str]:
    return ["--port", str(port)]


def judge_server(
    judge: str,
    *args: str,
    name: str | None = None,
    log_file: Path | None = None,
    port: int = 0,
    env: Mapping[str, str] | None = None,
    capture_stdout: bool = False,
) -> ChildProcess:
    """``python -m evalstream.judges.server --judge JUDGE --port PORT ARGS``; ready when it listens."""
    return ChildProcess(
        name=name or f"judge-{judge}",
        cmd=python_module("evalstream.judges.server", "--judge", judge, *_port_args(port), *args),
        log_file=log_file,
        ready=JUDGE_READY,
        env=dict(env or {}),
        port=port or None,
        capture_stdout=capture_stdout,
    )


def replay_llm(
    *args: str,
    name: str = "llm-replay",
    log_file: Path | None = None,
    port: int = 0,
    env: Mapping[str, str] | None = None,
    capture_stdout: bool = False,
) -> ChildProcess:
    """The replay LLM server (OpenAI-compatible, recorded verdicts); ``url`` once ready."""
    return ChildProcess(
        name=name,
        cmd=python_module("evalstream.llm_replay", *_port_args(port), *args),
        log_file=log_file,
        ready=LLM_REPLAY_READY,
        env=dict(env or {}),
        port=port or None,
        capture_stdout=capture_stdout,
    )


def pipeline(
    args: Sequence[str],
    *,
    name: str = "pipeline",
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ChildProcess:
    """``python -m evalstream.pipeline ARGS``; ready once it consumes."""
    return ChildProcess(
        name=name,
        cmd=python_module("evalstream.pipeline", *args),
        log_file=log_file,
        ready=PIPELINE_READY,
        env=dict(env or {}),
    )


def exporter(
    args: Sequence[str],
    *,
    name: str = "exporter",
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ChildProcess:
    """``python -m evalstream.exporter ARGS``; ready once it serves /metrics (``address``)."""
    return ChildProcess(
        name=name,
        cmd=python_module("evalstream.exporter", *args),
        log_file=log_file,
        ready=EXPORTER_READY,
        env=dict(env or {}),
    )
