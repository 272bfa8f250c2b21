"""Command-line options the tools share, mapped onto the settings they override (typer aliases).

``--bootstrap`` overrides ``KafkaSettings.bootstrap`` and ``--data-dir`` ``DataSettings.data_dir``;
unset, the environment and then the default apply, as for every process (docs/configuration.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evalstream.evaluation.datasets import DATA_DIR_ENV
from evalstream.runtime.settings import KafkaSettings, env_name

__all__ = ["BootstrapOption", "DataDirOption", "kafka_settings"]

BootstrapOption = Annotated[
    str | None,
    typer.Option(help=f"Kafka host:port list (default: {env_name(KafkaSettings, 'bootstrap')})."),
]
DataDirOption = Annotated[
    Path | None, typer.Option(help=f"Shared data folder (default: {DATA_DIR_ENV} or ../shared/data).")
]


def kafka_settings(bootstrap: str | None) -> KafkaSettings:
    """``KafkaSettings`` with ``--bootstrap`` when it was given (else the environment, the default)."""
    return KafkaSettings(bootstrap=bootstrap) if bootstrap else KafkaSettings()
