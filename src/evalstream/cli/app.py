"""The ``evalstream`` command line: one typer app, each command a thin shell over a module.

Commands are registered below, one line each; the work lives in the named modules, which are
imported only when their command runs (``cli/lazy.py``), so ``evalstream --help`` stays quick.
"""

from __future__ import annotations

from pathlib import Path

import typer

from evalstream.cli.lazy import LazyCommand, lazy_group
from evalstream.runtime.logs import configure_logging
from evalstream.wire.targets import DEFAULT_ALPHA, DEFAULT_DELTA

#: Commands whose shells live in their own modules: name -> shell and its docstring's first line.
LAZY_COMMANDS = {
    "calibrate": LazyCommand(
        "evalstream.cli.calibrate:calibrate_command",
        "Fit per-tier confidence thresholds on human labels and write a versioned cascade config.",
    ),
    "label": LazyCommand(
        "evalstream.tools.labels:label_command",
        "Publish human labels to Kafka, from a file or from XSTest, for the exporter's judge agreement.",
    ),
    "recalibrate": LazyCommand(
        "evalstream.tools.recalibrate:recalibrate_command",
        "Refit the cascade's thresholds on human labels of the calibration sample, read from Kafka.",
    ),
    "redrive": LazyCommand(
        "evalstream.tools.redrive:redrive_command",
        "Publish judge-stage dead letters' events again (once each), after the judge is back.",
    ),
    "replay": LazyCommand(
        "evalstream.tools.replay:replay_command",
        "Replay XSTest v2 completions into Kafka as LLM events, optionally with malformed inputs.",
    ),
    "report": LazyCommand(
        "evalstream.cli.report:report_command",
        "Agreement of each judge and of the cascade with humans: accuracy, kappa, coverage, cost, bias.",
    ),
}

app = typer.Typer(
    cls=lazy_group(LAZY_COMMANDS),
    name="evalstream",
    help="Streaming evaluation of deployed LLMs: Kafka -> Beam -> cascaded judges -> Prometheus.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level.")) -> None:
    configure_logging(verbose)


# --- commands defined here (their imports inside) ---


