"""The LLM judge's wire types: a chat completion as the judge reads it (choices, their content and token
logprobs, usage, the model that answered), unpacked from a reply's JSON body; the forms of the API
key an endpoint might echo (for scrubbing); whether a model name matches the one configured."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

from .llm_errors import LLMProtocolError


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # alternatives at this position: (token, logprob)


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    content: str | None
    logprobs: tuple[TokenLogprob, ...] | None  # None: the endpoint returned none
    finish_reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatReply:
    choices: tuple[Choice, ...]
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    model: str = ""  # the model the reply says answered ("" when it does not say)


def _parse_logprobs(raw: Any) -> tuple[TokenLogprob, ...] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("content"), list):
        return None
    out = []
    for t in raw["content"]:
        top = tuple((a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or ())
        out.append(TokenLogprob(t["token"], float(t["logprob"]), top))
    return tuple(out)


def _chat_reply(body: Any, attempts: int, scrub: Callable[[str], str]) -> ChatReply:
    """Unpack a chat-completion body; LLMProtocolError (its message scrubbed) when it is not one."""
    try:
        choices = tuple(
            Choice(
                content=c["message"].get("content"),
                logprobs=_parse_logprobs(c.get("logprobs")),
                finish_reason=c.get("finish_reason") or "",
            )
            for c in body["choices"]
        )
        usage = body.get("usage") or {}
        if not choices:
            raise ValueError("no choices")
        return ChatReply(
            choices=choices,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            attempts=attempts,
            model=str(body.get("model") or ""),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LLMProtocolError(
            scrub(f"reply is not a chat completion ({type(exc).__name__}: {exc})")
        ) from None


def _secret_forms(secret: str) -> tuple[str, ...]:
    """The key as an endpoint might echo it: verbatim, percent-encoded, or base64 (standard or URL-safe,
    padded or not, of the key or of its ``Bearer`` header value); longest first."""
    if not secret:
        return ()
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    for data in (secret.encode(), f"Bearer {secret}".encode()):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(data).decode()
            forms |= {text, text.rstrip("=")}
    return tuple(sorted(forms, key=len, reverse=True))


def _safe(url: str) -> str:
    """A URL without credentials or query, for messages."""
    return str(httpx.URL(url).copy_with(userinfo=b"", query=None, fragment=None))


def model_listed(model: str, served: dict[str, tuple[str, ...]]) -> bool:
    """Whether ``model`` is one of the listed ids or their aliases (case-insensitive)."""
    names = {n.lower() for ident, aliases in served.items() for n in (ident, *aliases)}
    return model.lower() in names


def model_matches(requested: str, answered: str, served: dict[str, tuple[str, ...]] | None) -> bool:
    """Whether a reply that names ``answered`` comes from the model ``requested``: the same name, a
    dated version of it (``gpt-4o`` -> ``gpt-4o-2024-08-06``), or a listed id with it as an alias.
    A reply that names no model passes (nothing to check)."""
    if not answered or answered.lower() == requested.lower():
        return True
    if answered.lower().startswith(requested.lower() + "-"):
        return True
    return served is not None and requested.lower() in {a.lower() for a in served.get(answered, ())}
