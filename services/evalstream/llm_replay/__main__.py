"""``python -m evalstream.llm_replay --port 0``: run the replay LLM server."""

from __future__ import annotations

import sys

from .server import main

sys.exit(main())
