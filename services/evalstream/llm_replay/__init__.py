"""An OpenAI-compatible HTTP server that replays real recorded judge verdicts from ``../shared/data``.

No model weights can be downloaded here, so the LLM judge client is tested against this server: it
answers judge prompts with what GPT-4, ChatGPT, LLaMA-2, PaLM-2, Falcon, o1-mini, claude-3-haiku
actually said about the same items (see ``recordings``), with realistic token usage, configurable
latency and fault modes (``faults``). Run it with ``python -m evalstream.llm_replay``.

- ``keys``: how an item is recognised in a judge prompt (delimited blocks, normalised hashes);
- ``recordings``: the data loaders and the store;
- ``replies``: the pure core, request in, OpenAI reply out;
- ``faults``: fault specs and counters;
- ``server``: the HTTP shell, settings and ``main()``.

Starting it as a child process (tests, ``evalstream up``) is ``evalstream.local.llm_replay``'s job.
"""

from __future__ import annotations

from .faults import FAULT_HEADER, FaultKind, parse_faults
from .recordings import ReplayStore
from .server import ReplayServer, ReplaySettings, create_server

__all__ = [
    "FAULT_HEADER",
    "FaultKind",
    "ReplayServer",
    "ReplaySettings",
    "ReplayStore",
    "create_server",
    "parse_faults",
]
