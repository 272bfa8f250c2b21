"""How the replay server recognises the judged item inside a judge prompt.

A judge prompt carries the material to judge in delimited blocks, never inside its instructions::

    <<<BEGIN RESPONSE 3f9a1c0e5d7b2a48>>>
    ...the judged text, verbatim...
    <<<END RESPONSE 3f9a1c0e5d7b2a48>>>

The hex tag is a fresh random nonce per request, so text inside a block cannot close it. Block names
are ``PROMPT``, ``RESPONSE``, ``RESPONSE_A`` and ``RESPONSE_B``. The server keys recorded verdicts by
a hash of the normalised block texts (the prompt and the response, or the prompt and the ordered
pair), exactly as a real model would read them: nothing else identifies the item.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

__all__ = ["extract_blocks", "item_key", "normalise"]

_BLOCK = re.compile(
    r"<<<BEGIN (?P<name>[A-Z][A-Z_]*) (?P<nonce>[0-9a-f]{8,64})>>>\n"
    r"(?P<body>.*?)\n<<<END (?P=name) (?P=nonce)>>>",
    re.DOTALL,
)


def normalise(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, trimmed: CSV and JSON copies of a text agree."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def item_key(*texts: str) -> str:
    """A stable key for an ordered tuple of texts (prompt, response[, second response])."""
    digest = hashlib.sha256()
    for text in texts:
        part = normalise(text).encode()
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


def extract_blocks(contents: Iterable[str]) -> dict[str, str]:
    """Every delimited block in the messages, by name; the first one wins when a name repeats."""
    blocks: dict[str, str] = {}
    for content in contents:
        for match in _BLOCK.finditer(content):
            blocks.setdefault(match["name"], match["body"])
    return blocks
