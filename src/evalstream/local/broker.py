"""The embedded broker: Apache Kafka (KRaft, one node that is broker and controller) on loopback.

``.ci/install`` fetches the broker's jars with Maven (``deploy/kafka/pom.xml``) into
``~/.cache/evalstream/kafka/<version>`` (``EVALSTREAM_KAFKA_LIBS`` points elsewhere); nothing is
downloaded at run time. ``start`` writes ``server.properties`` and a log4j2 configuration into the
data directory, formats the storage with Kafka's own ``kafka.tools.StorageTool`` on the first start,
starts ``kafka.Kafka`` on free loopback ports and waits until the admin API answers (the cluster
lists its broker, unfenced), not for a log line. ``stop`` sends SIGTERM and waits for Kafka's
controlled shutdown; ``kill`` is SIGKILL, for fault tests. A stopped broker starts again on the same
ports with the same data. Any real Kafka cluster works instead: set ``EVALSTREAM_KAFKA_BOOTSTRAP``.

Exceptions: ``BrokerError`` with the cause and what to do: Java missing or too old, the jars not
installed, a port taken, a data directory formatted for another cluster, the broker exiting or not
answering during start.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import TracebackType

from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic_settings import BaseSettings, SettingsConfigDict

from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.procs import free_port, port_open, wait_until
from evalstream.runtime.settings import env_name

__all__ = [
    "KAFKA_VERSION",
    "MIN_JAVA",
    "BrokerError",
    "EmbeddedBroker",
    "EmbeddedBrokerSettings",
    "java_command",
    "kafka_libs",
]

log = logging.getLogger(__name__)

#: The broker version; ``deploy/kafka/pom.xml`` names the same (a test checks).
KAFKA_VERSION = "4.4.0"
#: Kafka 4 brokers need Java 17 or newer.
MIN_JAVA = 17
#: A fixed 512 MB heap, touched at start: enough for the tests' and the benchmarks' loads on a 2-core
#: machine that runs the whole stack, and a resident size that does not creep up as the heap grows,
#: so the soak can hold the broker to the same flatness check as every other process (docs/kafka.md).
JVM_OPTIONS = (
    "-Xms512m",
    "-Xmx512m",
    "-XX:+AlwaysPreTouch",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
NODE_ID = 1

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


class BrokerError(RuntimeError):
    """The embedded broker could not be started; the message says why and what to do."""


class EmbeddedBrokerSettings(BaseSettings):
    """Where the embedded broker's jars are (the broker ``evalstream up`` and the tests start)."""

    model_config = SettingsConfigDict(
        env_prefix="EVALSTREAM_KAFKA_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    libs: Path | None = None
    """Folder of the embedded broker's jars; unset: ``$XDG_CACHE_HOME/evalstream/kafka/<version>``
    (``~/.cache``), where ``.ci/install`` puts them."""


def kafka_libs() -> Path:
    """The folder of the broker's jars, as ``.ci/install`` left it."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    libs = EmbeddedBrokerSettings().libs or cache_home / "evalstream" / "kafka" / KAFKA_VERSION
    if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        raise BrokerError(
            f"Apache Kafka {KAFKA_VERSION} is not installed in {libs} (no kafka_2.13-{KAFKA_VERSION}.jar): "
            "run `bash .ci/install` (it fetches the broker with Maven, deploy/kafka/pom.xml), or set "
            f"{env_name(EmbeddedBrokerSettings, 'libs')} to a folder of its jars"
        )
    return libs


def java_command() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` or the one on PATH, checked to be Java 17+."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None or not Path(java).is_file():
        raise BrokerError(
            f"Java not found ({'JAVA_HOME=' + home if home else 'no java on PATH'}): the embedded Kafka "
            f"broker needs Java {MIN_JAVA} or newer; install it (Debian: apt-get install "
            "openjdk-17-jre-headless) or point JAVA_HOME at one, or use an existing cluster (--bootstrap)"
        )
    major = _java_major(java)
    if major < MIN_JAVA:
        raise BrokerError(
            f"{java} is Java {major}; Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or newer: install "
            "it (Debian: apt-get install openjdk-17-jre-headless) and point JAVA_HOME at it"
        )
    return java


@cache
def _java_major(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"cannot run {java} -version: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise BrokerError(f"cannot tell the Java version of {java}: `java -version` printed {out.stderr!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392"
        major = int(match.group(2))
    return major


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            props[key.strip()] = value.strip()
    return props


def new_cluster_id() -> str:
    """A random KRaft cluster id (a UUID in URL-safe base64 without padding, as Kafka makes them).
    Like Kafka's ``Uuid.randomUuid``, never one that starts with "-", which a command line would take
    for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(kw_only=True)
class EmbeddedBroker:
    """An Apache Kafka process (KRaft, one node) serving on loopback.

    >>> with EmbeddedBroker(data_dir=Path("/tmp/b")) as broker:  # doctest: +SKIP
    ...     broker.bootstrap  # "127.0.0.1:40123"
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port (kept for restarts)
    controller_port: int = 0
    #: None: the id the data directory was formatted with, or a new one for a fresh directory.
    cluster_id: str | None = None
    keep_data: bool = True  # False: wipe the data directory on the first start
    startup_timeout: float = 90.0
    log_file: Path | None = None
    jvm_options: tuple[str, ...] = JVM_OPTIONS
    _child: ChildProcess | None = field(default=None, init=False, repr=False)
    _started_once: bool = field(default=False, init=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.alive

    @property
    def pid(self) -> int | None:
        return self._child.pid if self.running and self._child else None

    @property
    def logs_dir(self) -> Path:
        """Kafka's ``log.dirs``: the partitions' data."""
        return self.data_dir / "kafka-logs"

    def _config(self) -> Path:
        voters = f"{NODE_ID}@{self.host}:{self.controller_port}"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.logs_dir),
            # One node: every internal topic has one replica, and few partitions (fast first use).
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            # After a SIGKILL the restarted node waits for its old registration's session to expire
            # before it is unfenced (9 s by default): shorter here, with heartbeats to match.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            # A group forms at once: no waiting for more members to join.
            "group.initial.rebalance.delay.ms": "0",
            # Threads and buffers for a 2-core machine (defaults are for a server of its own).
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _java(self, main: str, *args: str, heap: tuple[str, ...]) -> list[str]:
        return [
            java_command(),
            *heap,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            str(kafka_libs() / "*"),
            main,
            *args,
        ]

    def _format(self, config: Path) -> None:
        """Format the storage on first use; check a kept one belongs to this cluster."""
        meta = self.logs_dir / "meta.properties"
        if meta.is_file():
            found = _read_properties(meta)
            formatted_for = found.get("cluster.id")
            if self.cluster_id is not None and formatted_for != self.cluster_id:
                raise BrokerError(
                    f"the broker's data directory {self.logs_dir} was formatted for cluster "
                    f"{formatted_for!r}, not {self.cluster_id!r}: start with a fresh data directory "
                    "(`evalstream up` without --keep-data) or with cluster id "
                    f"{formatted_for!r}"
                )
            if found.get("node.id") != str(NODE_ID):
                raise BrokerError(
                    f"the broker's data directory {self.logs_dir} belongs to node {found.get('node.id')}, "
                    f"not {NODE_ID}: start with a fresh data directory"
                )
            self.cluster_id = formatted_for
            return
        self.cluster_id = self.cluster_id or new_cluster_id()
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={self.cluster_id}",  # one word: an id may start with "-" (a given one)
            "--config",
            str(config),
            heap=("-Xmx256m", "-XX:TieredStopAtLevel=1"),
        )
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BrokerError(
                f"formatting the broker's storage in {self.logs_dir} failed (exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr)[-2000:]}"
            )

    def _answers(self) -> bool:
        """True when the admin API lists this node as an unfenced broker."""
        if not port_open(self.host, self.port):
            return False
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=[self.bootstrap],
                request_timeout_ms=3000,
                reconnect_backoff_ms=50,
                reconnect_backoff_max_ms=200,
                client_id="evalstream-ready",
            )
        except KafkaError:
            return False
        try:
            cluster = admin.describe_cluster()
            admin.list_topics()
        except KafkaError:
            return False
        finally:
            admin.close()
        return any(not b.get("is_fenced", False) for b in cluster.get("brokers", []))

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        java_command()
        kafka_libs()
        if not self._started_once and not self.keep_data and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        for name in ("port", "controller_port"):
            chosen = getattr(self, name)
            if chosen == 0:
                setattr(self, name, free_port(self.host))
            elif port_open(self.host, chosen):
                raise BrokerError(
                    f"port {self.host}:{chosen} ({name}) is taken by another process: stop it, "
                    "or let the broker pick a free port (0)"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._config()
        self._format(config)
        self._started_once = True
        child = ChildProcess(
            name="kafka",
            cmd=self._java("kafka.Kafka", str(config), heap=self.jvm_options),
            log_file=self.log_file or self.data_dir / "broker.log",
        )
        self._child = child
        child.start()
        try:
            wait_until(
                lambda: not child.alive or self._answers(),
                timeout=self.startup_timeout,
                what=f"Kafka's admin API on {self.bootstrap}",
                interval=0.1,
            )
        except TimeoutError as exc:
            self.kill()
            raise BrokerError(
                f"Kafka did not answer on {self.bootstrap} within {self.startup_timeout:.0f}s; "
                f"log {child.log_file}:\n{_tail(child)}"
            ) from exc
        if not child.alive:
            raise BrokerError(_why_it_died(child, self))
        log.info("Kafka %s ready on %s (data in %s)", KAFKA_VERSION, self.bootstrap, self.data_dir)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: Kafka's controlled shutdown (logs flushed, clean-shutdown marker written); SIGKILL
        if it has not exited after ``timeout`` seconds."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(grace=timeout)

    def kill(self) -> None:
        """SIGKILL, for fault tests: no controlled shutdown."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _tail(child: ChildProcess, lines: int = 25) -> str:
    return "\n".join(child.output().splitlines()[-lines:])


def _why_it_died(child: ChildProcess, broker: EmbeddedBroker) -> str:
    out = child.output()
    head = f"Kafka exited with code {child.returncode} while starting"
    if "Address already in use" in out:
        cause = (
            f"a port it needs ({broker.port} or {broker.controller_port}) was taken meanwhile by another "
            "process: start again (port 0 picks free ones)"
        )
    elif "Invalid cluster.id" in out or "cluster ID" in out:
        cause = f"its data directory {broker.logs_dir} belongs to another cluster: start with a fresh one"
    elif "OutOfMemoryError" in out:
        cause = "it ran out of heap: give it more with jvm_options (-Xmx)"
    else:
        cause = "see the log below"
    return f"{head}: {cause}; log {child.log_file}:\n{_tail(child)}"
