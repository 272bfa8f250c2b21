"""Beam transforms of the evalstream pipeline and its runner.

Transforms take and return PCollections and know nothing of Kafka; only ``run.run(argv)`` names
Kafka or a runner. Pipelines never import ``evalstream.services``.
"""
