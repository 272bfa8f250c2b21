"""The ``evalstream`` command line: one typer app, each command a thin shell over a module.

Commands are registered below, one line each; the work lives in the named modules.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from evalstream.calibration import calibrate_command
from evalstream.replay import replay_command
from evalstream.report import report_command

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
        force=True,  # Beam logs a warning at import, which installs a root handler first
    )


# --- command registrations (one line each; keep sorted) ---
app.command("calibrate")(calibrate_command)


@app.command(
    "pipeline",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def _pipeline(ctx: typer.Context) -> None:
    """Run the Beam pipeline (flags: `evalstream pipeline --help`)."""
    from evalstream.pipelines.run import run

    run(ctx.args)


app.command("replay")(replay_command)
app.command("report")(report_command)


@app.command("up")
def _up(
    state_dir: Path = typer.Option(Path(".evalstream"), help="Where logs and broker data go."),
    bootstrap: str | None = typer.Option(None, help="Use this Kafka instead of the embedded broker."),
    rate: float = typer.Option(50.0, help="Replay events per second."),
    malformed: float = typer.Option(0.02, help="Share of replayed events that are malformed."),
    model: list[str] = typer.Option([], help="Replay only these XSTest models (repeatable)."),
    cascade_config: Path | None = typer.Option(None, help="Cascade config YAML (evalstream calibrate)."),
    sampling_config: Path | None = typer.Option(None, help="Sampling config YAML."),
    keep_data: bool = typer.Option(False, help="Keep the embedded broker's data from the last run."),
) -> None:
    """Start broker, judges, pipeline and a traffic replay on this machine; Ctrl-C stops them all."""
    from evalstream.up import StackOptions, up

    options = StackOptions(
        state_dir=state_dir,
        bootstrap=bootstrap,
        replay_rate=rate,
        replay_malformed=malformed,
        models=tuple(model),
        cascade_config=cascade_config,
        sampling_config=sampling_config,
        fresh=not keep_data,
    )
    raise typer.Exit(up(options))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
