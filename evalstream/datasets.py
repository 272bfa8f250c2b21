"""Where the shared labelled data lives, and readers for it.

The data (``../shared/data`` beside the repository) is real public labelled data; it is never copied
into the repository. Each folder's SOURCE.md gives its origin, licence and fields: keep that
attribution in anything derived from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["DATA_DIR_ENV", "DataNotFoundError", "data_root"]

#: Overrides where the shared data is read from (default: ``../shared/data`` beside the repository).
DATA_DIR_ENV: Final = "EVALSTREAM_DATA_DIR"

_REPO_ROOT = Path(__file__).resolve().parents[1]


class DataNotFoundError(FileNotFoundError):
    """The shared labelled data is not where it was expected."""


def data_root(explicit: Path | None = None) -> Path:
    """Explicit argument, then ``EVALSTREAM_DATA_DIR``, then ``../shared/data`` beside the repo."""
    candidates = [explicit] if explicit else []
    if env := os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(env))
    candidates.append(_REPO_ROOT.parent / "shared" / "data")
    for path in candidates:
        if path is not None and path.is_dir():
            return path
    raise DataNotFoundError(
        f"shared data not found (tried {', '.join(str(p) for p in candidates)}); "
        f"set {DATA_DIR_ENV} to the folder that holds xstest_v2_refusal/ and the other data sets"
    )
