"""Settings of one judge server process. Read once in ``main()``, passed down to the factory.

Each setting is an explicit argument (the command line) first, then an environment variable, then
the default. Environment names are ``EVALSTREAM_JUDGE_<FIELD>``:

==================================  ===============================================================
``EVALSTREAM_JUDGE_NAME``           which judge to serve: a registry name (``rules``) or
                                    ``package.module:factory``
``EVALSTREAM_JUDGE_HOST``           address to bind (default ``127.0.0.1``)
``EVALSTREAM_JUDGE_PORT``           gRPC port; 0 picks a free one (default 50051)
``EVALSTREAM_JUDGE_METRICS_PORT``   serve Prometheus ``/metrics`` on this port; unset: don't
``EVALSTREAM_JUDGE_MAX_BATCH``      most items in one request (default 1000)
``EVALSTREAM_JUDGE_MAX_CONCURRENT`` most requests judged at once; more get RESOURCE_EXHAUSTED (8)
``EVALSTREAM_JUDGE_GRACE_S``        seconds in-flight calls get to finish on SIGTERM (default 5)
``EVALSTREAM_JUDGE_MAX_MESSAGE_BYTES``  largest request or response (default 64 MiB)
``EVALSTREAM_JUDGE_RULES_CALIBRATION``  the rules judge's calibration table (default: the committed one)
==================================  ===============================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENV_PREFIX", "JudgeServerSettings"]

#: Prefix of every judge server environment variable.
ENV_PREFIX: Final = "EVALSTREAM_JUDGE_"


class JudgeServerSettings(BaseSettings):
    """How one judge server process binds, limits and stops."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    #: A registry name (``rules``, ...) or ``package.module:factory`` for a judge defined elsewhere.
    name: Annotated[str, Field(min_length=1)] = "rules"
    host: str = "127.0.0.1"
    #: 0 binds a free port; the server prints the one it got.
    port: Annotated[int, Field(ge=0, le=65535)] = 50051
    #: Prometheus /metrics on this port (0: a free one); None: metrics are not served over HTTP.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    max_batch: Annotated[int, Field(ge=1)] = 1000
    max_concurrent: Annotated[int, Field(ge=1)] = 8
    grace_s: Annotated[float, Field(ge=0.0)] = 5.0
    max_message_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    #: The rules judge's calibration table; None: the one committed beside ``rules.py``.
    rules_calibration: Path | None = None
