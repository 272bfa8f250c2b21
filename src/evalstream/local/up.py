"""``evalstream up``: the whole stack on one machine, started in order and stopped in reverse.

Broker (unless ``--bootstrap`` points at a running Kafka), the replay LLM server, judge servers
(tier 0 rules, tier 1 encoder, tier 2 LLM), a cascade calibrated against them on XSTest human
labels, the pipeline, the exporter, Alertmanager (where installed), Prometheus with the alert rules
sending to it, and a traffic replay, each its own process with its own log under the state
directory. Prints where each part is and how to stop it; Ctrl-C (or SIGTERM) stops everything
cleanly. If any part dies, ``up`` says which and where its log is, stops the rest and exits non-zero.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evalstream.kafka.admin import ensure_topics
from evalstream.local.alertmanager import AlertmanagerServer, find_binary
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.prometheus import PrometheusServer
from evalstream.local.supervisor import ChildProcess, ChildStartError, python_module
from evalstream.runtime.procs import wait_until
from evalstream.runtime.settings import KafkaSettings
from evalstream.runtime.tables import print_table
from evalstream.wire.dimensions import Tier

__all__ = ["Stack", "StackOptions", "up"]

log = logging.getLogger(__name__)

JUDGE_READY = r"evalstream-judge listening on (\S+)"
_JUDGE_NAMES: dict[int, str] = {Tier.RULES: "rules", Tier.ENCODER: "encoder", Tier.LLM: "llm"}


@dataclass(frozen=True, slots=True, kw_only=True)
class StackOptions:
    state_dir: Path = Path(".evalstream")
    bootstrap: str | None = None  # None: start the embedded broker
    replay_rate: float = 50.0  # events per second
    replay_malformed: float = 0.02
    replay_repeat: int = 1000  # effectively "keep going"
    models: tuple[str, ...] = ()
    cascade_config: Path | None = None  # None: calibrate on XSTest against the running tiers
    sampling_config: Path | None = None
    fresh: bool = True  # start the broker on an empty data directory (False: keep the last run's)
    tiers: tuple[int, ...] = (Tier.RULES, Tier.ENCODER, Tier.LLM)
    scrape_interval_s: float = 5.0
    alpha: float = 0.15  # calibration target: agreement with humans >= 1 - alpha ...
    delta: float = 0.1  # ... with probability >= 1 - delta


@dataclass(kw_only=True)
class Stack:
    options: StackOptions
    console: Console = field(default_factory=Console)
    broker: EmbeddedBroker | None = None
    children: list[ChildProcess] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)
    judge_metrics: dict[int, str] = field(default_factory=dict)
    prometheus: PrometheusServer | None = None
    alertmanager: AlertmanagerServer | None = None

    @property
    def logs(self) -> Path:
        return self.options.state_dir / "logs"

    def _child(self, name: str, cmd: list[str], ready: str | None = None) -> ChildProcess:
        child = ChildProcess(name=name, cmd=cmd, log_file=self.logs / f"{name}.log", ready=ready)
        self.children.append(child)
        return child

    def start(self) -> None:
        opts = self.options
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if opts.bootstrap is None:
            self.broker = EmbeddedBroker(
                data_dir=opts.state_dir / "broker",
                keep_data=not opts.fresh,
                log_file=self.logs / "broker.log",
            )
            self.broker.start()
            bootstrap = self.broker.bootstrap
            self.where["broker (Apache Kafka, embedded)"] = bootstrap
        else:
            bootstrap = opts.bootstrap
            self.where["Kafka (external)"] = bootstrap
        kafka = KafkaSettings(bootstrap=bootstrap)
        ensure_topics(kafka)

        judges = self._start_judges()
        cascade = opts.cascade_config or self._calibrate(judges)

        pipeline_args = [
            "--bootstrap",
            bootstrap,
            "--judges",
            ",".join(f"{t}={a}" for t, a in judges.items()),
            "--metrics-port",
            "0",
        ]
        pipeline_args += ["--cascade-config", str(cascade)]
        if opts.sampling_config:
            pipeline_args += ["--sampling-config", str(opts.sampling_config)]
        pipeline = self._child(
            "pipeline", python_module("evalstream.pipeline", *pipeline_args), r"pipeline consuming"
        )
        pipeline.start()
        pipeline_metrics = _metrics_address(pipeline)
        self.where["pipeline (Beam micro-batches)"] = (
            f"log {pipeline.log_file}, http://{pipeline_metrics}/metrics"
        )

        exporter = self._child(
            "exporter",
            python_module(
                "evalstream.exporter",
                "--bootstrap",
                bootstrap,
                "--metrics-port",
                "0",
                "--state-file",
                str(opts.state_dir / "exporter" / "state.json"),
                "--cascade-config",
                str(cascade),
            ),
            r"evalstream-exporter metrics on http://(\S+)/metrics",
        )
        match = exporter.start()
        assert match is not None
        self.where["exporter /metrics"] = f"http://{match.group(1)}/metrics"
        alertmanagers = self._start_alertmanager()
        self.prometheus = PrometheusServer(
            targets={
                "evalstream-exporter": [match.group(1)],
                "evalstream-judges": list(self.judge_metrics.values()),
                "evalstream-pipeline": [pipeline_metrics],
            },
            data_dir=opts.state_dir / "prometheus",
            scrape_interval_s=opts.scrape_interval_s,
            evaluation_interval_s=opts.scrape_interval_s,
            alertmanagers=alertmanagers,
        )
        self.prometheus.start()
        self.where["Prometheus (rules and alerts loaded)"] = (
            f"{self.prometheus.url}  (alerts: {self.prometheus.url}/alerts)"
        )

        replay_args = [
            "replay",
            "--rate",
            str(opts.replay_rate),
            "--malformed",
            str(opts.replay_malformed),
            "--repeat",
            str(opts.replay_repeat),
            "--no-progress",
        ]
        for model in opts.models:
            replay_args += ["--models", model]
        replay = self._child("replay", python_module("evalstream.cli.app", *replay_args))
        replay.env["EVALSTREAM_KAFKA_BOOTSTRAP"] = bootstrap
        replay.start()
        self.where["traffic replay (XSTest v2)"] = f"{opts.replay_rate:g} events/s, log {replay.log_file}"

    def _start_alertmanager(self) -> list[str]:
        """Alertmanager with a receiver that only keeps the alerts (nothing is sent anywhere), where
        Debian's prometheus-alertmanager is installed; returns the addresses for Prometheus."""
        if find_binary() is None:
            self.where["Alertmanager"] = "not installed (apt-get install prometheus-alertmanager)"
            return []
        self.alertmanager = AlertmanagerServer(
            data_dir=self.options.state_dir / "alertmanager", group_wait_s=10.0
        )
        self.alertmanager.start()
        self.where["Alertmanager (alerts from Prometheus)"] = (
            f"{self.alertmanager.url}  (API: {self.alertmanager.url}/api/v2/alerts)"
        )
        return [self.alertmanager.address]

    def _start_judges(self) -> dict[int, str]:
        """Judge servers for the chosen tiers (and what they need: the replay LLM server, the
        encoder artefact); returns tier -> gRPC address."""
        opts = self.options
        judges: dict[int, str] = {}
        for tier in sorted(opts.tiers):
            env: dict[str, str] = {}
            if tier == Tier.ENCODER:
                env["EVALSTREAM_ENCODER_MODEL_DIR"] = str(self._encoder_artefact())
            elif tier == Tier.LLM:
                llm = self._child(
                    "llm-replay",
                    python_module("evalstream.llm_replay", "--port", "0"),
                    r"evalstream-llm-replay listening on (\S+)",
                )
                match = llm.start()
                assert match is not None
                self.where["LLM endpoint (replay of recorded GPT-4 verdicts)"] = match.group(1)
                env["EVALSTREAM_LLM_BASE_URL"] = match.group(1) + "/v1"
            name = _JUDGE_NAMES[tier]
            child = self._child(
                f"judge-tier{tier}",
                python_module(
                    "evalstream.judges.server", "--judge", name, "--port", "0", "--metrics-port", "0"
                ),
                JUDGE_READY,
            )
            child.env.update(env)
            match = child.start(timeout=180)
            assert match is not None
            judges[tier] = match.group(1)
            self.judge_metrics[tier] = _metrics_address(child)
            self.where[f"judge tier {tier} ({name}, gRPC)"] = judges[tier]
        return judges

    def _encoder_artefact(self) -> Path:
        from evalstream.judges.encoder import EncoderArtefactError, load_artefact

        artefact = self.options.state_dir / "encoder"
        if (artefact / "metadata.json").is_file():
            try:
                load_artefact(artefact)
                return artefact
            except EncoderArtefactError as exc:  # made by an older evalstream: train it again
                self.console.print(f"the tier-1 artefact in {artefact} cannot be served: {exc}")
        train = self._child(
            "encoder-train",
            python_module("evalstream.judges.encoder_train", "--out", str(artefact), "--force"),
        )
        self.console.print(
            "training the tier-1 encoder judge on XSTest and rubric scores (once: about a minute, "
            f"several on a busy machine; log: {train.log_file}) ..."
        )
        train.start()
        code = train.wait(900)
        self.children.remove(train)
        if code != 0:
            raise ChildStartError(f"encoder training failed (exit {code}); log: {train.log_file}")
        return artefact

    def _calibrate(self, judges: dict[int, str]) -> Path:
        """Ask every tier about the labelled XSTest items and fit the cascade thresholds on them."""
        from evalstream.pipeline.judge_client import JudgeClient, RetryPolicy
        from evalstream.tools.collect import calibrate_live, collect_xstest, write_tables

        opts = self.options
        policy = RetryPolicy(deadline_s=120.0, attempt_timeout_s=120.0)
        clients = {t: JudgeClient(a, tier=t, policy=policy) for t, a in judges.items()}
        try:
            with self.console.status("calibrating the cascade on XSTest human labels ..."):
                data = collect_xstest(sorted(judges), lambda t, request: clients[t].judge(request))
                result = calibrate_live(data, alpha=opts.alpha, delta=opts.delta)
        finally:
            for client in clients.values():
                client.close()
        out = opts.state_dir / "calibration"
        write_tables(data, out)
        path = out / "cascade.yaml"
        result.config.dump(path)
        rules = "; ".join(
            f"{dim}: " + ", ".join(r.rule() for r in spec.tiers)
            for dim, spec in result.config.dimensions.items()
        )
        agreement = "n/a" if result.test_agreement is None else f"{result.test_agreement:.3f}"
        self.where["cascade (calibrated)"] = (
            f"{path}: {rules}; held-out agreement {agreement} at coverage {result.test_coverage:.2f} "
            f"(target >= {1 - opts.alpha:.2f})"
        )
        return path

    def describe(self) -> Table:
        table = Table(title="evalstream is up", show_lines=False)
        table.add_column("part")
        table.add_column("where")
        for part, where in self.where.items():
            table.add_row(part, where)
        table.caption = f"logs in {self.logs} - Ctrl-C stops everything"
        return table

    def dead_child(self) -> ChildProcess | None:
        for child in self.children:
            if not child.alive and not (child.name == "replay" and child.returncode == 0):
                return child
        return None

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        if self.alertmanager is not None:
            self.alertmanager.stop()
        for child in reversed(self.children):
            code = child.stop()
            log.info("stopped %s (exit %s)", child.name, code)
        if self.broker is not None:
            self.broker.stop()


