"""The exporter process: a Kafka consumer group feeding ``ExporterCore``, and ``/metrics``.

    python -m evalstream.exporter [--bootstrap HOST:PORT] [--metrics-port 0] [--state-file F]

When ``/metrics`` listens it prints exactly one line to stdout, ``EXPORTER_READY``
(``evalstream.runtime.ready``); everything else goes to the log on
stderr. SIGTERM or SIGINT: save, commit, publish, exit 0.

The Kafka side (the consumer group, exactly once across restarts) is ``consumer.py``; this module
parses the flags, serves ``/metrics`` and handles the signals.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server
from pydantic import ValidationError

from evalstream.runtime.flags import Flag, SettingsFlags, add_settings_flags, pairs
from evalstream.runtime.ready import EXPORTER_READY
from evalstream.runtime.settings import KafkaSettings

from .consumer import Exporter, ExporterError
from .labels import LabelName
from .settings import ExporterSettings
from .state import StateError

__all__ = ["flags", "main"]

log = logging.getLogger("evalstream.exporter.server")  # also when run as __main__

# --- main ---------------------------------------------------------------------------------------


def _grouped(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


#: Exporter flags whose name or form differs from ``--field-name``.
_FLAGS = {
    "flush_interval_s": Flag(name="--flush-interval"),
    "lag_interval_s": Flag(name="--lag-interval"),
    "agreement_truth_annotator": Flag(name="--truth-annotator"),
    "agreement_ttl_s": Flag(name="--agreement-ttl"),
    "drift_current_s": Flag(name="--drift-current"),
    "drift_bucket_s": Flag(name="--drift-bucket"),
    "drift_reference_s": Flag(name="--drift-reference-window"),
    "drift_reference_bucket_s": Flag(name="--drift-reference-bucket"),
    "label_caps": Flag(
        name="--label-cap",
        parse=pairs("--label-cap"),
        collect=lambda given: {name: int(n) for name, n in given},
        metavar="NAME=N",
        help="most values of a label name, repeatable",
    ),
    "label_allow": Flag(
        name="--allow-label",
        parse=pairs("--allow-label"),
        collect=_grouped,
        metavar="NAME=VALUE",
        help="keep only the listed values of a label name, repeatable",
    ),
}


def flags() -> tuple[argparse.ArgumentParser, SettingsFlags, SettingsFlags]:
    """The exporter's flags: ``ExporterSettings`` fields and ``--bootstrap`` (``runtime/flags.py``)."""
    parser = argparse.ArgumentParser(
        prog="python -m evalstream.exporter",
        description="Turn verdicts and summaries into Prometheus metrics. Unset options come from "
        "EVALSTREAM_EXPORTER_* (and EVALSTREAM_KAFKA_*) or defaults.",
    )
    kafka = add_settings_flags(parser, KafkaSettings, only=("bootstrap",))
    exporter = add_settings_flags(parser, ExporterSettings, flags=_FLAGS)
    return parser, exporter, kafka


def _parse(argv: Sequence[str] | None) -> tuple[ExporterSettings, KafkaSettings]:
    parser, exporter, kafka = flags()
    args = parser.parse_args(argv)
    return ExporterSettings(**exporter.explicit(args)), KafkaSettings(**kafka.explicit(args))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        settings, kafka = _parse(argv)
        registry = CollectorRegistry()
        exporter = Exporter(settings, kafka, registry)
        plan = exporter.open()
        http, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    except (ValidationError, ValueError, StateError, ExporterError, OSError) as exc:
        log.error("exporter not started: %s", exc)
        return 2
    host = settings.metrics_host
    address = f"[{host}]:{http.server_port}" if ":" in host else f"{host}:{http.server_port}"
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: saving and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "consuming %s and %s as group %s (%s); label budget %s",
        settings.verdicts_topic,
        settings.summaries_topic,
        settings.group_id,
        plan.reason,
        {str(n): settings.budget().cap(n) for n in LabelName},
    )
    log.info(
        "human labels from %s (truth annotator %s); drift %s",
        settings.labels_topic or "nowhere",
        settings.agreement_truth_annotator,
        settings.drift_config(),
    )
    EXPORTER_READY.announce(address=address)
    try:
        exporter.run(stop)
    finally:
        exporter.close()
        http.shutdown()
    log.info("stopped after applying %d records", exporter.applied)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
