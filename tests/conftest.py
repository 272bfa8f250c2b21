"""Shared fixtures: a real embedded broker per session, unique topic names, the shared data path."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from evalstream.evaluation.datasets import DataNotFoundError, data_root
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.supervisor import ChildProcess, python_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real public labelled data (../shared/data); never copied into the repository."""
    try:
        return data_root()
    except DataNotFoundError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One real Apache Kafka broker for the whole test session; tests use unique topic names."""
    with EmbeddedBroker(data_dir=tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="session")
def encoder_artefact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tier-1 encoder artefact trained once per test session (about a minute), in its own process."""
    out = tmp_path_factory.mktemp("encoder") / "artefact"
    train = ChildProcess(
        name="encoder-train",
        cmd=python_module("evalstream.judges.encoder_train", "--out", str(out)),
        log_file=out.parent / "train.log",
    )
    train.start()
    try:
        code = train.wait(900)
    finally:
        train.stop()
    assert code == 0, train.output()[-3000:]
    return out


@pytest.fixture
def children() -> Iterator[list[ChildProcess]]:
    """Child processes a test starts; all are stopped at teardown, whether the test passed or not."""
    started: list[ChildProcess] = []
    yield started
    for child in reversed(started):
        child.stop(grace=10)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic and group names, so tests never share state on the broker."""
    return uuid.uuid4().hex[:10]
