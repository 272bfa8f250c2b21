"""``python -m evalstream.pipelines [flags]``: run the pipeline (see ``run.py`` for the flags)."""

from __future__ import annotations

import logging
import sys

from evalstream.pipelines.run import run

if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    run(sys.argv[1:])
