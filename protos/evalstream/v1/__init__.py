"""Generated protobuf and gRPC code for the evalstream wire contract (``python protos/generate.py``)."""
