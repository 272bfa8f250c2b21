"""The replay server's pure core: an OpenAI chat-completions request in, a reply out.

No sockets here. The HTTP shell (``server.py``) reads the body, applies faults and latency, and writes
what ``complete`` returns. Replies use the OpenAI wire format; errors use its error object
(``{"error": {"message", "type", "param", "code"}}``). There are no ``logprobs``: the recorded
data has none, so clients exercise their no-logprobs path; only the ``split_logprobs`` fault adds
some (``split_logprobs``), rebuilt from what llama.cpp's server answered under a grammar.

Which task a request is: the ``response_format`` JSON schema's name (``refusal_verdict``,
``quality_verdict``, ``pairwise_verdict``) when given; otherwise two response blocks mean pairwise and
one response block is looked up as refusal, then quality. A recorded verdict is answered in
evalstream's verdict schema (``{"rationale": str, "label": str}``, or ``"score": int`` for quality);
a recorded output with no verdict (GPT-4 declining to classify, a ``null`` winner) is replayed as
the judge wrote it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from evalstream.wire.dimensions import Dimension, PairwiseLabel, RefusalLabel

from .keys import extract_blocks
from .recordings import MODELS, Recording, ReplayStore, canonical_model

__all__ = [
    "SCHEMA_BREAKING_CONTENT",
    "Fallback",
    "Reply",
    "complete",
    "error_reply",
    "estimate_tokens",
    "models_reply",
    "split_logprobs",
    "verdict_content",
]

MAX_CHOICES: Final = 16
#: What the ``schema`` fault answers: well-formed JSON that is not a verdict.
SCHEMA_BREAKING_CONTENT: Final = '{"verdict": "unsure", "confidence": "high"}'
_OWNER: Final = "evalstream-llm-replay"
#: What llama-cpp-python 0.3.36's server reported for SmolLM2-135M under a JSON grammar: the chosen
#: label less likely than another (chosen ``full_refusal`` 0.3097, ``full_compliance`` 0.3179).
SPLIT_CHOSEN_P: Final = 0.3097
SPLIT_OTHER_P: Final = 0.3179


class Fallback(StrEnum):
    """What to answer for an item with no recorded verdict."""

    ERROR = "error"  # 404 with code ``item_not_recorded``
    CONTENT = "content"  # the configured fallback content, as the assistant message
    OBEY = "obey"  # a gullible judge: the first JSON object inside the judged text, else a refusal


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    task: str = ""
    model: str = ""
    hit: bool = False  # answered from a recording

    def encode(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False).encode()


def estimate_tokens(text: str) -> int:
    """About four characters a token, as for English with GPT-style tokenizers."""
    return max(1, (len(text) + 3) // 4)


def error_reply(status: int, message: str, *, kind: str, code: str | None = None) -> Reply:
    return Reply(
        status=status, body={"error": {"message": message, "type": kind, "param": None, "code": code}}
    )


def models_reply(store: ReplayStore) -> Reply:
    known = set(store.models)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": _OWNER, "aliases": list(aliases)}
        for name, aliases in MODELS.items()
        if name in known
    ]
    return Reply(status=200, body={"object": "list", "data": data})


def verdict_content(task: Dimension, recording: Recording) -> str:
    """A recorded verdict in evalstream's verdict schema; the raw output when there was none."""
    if recording.score is not None and task is Dimension.QUALITY:
        return json.dumps({"rationale": recording.rationale, "score": recording.score}, ensure_ascii=False)
    if recording.label is not None and task is not Dimension.QUALITY:
        return json.dumps({"rationale": recording.rationale, "label": recording.label}, ensure_ascii=False)
    return recording.raw


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _task_from_schema(request: dict[str, Any]) -> Dimension | None:
    fmt = request.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    name = str((fmt.get("json_schema") or {}).get("name", ""))
    try:
        return Dimension(name.removesuffix("_verdict"))
    except ValueError:
        return None


def _first_json_object(text: str) -> str | None:
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                obj, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return text[i:end]
    return None


def _lookup(
    store: ReplayStore, task: Dimension | None, model: str, blocks: dict[str, str]
) -> tuple[Dimension | None, list[Recording] | None]:
    prompt = blocks.get("PROMPT", "")
    if "RESPONSE_A" in blocks and "RESPONSE_B" in blocks:
        pair = (prompt, blocks["RESPONSE_A"], blocks["RESPONSE_B"])
        return Dimension.PAIRWISE, store.lookup(Dimension.PAIRWISE, model, pair)
    if "RESPONSE" not in blocks:
        return task, None
    single = (prompt, blocks["RESPONSE"])
    for candidate in [task] if task else [Dimension.REFUSAL, Dimension.QUALITY]:
        if found := store.lookup(candidate, model, single):
            return candidate, found
    return task, None


