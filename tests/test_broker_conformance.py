"""What evalstream needs from a Kafka broker, checked on the real embedded one (Apache Kafka, KRaft).

Each test uses its own topics, groups and transactional ids. Heavy tests (100k messages, a broker
restart) are marked slow. docs/kafka.md lists what is checked and why the pipeline needs it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, MessageSizeTooLargeError, ProducerFencedError

from evalstream.local.broker import EmbeddedBroker
from evalstream.runtime.procs import wait_until

PARTITIONS = 4


# --- helpers ---------------------------------------------------------------------------------------


def create_topic(bootstrap: str, name: str, partitions: int = PARTITIONS, **configs: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict(configs))])
    finally:
        admin.close()


def delete_topic(bootstrap: str, name: str) -> None:
    """Heavy tests drop their topic so the session broker's disk use stays small."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([name])
    finally:
        admin.close()


def poll_until(
    consumer: KafkaConsumer,
    done: Callable[[list[ConsumerRecord]], bool],
    *,
    timeout: float = 30.0,
    what: str = "records",
) -> list[ConsumerRecord]:
    """Poll until ``done(records so far)``; fail with what arrived if the deadline passes."""
    got: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {len(got)} records")
        for batch in consumer.poll(timeout_ms=200).values():
            got.extend(batch)
    return got


def drain(consumer: KafkaConsumer, *, quiet_s: float = 1.0) -> list[ConsumerRecord]:
    """Everything still coming: poll until nothing arrives for ``quiet_s`` (used to prove absence)."""
    got: list[ConsumerRecord] = []
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        for batch in consumer.poll(timeout_ms=200).values():
            got.extend(batch)
            last = time.monotonic()
    return got


def read_all(
    bootstrap: str, topic: str, *, isolation: str = "read_uncommitted", **consumer_args: object
) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to the end offsets seen now (no group, nothing committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, **consumer_args)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        return poll_until(
            consumer,
            lambda _: all(consumer.position(tp) >= end[tp] for tp in parts),
            what=f"{topic} up to {end}",
        )
    finally:
        consumer.close()


def group_consumer(bootstrap: str, topic: str, group: str, **args: object) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **args,
    )


def next_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    """Offsets to commit after processing ``records``: one past the last of each partition."""
    last: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        last[tp] = max(last.get(tp, -1), r.offset)
    return {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last.items()}


def values(records: Iterable[ConsumerRecord]) -> list[bytes]:
    return [r.value for r in records]


# --- topics, keys, headers -------------------------------------------------------------------------


def test_topic_has_four_partitions_and_keeps_records_where_sent(broker: EmbeddedBroker, unique: str) -> None:
    topic = f"conf-parts-{unique}"
    create_topic(broker.bootstrap, topic)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    (described,) = admin.describe_topics([topic])
    admin.close()
    assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1, 2, 3]

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    assert producer.partitions_for(topic) == {0, 1, 2, 3}
    sent = {}
    for i in range(40):
        meta = producer.send(topic, key=b"k%d" % (i % 8), value=b"v%d" % i, partition=i % PARTITIONS).get(10)
        assert meta.partition == i % PARTITIONS
        sent[b"v%d" % i] = (meta.partition, meta.offset)
    keyed = {producer.send(topic, key=b"same-key", value=b"x").get(10).partition for _ in range(10)}
    producer.close()
    assert len(keyed) == 1  # one key, one partition

    got = read_all(broker.bootstrap, topic)
    assert {r.value: (r.partition, r.offset) for r in got if r.value != b"x"} == sent
    for p in range(PARTITIONS):  # offsets per partition are dense and ordered
        offsets = [r.offset for r in got if r.partition == p]
        assert offsets == list(range(len(offsets)))


def test_keys_headers_and_timestamps_are_preserved(broker: EmbeddedBroker, unique: str) -> None:
    topic = f"conf-headers-{unique}"
    create_topic(broker.bootstrap, topic, partitions=1)
    cases = [
        (b"event-1", b'{"a": 1}', [("content-type", b"application/json")]),
        (None, b"no key", []),
        (b"", b"empty key", [("empty", b"")]),
        (bytes(range(256)), bytes(range(255, -1, -1)), [("binary", bytes(range(256)))]),
        (
            b"dup-headers",
            b"v",
            [("h", b"1"), ("h", b"2"), ("\u00fcnicode-\u043a\u043b\u044e\u0447", b"\xff\x00")],
        ),
        (b"tombstone", None, [("content-type", b"application/x-protobuf")]),
        (b"empty-value", b"", []),
    ]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    stamp = 1_700_000_000_123
    for n, (key, value, headers) in enumerate(cases):
        producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=stamp + n)
    producer.flush()
    producer.close()
    got = read_all(broker.bootstrap, topic)
    assert [(r.key, r.value, list(r.headers)) for r in got] == cases
    assert [r.timestamp for r in got] == [stamp + n for n in range(len(cases))]


