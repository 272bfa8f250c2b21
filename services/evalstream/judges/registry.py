"""Judge names to factories. Each factory takes the server's settings and returns a ``Judge``.

Factories are named as ``"module:function"`` strings and imported only when chosen, so serving the
rules judge never imports an encoder or an HTTP client. Adding a judge is one line below. A name that
is not registered but looks like ``package.module:factory`` is imported as given (plug-ins, tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final, cast

from .base import Judge
from .settings import JudgeServerSettings

__all__ = ["JUDGES", "JudgeFactory", "UnknownJudgeError", "create_judge", "resolve"]

JudgeFactory = Callable[[JudgeServerSettings], Judge]

JUDGES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "rules": "evalstream.judges.rules:from_settings",
        "llm": "evalstream.judges.llm:from_settings",
        "encoder": "evalstream.judges.encoder:from_settings",
    }
)


class UnknownJudgeError(LookupError):
    """The judge name is neither registered nor an importable ``module:factory``."""


def resolve(name: str) -> JudgeFactory:
    spec = JUDGES.get(name, name)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UnknownJudgeError(
            f"unknown judge {name!r}; expected one of {sorted(JUDGES)} or 'package.module:factory'"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownJudgeError(f"judge {name!r}: cannot import {spec!r}: {exc}") from exc
    if not callable(factory):
        raise UnknownJudgeError(f"judge {name!r}: {spec!r} is a {type(factory).__name__}, expected a factory")
    return cast(JudgeFactory, factory)


def create_judge(name: str, settings: JudgeServerSettings) -> Judge:
    """Build the named judge from the settings (its one-time I/O, such as loading tables, happens here)."""
    return resolve(name)(settings)