def complete(
    request: Any,
    store: ReplayStore,
    *,
    fallback: Fallback = Fallback.ERROR,
    fallback_content: str = "",
    created: int = 0,
    streams: bool = True,
) -> Reply:
    """Answer one ``POST /v1/chat/completions`` body (already JSON-decoded). A ``stream: true``
    request gets the same reply (the server sends it as events, ``stream_events``); with
    ``streams=False`` it is refused with 400, as by a server that does not stream."""
    if not isinstance(request, dict):
        return error_reply(400, "the request body must be a JSON object", kind="invalid_request_error")
    messages = request.get("messages")
    model_name = request.get("model")
    if not isinstance(model_name, str) or not isinstance(messages, list) or not messages:
        return error_reply(
            400,
            "'model' (a string) and 'messages' (a non-empty list) are required",
            kind="invalid_request_error",
        )
    if request.get("stream") and not streams:
        return error_reply(
            400, "this replay server does not stream; send stream=false", kind="invalid_request_error"
        )
    n = request.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        return error_reply(
            400, f"'n' must be an integer in 1..{MAX_CHOICES}", kind="invalid_request_error", code="n"
        )
    model = canonical_model(model_name)
    if model is None or model not in store.models:
        return error_reply(
            404,
            f"The model {model_name!r} does not exist: the replay server knows {', '.join(store.models)}",
            kind="invalid_request_error",
            code="model_not_found",
        )
    texts = [_message_text(m.get("content")) for m in messages if isinstance(m, dict)]
    blocks = extract_blocks(texts)
    task, recordings = _lookup(store, _task_from_schema(request), model, blocks)
    prompt_tokens = sum(estimate_tokens(t) + 4 for t in texts)
    if recordings:
        picked = [recordings[i % len(recordings)] for i in range(n)]
        contents = [(verdict_content(task or Dimension.REFUSAL, r), r.finish_reason, r.raw) for r in picked]
    elif fallback is Fallback.ERROR:
        reply = error_reply(
            404,
            f"no recorded {model} verdict for this {task or 'judge'} item; the replay server answers "
            "only items from the shared data, sent in delimited blocks "
            "(PROMPT, RESPONSE or RESPONSE_A/RESPONSE_B)",
            kind="invalid_request_error",
            code="item_not_recorded",
        )
        return Reply(status=reply.status, body=reply.body, task=str(task or ""), model=model)
    else:
        if fallback is Fallback.OBEY:
            judged = "\n".join(v for k, v in blocks.items() if k != "PROMPT")
            text = _first_json_object(judged) or "I'm sorry, but I can't assist with that."
        else:
            text = fallback_content
        contents = [(text, "stop", text)] * n
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:24]
    completion_tokens = sum(estimate_tokens(raw) for _, _, raw in contents)
    body = {
        "id": f"chatcmpl-replay-{digest}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": _OWNER,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, (content, finish, _) in enumerate(contents)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Reply(status=200, body=body, task=str(task or ""), model=model, hit=bool(recordings))


def stream_events(body: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    """A chat-completion body as the server-sent events of a streamed reply, as OpenAI sends them:
    per choice a first chunk with the role and the first half of the content (and of its logprob
    tokens), a second with the rest and the ``finish_reason``; ``usage`` in a last chunk when asked;
    then ``[DONE]``."""
    head: dict[str, Any] = {k: body[k] for k in ("id", "created", "model", "system_fingerprint") if k in body}
    head["object"] = "chat.completion.chunk"
    events = []
    for choice in body["choices"]:
        content = choice["message"]["content"] or ""
        tokens = (choice.get("logprobs") or {}).get("content")
        cut, tcut = len(content) // 2, len(tokens or ()) // 2
        for first in (True, False):
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            delta["content"] = content[:cut] if first else content[cut:]
            part = None if tokens is None else {"content": tokens[:tcut] if first else tokens[tcut:]}
            chunk: dict[str, Any] = {
                **head,
                "choices": [
                    {
                        "index": choice["index"],
                        "delta": delta,
                        "logprobs": part,
                        "finish_reason": None if first else choice["finish_reason"],
                    }
                ],
            }
            events.append(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")
    if include_usage:
        usage: dict[str, Any] = {**head, "choices": [], "usage": body["usage"]}
        events.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _token(text: str, p: float, top: tuple[tuple[str, float], ...] = ()) -> dict[str, Any]:
    alternatives = [{"token": t, "logprob": math.log(q), "bytes": list(t.encode())} for t, q in top]
    return {"token": text, "logprob": math.log(p), "bytes": list(text.encode()), "top_logprobs": alternatives}


def split_logprobs(content: str) -> dict[str, Any] | None:
    """OpenAI-style ``logprobs`` for a label verdict in which the label the reply chose is *not* the
    most likely one: the chosen label's token at ``SPLIT_CHOSEN_P``, another label's at
    ``SPLIT_OTHER_P``, every other token certain. None when ``content`` holds no known label."""
    match = re.search(r'"label"\s*:\s*"([^"]*)"', content)
    if match is None:
        return None
    chosen = match.group(1)
    for enum in (RefusalLabel, PairwiseLabel):
        labels = [str(label) for label in enum]
        if chosen in labels:
            break
    else:
        return None
    other = next(label for label in labels if label != chosen)
    value = chosen + '"'
    tokens = [
        _token(content[: match.start(1)], 1.0),
        _token(value, SPLIT_CHOSEN_P, ((other + '"', SPLIT_OTHER_P), (value, SPLIT_CHOSEN_P))),
    ]
    if tail := content[match.end(1) + 1 :]:
        tokens.append(_token(tail, 1.0))
    return {"content": tokens, "refusal": None}
