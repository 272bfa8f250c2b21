"""``python -m evalstream.exporter``: see ``server.py``."""

from evalstream.exporter.server import main

raise SystemExit(main())
