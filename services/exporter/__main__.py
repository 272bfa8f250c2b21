"""``python -m evalstream.services.exporter``: see ``server.py``."""

from evalstream.services.exporter.server import main

raise SystemExit(main())
