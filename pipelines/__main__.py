"""``python -m evalstream.pipelines [flags]``: run the pipeline (see ``run.py`` for the flags)."""

from __future__ import annotations

import sys

from evalstream.logs import configure_logging
from evalstream.pipelines.run import run

if __name__ == "__main__":
    configure_logging()
    run(sys.argv[1:])
