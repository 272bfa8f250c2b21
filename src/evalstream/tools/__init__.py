"""Operator tools behind CLI commands: replay, redrive, labels, collect."""
