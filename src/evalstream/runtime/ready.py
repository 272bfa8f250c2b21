"""Ready lines: the one line a child process prints when it serves, and the one parser for it.

A server started on port 0 tells its parent where it listens by printing one line; the parent
(``evalstream.local.supervisor.ChildProcess``) waits for that line and reads the address from it.
Both sides use the same ``ReadyLine``: the server calls ``announce`` (or ``format`` inside a log
message), the launcher calls ``search``. Nobody types a ready line twice.

    JUDGE_READY.announce(address="127.0.0.1:40123")   # in the judge server
    JUDGE_READY.search(log_text)                      # in the launcher: {"address": "127.0.0.1:40123"}
"""

from __future__ import annotations

import re
import string
import sys
from dataclasses import dataclass, field
from typing import Final, TextIO

__all__ = [
    "EXPORTER_READY",
    "JUDGE_READY",
    "LLM_REPLAY_READY",
    "METRICS_READY",
    "PIPELINE_READY",
    "UP_READY",
    "ReadyLine",
]


@dataclass(frozen=True, slots=True)
class ReadyLine:
    """A line template with ``{field}`` placeholders; each field stands for one word (no spaces)."""

    template: str
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    fields: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex: list[str] = []
        names: list[str] = []
        for literal, name, spec, conversion in string.Formatter().parse(self.template):
            regex.append(re.escape(literal))
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion or name in names:
                raise ValueError(
                    f"ready line {self.template!r}: placeholder {{{name}}} must be a plain, unique "
                    "field name such as {address}"
                )
            names.append(name)
            regex.append(rf"(?P<{name}>\S+)")
        object.__setattr__(self, "pattern", re.compile("".join(regex)))
        object.__setattr__(self, "fields", tuple(names))

    def format(self, **values: object) -> str:
        """The line with its fields filled in (for a log message or ``announce``)."""
        missing = set(self.fields) - set(values)
        if missing:
            raise ValueError(f"ready line {self.template!r} needs {sorted(missing)}, got {sorted(values)}")
        return self.template.format(**values)

    def announce(self, stream: TextIO | None = None, **values: object) -> None:
        """Print the line on ``stream`` (stdout) and flush it, so the parent sees it at once."""
        out = stream if stream is not None else sys.stdout
        out.write(self.format(**values) + "\n")
        out.flush()

    def search(self, text: str) -> dict[str, str] | None:
        """The fields of the first ready line in ``text`` (``{}`` for a line without fields); None
        when ``text`` holds no such line."""
        match = self.pattern.search(text)
        return None if match is None else match.groupdict()


#: A judge server's gRPC port is open (stdout; ``--port 0`` picks one).
JUDGE_READY: Final = ReadyLine("evalstream-judge listening on {address}")
#: The replay LLM server accepts connections (stdout); ``url`` is ``http://host:port``.
LLM_REPLAY_READY: Final = ReadyLine("evalstream-llm-replay listening on {url}")
#: The exporter serves /metrics (stdout).
EXPORTER_READY: Final = ReadyLine("evalstream-exporter metrics on http://{address}/metrics")
#: The pipeline has its consumer and producer and starts polling (its log, on stderr).
PIPELINE_READY: Final = ReadyLine("pipeline consuming {topic} as group {group}")
#: A judge server or the pipeline serves /metrics (their logs, on stderr). The exporter's ready line
#: matches it too.
METRICS_READY: Final = ReadyLine("metrics on http://{address}/metrics")
#: ``evalstream up`` started every part (the title of the table it prints, on stdout).
UP_READY: Final = ReadyLine("evalstream is up")
