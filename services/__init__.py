"""Long-running services: judge servers, the replay LLM server and the metrics exporter.

Services never import Beam; they share only the wire contract (``evalstream.v1``) and the plain
vocabularies in ``evalstream`` (``dimensions``, ``topics``, ``contract``) with the pipeline.
"""
