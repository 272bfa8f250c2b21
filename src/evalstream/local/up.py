"""``evalstream up``: the whole stack on one machine, started in order and stopped in reverse.

Broker (unless ``--bootstrap`` points at a running Kafka), the replay LLM server, judge servers
(tier 0 rules, tier 1 encoder, tier 2 LLM), a cascade calibrated against them on XSTest human
labels, the pipeline, the exporter, Alertmanager (where installed), Prometheus with the alert rules
sending to it, and a traffic replay, each its own process with its own log under the state
directory. Prints where each part is and how to stop it. If any part dies, ``up`` says which and
where its log is, stops the rest and exits non-zero.

Nothing outlives ``up``: Ctrl-C, SIGTERM and SIGHUP (its terminal closed) stop every part in reverse
order, also while the stack is still starting; so does a broken stdout (``up | head -1``, or a ``tee``
that got the Ctrl-C first), noticed when a write fails or, while ``up`` is quiet, when the pipe's
reader is gone. If ``up`` itself is killed, the kernel kills its children (the launcher's
``PR_SET_PDEATHSIG``, ``evalstream.local.supervisor``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

from rich.console import Console
from rich.table import Table

from evalstream.kafka.admin import ensure_topics
from evalstream.local.alertmanager import AlertmanagerServer, find_binary
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.output import Output
from evalstream.local.prometheus import PrometheusServer
from evalstream.local.servers import exporter as exporter_process
from evalstream.local.servers import judge_server, replay_llm
from evalstream.local.servers import pipeline as pipeline_process
from evalstream.local.supervisor import ChildProcess, ChildStartError, python_module
from evalstream.runtime.ready import METRICS_READY, UP_READY
from evalstream.runtime.settings import KafkaSettings, env_name
from evalstream.wire.dimensions import Tier
from evalstream.wire.targets import DEFAULT_ALPHA, DEFAULT_DELTA

__all__ = ["STOP_SIGNALS", "Stack", "StackOptions", "up"]

log = logging.getLogger(__name__)

#: The signals that stop ``up`` and everything it started.
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
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
    alpha: float = DEFAULT_ALPHA  # calibration target: agreement with humans >= 1 - alpha ...
    delta: float = DEFAULT_DELTA  # ... with probability >= 1 - delta


class Interrupted(BaseException):
    """A stop signal arrived while the stack was still starting (a BaseException, as
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it)."""


@dataclass(kw_only=True)
class Stack:
    options: StackOptions
    output: Output = field(default_factory=Output)
    broker: EmbeddedBroker | None = None
    children: list[ChildProcess] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)
    judge_metrics: dict[int, str] = field(default_factory=dict)
    prometheus: PrometheusServer | None = None
    alertmanager: AlertmanagerServer | None = None

    @property
    def logs(self) -> Path:
        return self.options.state_dir / "logs"

    @property
    def console(self) -> Console:
        return self.output.console

    def _child(self, child: ChildProcess) -> ChildProcess:
        """Register ``child`` (to be stopped) before it starts; its log goes under the state dir."""
        child.log_file = self.logs / f"{child.name}.log"
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
        pipeline = self._child(pipeline_process(*pipeline_args))
        pipeline.start()
        pipeline_metrics = pipeline.await_line(METRICS_READY)["address"]
        self.where["pipeline (Beam micro-batches)"] = (
            f"log {pipeline.log_file}, http://{pipeline_metrics}/metrics"
        )

        exporter = self._child(
            exporter_process(
                "--bootstrap",
                bootstrap,
                "--metrics-port",
                "0",
                "--state-file",
                str(opts.state_dir / "exporter" / "state.json"),
                "--cascade-config",
                str(cascade),
            )
        )
        exporter_address = exporter.start()
        self.where["exporter /metrics"] = f"http://{exporter_address}/metrics"
        alertmanagers = self._start_alertmanager()
        self.prometheus = PrometheusServer(
            targets={
                "evalstream-exporter": [exporter_address],
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
        replay = self._child(
            ChildProcess(
                name="replay",
                cmd=python_module("evalstream.cli.app", *replay_args),
                env={env_name(KafkaSettings, "bootstrap"): bootstrap},
            )
        )
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
        from evalstream.judges.llm_http import LLMJudgeSettings
        from evalstream.judges.settings import EncoderSettings

        opts = self.options
        judges: dict[int, str] = {}
        for tier in sorted(opts.tiers):
            env: dict[str, str] = {}
            if tier == Tier.ENCODER:
                env[env_name(EncoderSettings, "model_dir")] = str(self._encoder_artefact())
            elif tier == Tier.LLM:
                llm = self._child(replay_llm())
                url = llm.start()
                self.where["LLM endpoint (replay of recorded GPT-4 verdicts)"] = url
                env[env_name(LLMJudgeSettings, "base_url")] = url + "/v1"
            name = _JUDGE_NAMES[tier]
            child = self._child(judge_server(name, "--metrics-port", "0", name=f"judge-tier{tier}", env=env))
            judges[tier] = child.start(timeout=180)
            self.judge_metrics[tier] = child.await_line(METRICS_READY)["address"]
            self.where[f"judge tier {tier} ({name}, gRPC)"] = judges[tier]
        return judges

    def _encoder_artefact(self) -> Path:
        from evalstream.judges.encoder_artefact import EncoderArtefactError, load_artefact
        from evalstream.judges.encoder_fit import recipe_changes

        artefact = self.options.state_dir / "encoder"
        if (artefact / "metadata.json").is_file():
            try:
                changes = recipe_changes(load_artefact(artefact).metadata)
            except EncoderArtefactError as exc:  # made by an older evalstream: train it again
                self.console.print(f"the tier-1 artefact in {artefact} cannot be served: {exc}")
            else:
                if not changes:
                    return artefact
                self.console.print(  # an older evalstream's recipes: train it on today's
                    f"the tier-1 artefact in {artefact} was trained on other recipes ({'; '.join(changes)})"
                )
        train = self._child(
            ChildProcess(
                name="encoder-train",
                cmd=python_module("evalstream.judges.encoder_train", "--out", str(artefact), "--force"),
            )
        )
        self.output.print(
            "training the tier-1 encoder judge on XSTest and rubric scores (once: about a minute, "
            f"several on a busy machine; log: {train.log_file}) ..."
        )
        train.start()
        code = train.wait(900)
        self.children.remove(train)  # exited: nothing to stop
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
        table = Table(title=UP_READY.format(), show_lines=False)
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
        """Stop every part in reverse order of start; one that fails to stop does not keep the rest
        running."""
        parts: list[tuple[str, Callable[[], object]]] = []
        if self.prometheus is not None:
            parts.append(("prometheus", self.prometheus.stop))
        if self.alertmanager is not None:
            parts.append(("alertmanager", self.alertmanager.stop))
        parts += [(child.name, child.stop) for child in reversed(self.children)]
        if self.broker is not None:
            parts.append(("broker", self.broker.stop))
        for name, stop in parts:
            try:
                log.info("stopped %s (exit %s)", name, stop())
            except Exception:
                log.exception("stopping %s failed", name)


def up(
    options: StackOptions,
    *,
    stop: threading.Event | None = None,
    on_ready: Callable[[Stack], None] | None = None,
    output: Output | None = None,
) -> int:
    """Start the stack and block until a stop signal (``STOP_SIGNALS``), a broken stdout, a dead
    part, or ``stop``; then stop everything. Returns the exit code."""
    stop = stop or threading.Event()
    stack = Stack(options=options, output=output or Output())
    starting = True

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if starting:  # abort the start (it may be minutes into training); the finally stops what runs
            raise Interrupted(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)
    code = 0
    try:
        stack.start()
        starting = False
        stack.output.print_table(stack.describe())
        if on_ready:
            on_ready(stack)
        while not stop.wait(1.0):
            if stack.output.reader_gone():
                log.warning("stdout is gone (its reader exited): stopping")
                break
            if (dead := stack.dead_child()) is not None:
                stack.output.print(
                    f"[red]{dead.name} exited with code {dead.returncode}[/red]; its log: {dead.log_file}"
                )
                code = 1
                break
    except Interrupted as exc:
        log.warning("%s while starting: stopping what started", exc)
        code = 1
    finally:
        starting = False
        stack.output.print("stopping ...")
        stack.stop()
        stack.output.print("stopped.")
    return code