# --- consumer groups -------------------------------------------------------------------------------


def test_group_commit_and_resume_after_restart(broker: EmbeddedBroker, unique: str) -> None:
    """A consumer commits what it processed and stops; the next one resumes there: no loss, and no
    committed record delivered again."""
    topic, group = f"conf-group-{unique}", f"conf-g-{unique}"
    create_topic(broker.bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    everything = {b"m%03d" % i for i in range(400)}
    for v in sorted(everything):
        producer.send(topic, key=v, value=v)
    producer.flush()
    producer.close()

    first = group_consumer(broker.bootstrap, topic, group, max_poll_records=50)
    polled = poll_until(first, lambda got: len(got) >= 150, what="the first 150")
    processed = polled[:150]
    first.commit(offsets=next_offsets(processed))
    committed = {tp: first.committed(tp) for tp in next_offsets(processed)}
    first.close()
    assert committed == {tp: o.offset for tp, o in next_offsets(processed).items()}

    second = group_consumer(broker.bootstrap, topic, group)
    rest = poll_until(
        second, lambda got: len({r.value for r in got} | set(values(processed))) == 400, what="the rest"
    )
    rest += drain(second, quiet_s=0.5)
    second.commit()
    end = second.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    lag = {tp: end[tp] - (second.committed(tp) or 0) for tp in end}
    second.close()

    assert not set(values(processed)) & set(values(rest))  # committed records are not re-delivered
    assert set(values(processed)) | set(values(rest)) == everything
    assert len(values(rest)) == len(set(values(rest)))
    assert all(n == 0 for n in lag.values()), lag


class Member:
    """A group member polling in its own thread, as separate workers would (one client's JoinGroup
    blocks until every member rejoins, so members must not take turns on one thread)."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.consumer = group_consumer(bootstrap, topic, group)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._assigned: frozenset[int] = frozenset()
        self._thread = threading.Thread(target=self._run, name=f"member-{group}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.consumer.poll(timeout_ms=100)
            with self._lock:
                self._assigned = frozenset(tp.partition for tp in self.consumer.assignment())
        self.consumer.close()

    @property
    def assigned(self) -> frozenset[int]:
        with self._lock:
            return self._assigned

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()


@pytest.mark.slow
def test_group_splits_partitions_between_members(broker: EmbeddedBroker, unique: str) -> None:
    topic, group = f"conf-split-{unique}", f"conf-split-{unique}"
    create_topic(broker.bootstrap, topic)
    a = Member(broker.bootstrap, topic, group)
    b = Member(broker.bootstrap, topic, group)
    try:
        wait_until(lambda: bool(a.assigned and b.assigned), timeout=30, what="both members to get partitions")
        assert not a.assigned & b.assigned
        assert a.assigned | b.assigned == {0, 1, 2, 3}
        b.stop()
        wait_until(lambda: a.assigned == {0, 1, 2, 3}, timeout=30, what="the remaining member to take all")
    finally:
        a.stop()
        b.stop()


@pytest.mark.slow
def test_hundred_thousand_messages_exactly(broker: EmbeddedBroker, unique: str) -> None:
    """100,000 keyed messages produced and consumed by a group: same count, same checksum, no repeats."""
    topic, group, n = f"conf-100k-{unique}", f"conf-100k-{unique}", 100_000
    create_topic(broker.bootstrap, topic)
    try:
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024
        )
        sent = 0
        for i in range(n):
            key = b"%d" % i
            value = b"%08d:" % i + hashlib.blake2b(key, digest_size=48).digest()
            producer.send(topic, key=key, value=value)
            sent ^= int.from_bytes(hashlib.blake2b(key + value, digest_size=16).digest())
        producer.flush()
        producer.close()

        consumer = group_consumer(broker.bootstrap, topic, group, max_poll_records=5000)
        got = poll_until(consumer, lambda got: len(got) >= n, timeout=180, what=f"{n} messages")
        got += drain(consumer, quiet_s=0.5)
        consumer.commit()
        consumer.close()
        received = 0
        for r in got:
            received ^= int.from_bytes(hashlib.blake2b(r.key + r.value, digest_size=16).digest())
        assert len(got) == n
        assert len({r.key for r in got}) == n
        assert received == sent
        assert {r.partition for r in got} == {0, 1, 2, 3}
    finally:
        delete_topic(broker.bootstrap, topic)


# --- transactions ----------------------------------------------------------------------------------


def transaction(producer: KafkaProducer, topic: str, label: bytes, *, commit: bool, n: int = 6) -> None:
    producer.begin_transaction()
    for i in range(n):
        producer.send(topic, key=b"%s-%d" % (label, i), value=label, partition=0)
    producer.flush()  # the records really reach the log, also those about to be aborted
    if commit:
        producer.commit_transaction()
    else:
        producer.abort_transaction()


def test_read_committed_hides_aborted_transactions(broker: EmbeddedBroker, unique: str) -> None:
    topic = f"conf-txn-{unique}"
    create_topic(broker.bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"conf-txn-{unique}")
    producer.init_transactions()
    for i in range(12):
        producer.begin_transaction()
        for p in range(PARTITIONS):
            producer.send(topic, key=b"%d" % i, value=b"%s-%d" % (b"c" if i % 3 else b"a", i), partition=p)
        producer.flush()
        producer.abort_transaction() if i % 3 == 0 else producer.commit_transaction()
    producer.close()
    committed = read_all(broker.bootstrap, topic, isolation="read_committed")
    uncommitted = read_all(broker.bootstrap, topic, isolation="read_uncommitted")
    assert sorted(values(committed)) == sorted(
        b"c-%d" % i for i in range(12) if i % 3 for _ in range(PARTITIONS)
    )
    assert (
        sum(v.startswith(b"a-") for v in values(uncommitted)) == 4 * PARTITIONS
    )  # aborted data is in the log
    for p in range(PARTITIONS):  # order within each partition is kept
        assert [r.value for r in committed if r.partition == p] == [b"c-%d" % i for i in range(12) if i % 3]


def test_read_committed_waits_for_an_open_transaction(broker: EmbeddedBroker, unique: str) -> None:
    """While a transaction is open, read_committed stops at the last stable offset (so lag is right)
    and delivers the records once the transaction commits, without skipping them."""
    topic = f"conf-open-{unique}"
    create_topic(broker.bootstrap, topic, partitions=1)
    plain = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(3):
        plain.send(topic, value=b"plain-%d" % i)
    plain.flush()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"conf-open-{unique}")
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(3):
        producer.send(topic, value=b"open-%d" % i)
    producer.flush()
    for i in range(2):
        plain.send(topic, value=b"after-%d" % i)
    plain.flush()
    plain.close()

    part = TopicPartition(topic, 0)
    watcher = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed")
    watcher.assign([part])
    assert watcher.end_offsets([part])[part] == 3  # last stable offset: the open transaction's first
    watcher.seek_to_beginning(part)
    assert values(drain(watcher)) == [b"plain-0", b"plain-1", b"plain-2"]
    producer.commit_transaction()
    producer.close()
    later = poll_until(watcher, lambda got: len(got) >= 5, what="the transaction and what followed it")
    watcher.close()
    assert values(later) == [b"open-0", b"open-1", b"open-2", b"after-0", b"after-1"]


def test_commits_after_an_abort_reach_a_consumer_that_resumes_past_it(
    broker: EmbeddedBroker, unique: str
) -> None:
    """The pipeline's producer keeps its transactional id (and so its producer id) and aborts a batch
    on error; consumers (the exporter, a restarted pipeline) resume from committed offsets past it."""
    topic = f"conf-after-abort-{unique}"
    create_topic(broker.bootstrap, topic, partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"conf-aa-{unique}")
    producer.init_transactions()
    transaction(producer, topic, b"aborted", commit=False)  # offsets 0-5, abort marker at 6
    transaction(producer, topic, b"committed", commit=True)  # offsets 7-12, commit marker at 13
    producer.close()
    part = TopicPartition(topic, 0)
    for start in (0, 7):
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed")
        consumer.assign([part])
        consumer.seek(part, start)
        seen = drain(consumer)
        consumer.close()
        assert values(seen) == [b"committed"] * 6, f"read_committed from offset {start} saw {values(seen)}"


def test_a_new_transactional_id_after_an_abort_stays_visible(broker: EmbeddedBroker, unique: str) -> None:
    """After one producer's abort, another producer's commit on the same partition is visible to a reader
    that starts past the abort."""
    topic = f"conf-new-id-{unique}"
    create_topic(broker.bootstrap, topic, partitions=1)
    first = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"conf-new-id-{unique}-0")
    first.init_transactions()
    transaction(first, topic, b"aborted", commit=False)
    first.close()
    second = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"conf-new-id-{unique}-1")
    second.init_transactions()
    transaction(second, topic, b"committed", commit=True)
    second.close()
    part = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level="read_committed")
    consumer.assign([part])
    consumer.seek(part, 7)
    seen = poll_until(consumer, lambda got: len(got) >= 6, what="the committed transaction")
    seen += drain(consumer, quiet_s=0.5)
    consumer.close()
    assert values(seen) == [b"committed"] * 6


def test_consume_transform_produce_commits_offsets_in_the_transaction(
    broker: EmbeddedBroker, unique: str
) -> None:
    """The pipeline's exactly-once step: offsets go in the same transaction as the output. An aborted
    batch leaves neither output nor offsets; the restarted consumer redoes it once."""
    source, sink, group = f"conf-ctp-in-{unique}", f"conf-ctp-out-{unique}", f"conf-ctp-{unique}"
    create_topic(broker.bootstrap, source)
    create_topic(broker.bootstrap, sink)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    inputs = [b"in-%03d" % i for i in range(200)]
    for v in inputs:
        producer.send(source, key=v, value=v)
    producer.flush()
    producer.close()

    txn = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"conf-ctp-{unique}")
    txn.init_transactions()

    def step(consumer: KafkaConsumer, batch: list[ConsumerRecord], *, commit: bool) -> None:
        txn.begin_transaction()
        for r in batch:
            txn.send(sink, key=r.key, value=r.value.replace(b"in-", b"out-"))
        txn.send_offsets_to_transaction(next_offsets(batch), group)
        txn.flush()  # the output reaches the log even when the transaction is then aborted
        if commit:
            txn.commit_transaction()
        else:
            txn.abort_transaction()

    first = group_consumer(
        broker.bootstrap, source, group, isolation_level="read_committed", max_poll_records=25
    )
    batch1 = poll_until(first, lambda got: len(got) >= 80, what="batch 1")[:80]
    step(first, batch1, commit=True)
    assert {tp: first.committed(tp) for tp in next_offsets(batch1)} == {
        tp: o.offset for tp, o in next_offsets(batch1).items()
    }
    for tp in first.assignment():  # forget what was polled beyond batch 1
        first.seek(tp, first.committed(tp) or 0)
    batch2 = poll_until(first, lambda got: len(got) >= 50, what="batch 2")[:50]
    step(first, batch2, commit=False)  # crash-like: output and offsets of batch 2 are abandoned
    after_abort = {tp: first.committed(tp) for tp in next_offsets(batch1)}
    first.close()
    assert after_abort == {tp: o.offset for tp, o in next_offsets(batch1).items()}

    second = group_consumer(broker.bootstrap, source, group, isolation_level="read_committed")
    rest = poll_until(second, lambda got: len(got) >= 200 - 80, what="the rest after restart")
    rest += drain(second, quiet_s=0.5)
    step(second, rest, commit=True)
    second.close()
    txn.close()

    assert not set(values(batch1)) & set(values(rest))
    assert set(values(batch2)) <= set(values(rest))  # the aborted batch is redone
    output = read_all(broker.bootstrap, sink, isolation="read_committed")
    assert sorted(values(output)) == [v.replace(b"in-", b"out-") for v in inputs]  # each exactly once
    raw = read_all(broker.bootstrap, sink, isolation="read_uncommitted")
    assert len(raw) == 200 + len(batch2)  # the aborted output is in the log, hidden from read_committed


def test_successor_fences_the_zombie_and_aborts_its_transaction(broker: EmbeddedBroker, unique: str) -> None:
    """A restarted worker with the same transactional id aborts the old one's open transaction, and
    the old one can no longer commit."""
    topic, tid = f"conf-fence-{unique}", f"conf-fence-{unique}"
    create_topic(broker.bootstrap, topic, partitions=1)
    zombie = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=tid)
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie.send(topic, value=b"zombie")
    zombie.flush()
    successor = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=tid)
    successor.init_transactions()
    with pytest.raises(ProducerFencedError):
        zombie.commit_transaction()
    zombie.close()
    transaction(successor, topic, b"successor", commit=True, n=1)
    successor.close()
    assert values(read_all(broker.bootstrap, topic, isolation="read_committed")) == [b"successor"]


def test_zombie_that_keeps_sending_stays_fenced(broker: EmbeddedBroker, unique: str) -> None:
    """A zombie whose send is refused may try to recover (kafka-python bumps its epoch); the broker must
    answer that with PRODUCER_FENCED, so the zombie never commits and the successor keeps working."""
    topic, tid = f"conf-zombie-{unique}", f"conf-zombie-{unique}"
    create_topic(broker.bootstrap, topic, partitions=1)
    zombie = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=tid)
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie.send(topic, value=b"zombie")
    zombie.flush()
    successor = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=tid)
    successor.init_transactions()
    with pytest.raises(KafkaError):  # the stale epoch is refused
        zombie.send(topic, value=b"zombie-late").get(timeout=10)

    outcome: list[str] = []

    def zombie_tries_again() -> bool:
        """True once the zombie's fate is known: fenced for good, or committed."""
        try:
            zombie.begin_transaction()
        except KafkaError as exc:
            if isinstance(exc, ProducerFencedError) or "error state" in str(exc):
                outcome.append("fenced")
                return True
            return False  # the client is still handling the refused send
        try:
            zombie.send(topic, value=b"zombie-again").get(timeout=10)
            zombie.commit_transaction()
            outcome.append("committed")
        except KafkaError:
            outcome.append("fenced")
        return True

    try:
        wait_until(zombie_tries_again, timeout=30, what="the zombie to be fenced or to commit")
    finally:
        zombie.close()
    successor_error: KafkaError | None = None
    try:
        transaction(successor, topic, b"successor", commit=True, n=1)
    except KafkaError as exc:
        successor_error = exc
    finally:
        successor.close()
    assert outcome == ["fenced"], (
        f"the zombie committed after its successor started; successor: {successor_error!r}"
    )
    assert successor_error is None
    assert values(read_all(broker.bootstrap, topic, isolation="read_committed")) == [b"successor"]


# --- large messages --------------------------------------------------------------------------------


def test_several_mb_message(broker: EmbeddedBroker, unique: str) -> None:
    """A 5 MiB record round-trips on a topic configured for it, read with default fetch sizes (the
    broker returns an oversized first batch anyway); a topic without the setting refuses it, as Kafka's
    1 MiB default does."""
    big, small = f"conf-big-{unique}", f"conf-small-{unique}"
    create_topic(broker.bootstrap, big, partitions=1, **{"max.message.bytes": str(16 * 1024 * 1024)})
    create_topic(broker.bootstrap, small, partitions=1)
    payload = os.urandom(5 * 1024 * 1024)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=16 * 1024 * 1024)
    producer.send(big, key=b"big", value=payload, headers=[("content-type", b"application/json")]).get(30)
    producer.send(big, key=b"after", value=b"small").get(10)
    with pytest.raises(MessageSizeTooLargeError):
        producer.send(small, value=payload).get(30)
    producer.close()
    try:
        got = read_all(broker.bootstrap, big)
        assert [(r.key, len(r.value)) for r in got] == [(b"big", len(payload)), (b"after", 5)]
        assert hashlib.sha256(got[0].value).digest() == hashlib.sha256(payload).digest()
    finally:
        delete_topic(broker.bootstrap, big)


