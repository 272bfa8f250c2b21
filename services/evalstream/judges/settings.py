"""Settings of one judge server process. Read once in ``main()``, passed down to the factory.

Each setting is an explicit argument (the command line) first, then an environment variable
(``EVALSTREAM_JUDGE_<FIELD>``), then the default. Each field's docstring is its description: the
flag's help (``server.py``) and docs/configuration.md, which lists every variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENV_PREFIX", "EncoderSettings", "JudgeServerSettings"]

#: Prefix of every judge server environment variable.
ENV_PREFIX: Final = "EVALSTREAM_JUDGE_"


class JudgeServerSettings(BaseSettings):
    """How one judge server process binds, limits and stops."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    name: Annotated[str, Field(min_length=1)] = "rules"
    """Which judge to serve: a registry name (``rules``, ``encoder``, ``llm``) or
    ``package.module:factory`` for a judge defined elsewhere."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: Annotated[int, Field(ge=0, le=65535)] = 50051
    """gRPC port; 0 binds a free one and the server prints the one it got."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """Serve Prometheus ``/metrics`` on this port (0: a free one); unset: not served over HTTP."""
    max_batch: Annotated[int, Field(ge=1)] = 1000
    """Most items in one request."""
    max_concurrent: Annotated[int, Field(ge=1)] = 8
    """Most requests judged at once; more get RESOURCE_EXHAUSTED."""
    grace_s: Annotated[float, Field(ge=0.0)] = 5.0
    """Seconds in-flight calls get to finish on SIGTERM."""
    max_message_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    """Largest request or response, bytes."""
    rules_calibration: Path | None = None
    """The rules judge's calibration table; unset: the one committed beside ``rules.py``."""


class EncoderSettings(BaseSettings):
    """Where the encoder judge (tier 1) finds its trained artefact."""

    model_config = SettingsConfigDict(
        env_prefix="EVALSTREAM_ENCODER_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    model_dir: Path | None = None
    """Directory of a trained encoder-judge artefact (``python -m evalstream.judges.encoder_train --out
    DIR`` makes one); no default."""
