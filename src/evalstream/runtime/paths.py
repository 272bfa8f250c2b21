"""Where the source checkout is: the folders beside the package that a running stack reads.

``evalstream up`` and the tests read ``deploy/`` (Prometheus config, rules and their promtool tests)
and the shared labelled data beside the repository. Both are found from this file's place in the
source tree (``src/evalstream/runtime/paths.py``), once, here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["DEPLOY_DIR", "REPO_ROOT"]

#: The repository's root folder (the one holding ``pyproject.toml``, ``deploy/`` and ``src/``).
REPO_ROOT: Final = Path(__file__).resolve().parents[3]
#: ``deploy/`` in the source tree: Prometheus and Grafana files.
DEPLOY_DIR: Final = REPO_ROOT / "deploy"
