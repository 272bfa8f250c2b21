"""The embedded broker's own contract: its version matches the Maven pom, and each way a start can go
wrong ends in a ``BrokerError`` that names the cause and what to do, within a deadline (never a hang).
Broker behaviour (groups, transactions, restarts) is in test_broker_conformance.py."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from evalstream.local.broker import KAFKA_VERSION, BrokerError, EmbeddedBroker, kafka_libs, new_cluster_id

ROOT = Path(__file__).resolve().parents[1]


def test_pom_names_the_version_the_broker_runs() -> None:
    pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match is not None
    assert match.group(1) == KAFKA_VERSION
    assert (kafka_libs() / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()


def test_missing_jars_name_the_install_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_KAFKA_LIBS", str(tmp_path / "nowhere"))
    with pytest.raises(BrokerError, match=r"not installed in .*nowhere.*\.ci/install"):
        EmbeddedBroker(data_dir=tmp_path / "data").start()


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(BrokerError, match=r"Java not found \(JAVA_HOME=.*no-jdk\).*Java 17 or newer"):
        EmbeddedBroker(data_dir=tmp_path / "data").start()


def test_too_old_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JDK 11 stand-in: a ``java`` that answers ``-version`` as OpenJDK 11 does (no JDK 11 here)."""
    java = tmp_path / "jdk11" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(java.parent.parent))
    with pytest.raises(BrokerError, match=r"is Java 11; Apache Kafka .* needs Java 17 or newer"):
        EmbeddedBroker(data_dir=tmp_path / "data").start()


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=rf"port 127\.0\.0\.1:{port} \(port\) is taken"):
            EmbeddedBroker(data_dir=tmp_path / "data", port=port).start()


def test_a_broker_dying_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(BrokerError, match=r"(?s)Kafka exited with code \d+ while starting.*NoSuchOption"):
        EmbeddedBroker(data_dir=tmp_path / "data", jvm_options=("-XX:+NoSuchOption",)).start()
    assert time.monotonic() - began < 60


@pytest.mark.slow
def test_kept_data_of_another_cluster_is_refused_and_fresh_data_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = EmbeddedBroker(data_dir=data)
    with first:
        cluster = first.cluster_id
    assert cluster is not None
    other = EmbeddedBroker(data_dir=data, cluster_id=new_cluster_id())
    with pytest.raises(BrokerError, match=rf"formatted for cluster '{re.escape(cluster)}'.*fresh data"):
        other.start()
    assert not other.running
    kept = EmbeddedBroker(data_dir=data)  # keep_data: the id it was formatted with
    with kept:
        assert kept.cluster_id == cluster
    fresh = EmbeddedBroker(data_dir=data, keep_data=False)
    with fresh:
        assert fresh.cluster_id != cluster


def test_new_cluster_ids_never_start_with_a_dash() -> None:
    """One in 64 random ids would, and StorageTool's command line then took it for an option (seen in
    CI: 'argument --cluster-id/-t: expected one argument')."""
    ids = [new_cluster_id() for _ in range(3000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids) and all(len(i) == 22 for i in ids)


@pytest.mark.slow
def test_a_given_cluster_id_that_starts_with_a_dash_formats_and_starts(tmp_path: Path) -> None:
    cluster_id = "-rvbo6PeR6qc1nCNeZwYwQ"  # a valid id (16 bytes, URL-safe base64) led by "-"
    with EmbeddedBroker(data_dir=tmp_path / "broker", cluster_id=cluster_id) as broker:
        assert broker.cluster_id == cluster_id and broker.running
