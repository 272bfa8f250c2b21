"""The ``evalstream`` command line: a typer app whose commands are thin shells over tools,
evaluation and ``local``."""
