"""``python -m evalstream.pipeline [flags]``: run the pipeline (see ``run.py`` for the flags)."""

from __future__ import annotations

import sys

from evalstream.pipeline.run import run
from evalstream.runtime.logs import configure_logging

if __name__ == "__main__":
    configure_logging()
    run(sys.argv[1:])
