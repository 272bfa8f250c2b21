"""evalstream: streaming evaluation of deployed LLMs.

The package links the repository's top-level folders into one namespace:

- ``evalstream.v1``: generated wire contract (``protos/evalstream/v1``)
- ``evalstream.pipelines``: Beam transforms and the pipeline runner (``pipelines/``)
- ``evalstream.services``: judge servers, the replay LLM server and the exporter (``services/``)
- ``evalstream.*`` modules in ``evalstream/``: the JSON contract, settings, broker, replay and CLI.
"""

__version__ = "0.1.0"
