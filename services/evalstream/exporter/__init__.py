"""The metrics exporter: verdicts and summaries from Kafka in, Prometheus ``/metrics`` out.

``core.ExporterCore`` applies decoded records to plain totals (pure, registry passed in);
``server`` is the Kafka and HTTP shell; ``state`` saves totals with offsets, so each record is
counted exactly once across restarts. See ``docs/metrics.md`` for every metric.
"""