_METRICS_LINE = re.compile(r"metrics on http://(\S+)/metrics")


def _metrics_address(child: ChildProcess) -> str:
    """Judge servers and the pipeline log their /metrics address once they serve it."""
    wait_until(lambda: bool(_METRICS_LINE.search(child.output())), timeout=30, what=f"{child.name} metrics")
    found = _METRICS_LINE.search(child.output())
    assert found is not None
    return found.group(1)


def up(
    options: StackOptions,
    *,
    stop: threading.Event | None = None,
    on_ready: Callable[[Stack], None] | None = None,
) -> int:
    """Start the stack and block until Ctrl-C/SIGTERM (or ``stop``); returns the exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    stack = Stack(options=options)
    code = 0
    try:
        stack.start()
        print_table(stack.console, stack.describe())
        if on_ready:
            on_ready(stack)
        while not stop.wait(1.0):
            if (dead := stack.dead_child()) is not None:
                stack.console.print(
                    f"[red]{dead.name} exited with code {dead.returncode}[/red]; its log: {dead.log_file}"
                )
                code = 1
                break
    finally:
        # Stopping never depends on the terminal: with `up | tee log`, Ctrl-C ends tee too, and
        # printing then fails (BrokenPipeError), which must not leave the children running.
        try:
            stack.console.print("stopping ...")
        finally:
            stack.stop()
        stack.console.print("stopped.")
    return code
