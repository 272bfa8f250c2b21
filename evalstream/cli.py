"""The ``evalstream`` command line: one typer app, each command a thin shell over a module.

Commands are registered below, one line each; the work lives in the named modules.
"""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="evalstream",
    help="Streaming evaluation of deployed LLMs: Kafka -> Beam -> cascaded judges -> Prometheus.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --- command registrations (one line each; keep sorted) ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
