"""The exporter's state file: totals and consumed offsets, persisted together, atomically.

This is how the exporter counts every record exactly once across restarts (choice (a) of the
design): the counter values and the offset of the next record to read, per partition, are one JSON
document, written to a temporary file, fsynced and renamed over the old one. After a crash the
exporter restores the totals and seeks to the offsets saved with them, so a record is either in
both or in neither.

Offsets are also committed to the consumer group after each save, for lag monitoring and as the
fallback when the state file is gone. ``resume_plan`` decides what a start restores:

- state file present, no committed offset beyond it: restore totals, seek to the saved offsets;
- no state file, or a committed offset beyond the saved one (the file is stale: an old backup, or
  another exporter in the group moved on): start totals from zero at the committed offsets. This
  is a counter reset, which Prometheus handles; restoring stale totals would instead make counters
  go down and be counted twice, and re-reading from older offsets would apply records again.

Exceptions: ``StateError`` when the file exists but cannot be read or does not fit this exporter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["FORMAT", "Partition", "ResumePlan", "SavedState", "StateError", "StateFile", "resume_plan"]

#: Version of the state file layout.
FORMAT: Final = 1

Partition = tuple[str, int]  # (topic, partition)


class StateError(RuntimeError):
    """The state file exists but cannot be used."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedState:
    """What one save holds: the core's state and the next offset to read per partition."""

    core: Mapping[str, Any]
    offsets: Mapping[Partition, int]
    group_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePlan:
    """Where a starting exporter continues from."""

    core: Mapping[str, Any] | None  # None: totals start from zero
    offsets: Mapping[Partition, int] = field(default_factory=dict)  # absent: the committed offset
    reason: str = ""


def resume_plan(saved: SavedState | None, committed: Mapping[Partition, int | None]) -> ResumePlan:
    """Restore ``saved`` unless the group has committed beyond it (see the module docstring)."""
    if saved is None:
        return ResumePlan(core=None, reason="no state file: totals start from zero at the committed offsets")
    ahead = sorted(
        (tp, offset)
        for tp, offset in committed.items()
        if offset is not None and offset > saved.offsets.get(tp, 0)
    )
    if ahead:
        (topic, partition), offset = ahead[0]
        return ResumePlan(
            core=None,
            reason=f"state file is stale: group committed {topic}[{partition}] up to {offset}, the file only "
            f"to {saved.offsets.get((topic, partition), 0)} ({len(ahead)} partition(s) ahead); totals start "
            "from zero at the committed offsets so nothing is counted twice",
        )
    return ResumePlan(core=saved.core, offsets=dict(saved.offsets), reason="restored from the state file")


@dataclass(frozen=True, slots=True, kw_only=True)
class StateFile:
    path: Path

    def load(self) -> SavedState | None:
        """The saved state, or None when there is no file yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read the exporter state file {self.path}: {exc}") from exc
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
            offsets = {(str(o["topic"]), int(o["partition"])): int(o["offset"]) for o in doc["offsets"]}
            core = doc["core"]
            if not isinstance(core, dict) or "totals" not in core or "labels" not in core:
                raise ValueError("no 'core' object with 'totals' and 'labels'")
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"exporter state file {self.path} is not usable ({exc}). Restore a backup, or move it away "
                "to start counters from zero at the committed offsets (nothing is counted twice)"
            ) from exc
        return SavedState(core=core, offsets=offsets, group_id=str(doc.get("group_id", "")))

    def save(self, state: SavedState) -> int:
        """Write atomically (temporary file, fsync, rename, fsync the folder); returns bytes written."""
        doc = {
            "format": FORMAT,
            "group_id": state.group_id,
            "offsets": [
                {"topic": topic, "partition": partition, "offset": offset}
                for (topic, partition), offset in sorted(state.offsets.items())
            ],
            "core": state.core,
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return len(data)