# --- restart ---------------------------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A second broker on its own data directory, for the restart test."""
    b = EmbeddedBroker(data_dir=tmp_path / "restart-broker")
    try:
        yield b.start()
    finally:
        b.stop()


@pytest.mark.slow
def test_restart_keeps_data_offsets_and_transactions(own_broker: EmbeddedBroker, unique: str) -> None:
    topic, group, tid = f"conf-restart-{unique}", f"conf-restart-{unique}", f"conf-restart-{unique}"
    create_topic(own_broker.bootstrap, topic)
    producer = KafkaProducer(bootstrap_servers=own_broker.bootstrap)
    plain = [(b"k%d" % i, b"v%d" % i, [("n", b"%d" % i)]) for i in range(1000)]
    for key, value, headers in plain:
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()
    txn = KafkaProducer(bootstrap_servers=own_broker.bootstrap, transactional_id=tid)
    txn.init_transactions()
    for label, commit in ((b"committed", True), (b"aborted", False)):
        txn.begin_transaction()
        for i in range(20):
            txn.send(topic, key=b"%s-%d" % (label, i), value=label)
        txn.flush()
        txn.commit_transaction() if commit else txn.abort_transaction()
    txn.close()
    consumer = group_consumer(own_broker.bootstrap, topic, group, isolation_level="read_committed")
    processed = poll_until(consumer, lambda got: len(got) >= 400, what="400 records")[:400]
    consumer.commit(offsets=next_offsets(processed))
    consumer.close()
    before = read_all(own_broker.bootstrap, topic)
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    probe = KafkaConsumer(bootstrap_servers=own_broker.bootstrap)
    end_before = probe.end_offsets(parts)
    probe.close()

    port = own_broker.port
    own_broker.stop()
    assert not own_broker.running
    own_broker.start()
    assert own_broker.port == port

    after = read_all(own_broker.bootstrap, topic)
    assert [(r.partition, r.offset, r.key, r.value, r.headers) for r in after] == [
        (r.partition, r.offset, r.key, r.value, r.headers) for r in before
    ]
    visible = read_all(own_broker.bootstrap, topic, isolation="read_committed")
    assert values(visible).count(b"committed") == 20 and b"aborted" not in values(visible)
    plain_visible = sorted((r.key, r.value, list(r.headers)) for r in visible if r.value.startswith(b"v"))
    assert plain_visible == sorted(plain)

    resumed = group_consumer(own_broker.bootstrap, topic, group, isolation_level="read_committed")
    rest = poll_until(
        resumed, lambda got: len(got) >= len(visible) - 400, what="the records after the commit"
    )
    rest += drain(resumed, quiet_s=0.5)
    committed = {tp: resumed.committed(tp) for tp in parts}
    resumed.close()
    expected = next_offsets(processed)
    assert committed == {tp: expected[tp].offset if tp in expected else None for tp in parts}
    assert not {r.key for r in processed} & {r.key for r in rest}
    assert {r.key for r in processed} | {r.key for r in rest} == {r.key for r in visible}

    producer = KafkaProducer(bootstrap_servers=own_broker.bootstrap)
    meta = producer.send(topic, value=b"new", partition=0).get(10)
    producer.close()
    assert meta.offset == end_before[parts[0]]  # offsets continue; none is reused
    txn = KafkaProducer(bootstrap_servers=own_broker.bootstrap, transactional_id=tid)
    txn.init_transactions()  # the transactional id survives the restart
    txn.close()


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_write(own_broker: EmbeddedBroker, unique: str) -> None:
    """Writes with acks=all that the broker acknowledged before it was SIGKILLed (no controlled
    shutdown) are all there after it starts again on the same data; the log continues after them."""
    topic = f"conf-kill-{unique}"
    create_topic(own_broker.bootstrap, topic)
    producer = KafkaProducer(
        bootstrap_servers=own_broker.bootstrap,
        acks="all",
        linger_ms=2,
        request_timeout_ms=3000,
        reconnect_backoff_max_ms=500,
    )
    acked: list[bytes] = []
    lock = threading.Lock()
    sent = 0
    stop = threading.Event()

    def on_ack(value: bytes) -> Callable[[object], None]:
        def record(_: object) -> None:
            with lock:
                acked.append(value)

        return record

    def send_until_stopped() -> None:
        nonlocal sent
        while not stop.is_set():
            value = b"w%07d" % sent
            try:
                producer.send(topic, key=value, value=value).add_callback(on_ack(value))
            except KafkaError:
                return  # the client gave up on the dead broker
            sent += 1
            if sent % 200 == 0:
                time.sleep(0.001)  # let the sender thread keep up; the kill lands mid-stream

    writer = threading.Thread(target=send_until_stopped, name="acks-all-writer", daemon=True)
    writer.start()
    try:
        wait_until(lambda: len(acked) >= 3000, timeout=60, what="3000 acknowledged writes")
        own_broker.kill()
        with lock:
            acked_at_kill = len(acked)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert sent > acked_at_kill  # writes were in flight when the broker died

    own_broker.start()
    producer.flush(timeout=60)  # what was in flight is retried on the restarted broker
    producer.close(timeout=10)
    with lock:
        acknowledged = set(acked)
    kept = {r.value for r in read_all(own_broker.bootstrap, topic)}
    lost = acknowledged - kept
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes lost, e.g. {sorted(lost)[:5]}"
    first = TopicPartition(topic, 0)
    probe = KafkaConsumer(bootstrap_servers=own_broker.bootstrap)
    end = probe.end_offsets([first])[first]
    probe.close()
    after = KafkaProducer(bootstrap_servers=own_broker.bootstrap, acks="all")
    meta = after.send(topic, value=b"after-restart", partition=0).get(30)
    after.close()
    assert meta.offset == end  # the log continues after what survived; no offset is reused
