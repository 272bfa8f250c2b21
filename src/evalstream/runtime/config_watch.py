"""Live reload of the cascade config: the local runner asks ``CascadeWatch.poll`` between micro-batches
whether the config file holds a new version, and swaps it in before the next batch.

A batch is judged by one bounded pipeline with the config it started with and committed with its
offsets in one transaction (``microbatch.py``), so a swap between batches neither drops nor judges an
event twice: every event is judged by exactly one config, the one its verdict's ``cascade_version``
names.

The file is checked at most every ``interval_s`` seconds: its modification time and size first (a
``stat``), its content hash when those changed. A changed file is loaded and validated
(``CascadeConfig``: YAML, tiers, thresholds; every tier it uses must have a judge endpoint). A config
that fails is rejected: logged with the reason, counted (``rejected``; the pipeline's
``evalstream_pipeline_cascade_reloads_total{outcome="rejected"}``), and the running one kept. The same
bad content is reported once, not at every check. A file that cannot be read (being replaced, or
removed) counts as rejected too, and the running config stays. A valid file whose version is the
running one's is not a reload (nothing changes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from evalstream.wire.cascade_config import CascadeConfig

__all__ = ["CascadeWatch"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CascadeWatch:
    """Watches ``path`` for a new cascade config; ``poll()`` returns one to swap in, or None."""

    path: Path
    current: CascadeConfig
    endpoints: Iterable[int] | None = None  # tiers with a judge endpoint (None: not checked)
    interval_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    reloads: int = 0
    rejected: int = 0
    last_error: str = ""
    _checked_at: float = field(default=float("-inf"), init=False)
    _stat: tuple[int, int] | None = field(default=None, init=False)
    _digest: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.endpoints = None if self.endpoints is None else frozenset(self.endpoints)
        with contextlib.suppress(OSError):  # the runner loaded it a moment ago; else reported at a poll
            self._stat, self._digest = self._look()

    def _look(self) -> tuple[tuple[int, int], str]:
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size), hashlib.sha256(self.path.read_bytes()).hexdigest()

    def poll(self) -> CascadeConfig | None:
        """A new, valid config to run from the next batch on; None when nothing (valid) changed."""
        if self.interval_s <= 0:
            return None
        now = self.clock()
        if now - self._checked_at < self.interval_s:
            return None
        self._checked_at = now
        try:
            st = self.path.stat()
            if self._stat == (st.st_mtime_ns, st.st_size):
                return None
            stat, digest = self._look()
        except OSError as exc:
            self._reject("", f"cannot read {self.path}: {exc}")
            return None
        if digest == self._digest:
            self._stat = stat
            return None
        try:
            config = CascadeConfig.model_validate(yaml.safe_load(self.path.read_text()))
        except (OSError, yaml.YAMLError, ValidationError, ValueError) as exc:
            self._reject(digest, f"{self.path} is not a valid cascade config: {exc}", stat)
            return None
        missing = [t for t in config.tiers if self.endpoints is not None and t not in self.endpoints]
        if missing:
            self._reject(
                digest,
                f"{self.path} (version {config.version!r}) uses tiers {missing} with no judge endpoint; "
                f"configured: {sorted(self.endpoints or ())}",
                stat,
            )
            return None
        self._stat, self._digest = stat, digest
        self.last_error = ""
        if config.version == self.current.version:
            return None
        log.info("cascade config %s: version %s replaces %s", self.path, config.version, self.current.version)
        self.current = config
        self.reloads += 1
        return config

    def _reject(self, digest: str, reason: str, stat: tuple[int, int] | None = None) -> None:
        if stat is not None:
            self._stat, self._digest = stat, digest  # report this content once, not at every check
        if reason != self.last_error:
            self.rejected += 1
            log.error("%s; keeping the running config %s", reason, self.current.version)
        self.last_error = reason
