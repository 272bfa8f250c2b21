"""The wire contract and its vocabulary: topic names, dimensions and labels, the JSON event model,
the cascade config. Imports nothing of evalstream but the generated ``evalstream.v1``."""
