"""One logging set-up for every evalstream process: our INFO lines, other libraries' warnings."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]

#: Libraries that log every connection or bundle at INFO; their warnings still show.
_CHATTY = ("kafka", "apache_beam", "grpc", "urllib3", "httpx", "opentelemetry")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # Beam logs a warning at import, which installs a root handler first
    )
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