@app.command(
    "pipeline",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def _pipeline(ctx: typer.Context) -> None:
    """Run the Beam pipeline (flags: `evalstream pipeline --help`)."""
    from evalstream.pipeline.run import run

    run(ctx.args)


@app.command("collect")
def _collect(
    judges: str = typer.Option(..., help="Judge targets per tier, e.g. 0=127.0.0.1:50051,1=...,2=..."),
    data: str = typer.Option(
        "xstest", help="xstest (../shared/data), or a labelled-items .jsonl file (docs/calibration.md)."
    ),
    out_dir: Path = typer.Option(Path(".evalstream/calibration"), help="Where the tables and config go."),
    alpha: float = typer.Option(
        DEFAULT_ALPHA, help="Allowed disagreement with humans: agreement >= 1 - alpha."
    ),
    delta: float = typer.Option(DEFAULT_DELTA, help="Allowed probability that the guarantee fails."),
    seed: int = typer.Option(0, help="Seed of the calibration/test halves."),
    truth_annotator: str | None = typer.Option(
        None, help="Whose labels are the truth (default: adjudicated for xstest, else the only one)."
    ),
    deadline_s: float = typer.Option(60.0, help="Deadline per judge call, retries included."),
) -> None:
    """Ask the running judge tiers about every labelled item, then calibrate the cascade on their answers."""
    from rich.progress import Progress

    from evalstream.evaluation.judgements import TableError
    from evalstream.evaluation.labelled_items import (
        read_labelled_items,
        to_labelled_set,
        write_labelled_items,
    )
    from evalstream.pipeline.judge_client import JudgeClient, RetryPolicy
    from evalstream.pipeline.settings import parse_endpoints
    from evalstream.tools.collect import (
        LIVE_SOURCE,
        calibrate_live,
        collect_items,
        write_tables,
        xstest_items,
    )

    try:
        if data in ("llmbar", "judgebench"):
            raise TableError(
                f"{data} is a pairwise set (which of two answers is better); the live tiers judge one "
                "answer, so there is nothing to collect: report or calibrate on its recorded judges with "
                f"--data {data}"
            )
        items = xstest_items(seed=seed) if data == "xstest" else read_labelled_items(Path(data))
    except TableError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc
    name = "xstest-live" if data == "xstest" else f"{Path(data).stem}-live"
    endpoints = parse_endpoints(judges)
    policy = RetryPolicy(deadline_s=deadline_s, attempt_timeout_s=deadline_s)
    clients = {tier: JudgeClient(target, tier=tier, policy=policy) for tier, target in endpoints.items()}
    try:
        with Progress() as bar:
            task = bar.add_task("collecting judgements", total=None)
            judged = collect_items(
                items,
                sorted(endpoints),
                lambda tier, request: clients[tier].judge(request),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    finally:
        for client in clients.values():
            client.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    items_path = out_dir / "items.jsonl"
    write_labelled_items(items_path, judged)
    try:
        labelled = to_labelled_set(
            judged,
            name=name,
            seed=seed,
            truth_annotator=truth_annotator or ("adjudicated" if data == "xstest" else None),
            confidence_source=LIVE_SOURCE,
        )
    except TableError as exc:
        raise typer.BadParameter(str(exc), param_hint="--truth-annotator") from exc
    judgements, humans = write_tables(labelled, out_dir)
    result = calibrate_live(labelled, alpha=alpha, delta=delta)
    config_path = out_dir / "cascade.yaml"
    result.config.dump(config_path)
    typer.echo(f"wrote {items_path} (the items with the tiers' judgements), {judgements}, {humans}")
    for dim, cascade in result.config.dimensions.items():
        rules = ", ".join(t.rule() for t in cascade.tiers)
        typer.echo(f"{dim}: {rules}")
    for dim, held in result.held_out.items():
        agreement = "n/a" if held.agreement is None else f"{held.agreement:.3f}"
        typer.echo(
            f"held-out {dim.value}: {held.items} items, coverage {held.coverage:.3f}, agreement "
            f"{agreement} (target >= {1 - alpha:.3f}), strong-tier calls per 1,000: "
            f"{held.strong_calls_per_1000:.0f}"
        )
    typer.echo(f"wrote {config_path} (version {result.config.version})")


@app.command("up")
def _up(
    state_dir: Path = typer.Option(Path(".evalstream"), help="Where logs and broker data go."),
    bootstrap: str | None = typer.Option(None, help="Use this Kafka instead of the embedded broker."),
    rate: float = typer.Option(50.0, help="Replay events per second."),
    malformed: float = typer.Option(0.02, help="Share of replayed events that are malformed."),
    model: list[str] = typer.Option([], help="Replay only these XSTest models (repeatable)."),
    cascade_config: Path | None = typer.Option(
        None, help="Cascade config YAML (default: calibrate on XSTest against the running tiers)."
    ),
    sampling_config: Path | None = typer.Option(None, help="Sampling config YAML."),
    keep_data: bool = typer.Option(False, help="Keep the embedded broker's data from the last run."),
    tiers: str = typer.Option(
        "0,1,2", help="Judge tiers to run: 0 rules, 1 encoder, 2 LLM (replayed GPT-4)."
    ),
    alpha: float = typer.Option(DEFAULT_ALPHA, help="Calibration: agreement with humans >= 1 - alpha ..."),
    delta: float = typer.Option(DEFAULT_DELTA, help="... with probability >= 1 - delta."),
) -> None:
    """Start broker, judges, pipeline and a traffic replay on this machine; Ctrl-C stops them all."""
    from evalstream.local.up import StackOptions, up

    options = StackOptions(
        state_dir=state_dir,
        bootstrap=bootstrap,
        replay_rate=rate,
        replay_malformed=malformed,
        models=tuple(model),
        cascade_config=cascade_config,
        sampling_config=sampling_config,
        fresh=not keep_data,
        tiers=tuple(int(t) for t in tiers.split(",") if t.strip()),
        alpha=alpha,
        delta=delta,
    )
    raise typer.Exit(up(options))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
