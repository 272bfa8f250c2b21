"""``evalstream up`` leaves nothing running: after Ctrl-C, SIGTERM, SIGHUP, a broken stdout, and
SIGKILL of ``up`` itself.

Each test starts a real ``up`` (tier 0 only and, but for the first test, a given cascade, so no
encoder training and no calibration) with its own state directory, collects the processes below it
from /proc (the process tree, never names: other sessions run the same programs), stops it the way
the case says, and waits with a deadline until every one of them is gone. A zombie counts as gone
(it runs nothing; whoever adopted it reaps it). At teardown any survivor of *this* tree is killed,
so a failing test leaks nothing either.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from evalstream.local.supervisor import ChildProcess, python_module
from evalstream.runtime.procs import wait_until
from evalstream.runtime.ready import UP_READY, ReadyLine
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule

pytestmark = pytest.mark.slow

#: The parts ``up --tiers 0`` starts as its own children: broker, judge, pipeline, exporter,
#: Alertmanager, Prometheus, replay.
PARTS = 7
START_S = 180.0
GONE_S = 90.0


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks since boot: tells a reused pid from the process we saw
    state: str
    name: str


def _read(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return Proc(pid=pid, ppid=int(fields[1]), start=int(fields[19]), state=fields[0], name=name)


def descendants(root: int) -> dict[int, Proc]:
    """Every process below ``root`` now, from /proc's parent links."""
    procs = [p for p in (_read(int(d)) for d in os.listdir("/proc") if d.isdigit()) if p is not None]
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    found: dict[int, Proc] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid not in found:
                found[child.pid] = child
                todo.append(child.pid)
    return found


def running(p: Proc) -> bool:
    now = _read(p.pid)
    return now is not None and now.start == p.start and now.state not in ("Z", "X")


class Tree:
    """The processes seen below one started child, kept even after they leave it (reparented when it
    dies)."""

    def __init__(self, child: ChildProcess) -> None:
        assert child.pid is not None
        self.child = child
        self.root = child.pid
        self.seen: dict[int, Proc] = {}

    def look(self) -> dict[int, Proc]:
        self.seen.update(descendants(self.root))
        return self.seen

    def alive(self) -> list[Proc]:
        return [p for p in self.seen.values() if running(p)]

    def wait_gone(self, timeout: float = GONE_S) -> None:
        def gone() -> bool:
            self.look()
            return not self.alive()

        try:
            wait_until(gone, timeout=timeout, what="every process below up to exit", interval=0.2)
        except TimeoutError:
            left = ", ".join(f"{p.name}({p.pid})" for p in self.alive())
            raise AssertionError(f"still running {timeout:.0f}s later: {left}") from None

    def kill_survivors(self) -> None:
        for p in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("up-cascade") / "cascade.yaml"
    CascadeConfig(
        version="up-signals",
        dimensions={"refusal": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.5)])},
    ).dump(path)
    return path


def up_args(state: Path, cascade: Path) -> list[str]:
    return ["up", "--state-dir", str(state), "--tiers", "0", "--cascade-config", str(cascade), "--rate", "5"]


@pytest.fixture
def trees() -> Iterator[list[Tree]]:
    made: list[Tree] = []
    yield made
    for tree in made:
        tree.kill_survivors()
        tree.child.stop(grace=5)


def start_up(tmp_path: Path, cascade: Path, trees: list[Tree]) -> tuple[ChildProcess, Tree]:
    """``up`` with its output in a log; returns once it printed that it is up, with its tree."""
    up = ChildProcess(
        name="up",
        cmd=python_module("evalstream.cli.app", *up_args(tmp_path / "state", cascade)),
        log_file=tmp_path / "up.log",
        ready=UP_READY,
    )
    try:
        up.start(timeout=START_S)
    finally:
        if up.pid is not None:
            trees.append(Tree(up))
    tree = trees[-1]
    parts = [p for p in tree.look().values() if p.ppid == up.pid]
    assert len(parts) == PARTS, [p.name for p in parts]
    return up, tree


def test_up_as_a_newcomer_runs_it_reads_at_80_columns_and_ctrl_c_stops_everything(
    tmp_path: Path, trees: list[Tree]
) -> None:
    """No cascade config (``up`` calibrates against tier 0): its address table reads whole at 80
    columns, its Prometheus answers, and Ctrl-C then leaves nothing running."""
    up = ChildProcess(
        name="up",
        cmd=python_module("evalstream.cli.app", "up", "--state-dir", str(tmp_path / "state"), "--tiers", "0"),
        log_file=tmp_path / "up.log",
        capture_stdout=True,
        env={"COLUMNS": "80"},
        ready=UP_READY,
    )
    try:
        up.start(timeout=600.0)  # it calibrates first: every XSTest item through tier 0
    finally:
        if up.pid is not None:
            trees.append(Tree(up))
    tree = trees[-1]
    wait_until(lambda: "Ctrl-C stops everything" in up.output(), timeout=30, what="up's address table")
    text = up.output()
    table = text[text.index(UP_READY.format()) : text.index("Ctrl-C stops everything")]
    assert "…" not in table, table
    prometheus = re.search(r"Prometheus \(rules and alerts loaded\): (http://127\.0\.0\.1:\d+) ", table)
    assert prometheus, table
    for url in re.findall(r"http://127\.0\.0\.1:\d+\S*", table):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+(/[\w/.]+)?\)?", url), url  # never split
    with urllib.request.urlopen(f"{prometheus.group(1)}/-/ready", timeout=10) as ready:
        assert ready.status == 200
    assert len([p for p in tree.look().values() if p.ppid == up.pid]) == PARTS
    up.signal(signal.SIGINT)
    tree.wait_gone()
    assert up.wait(30) == 0, up.log_text()[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_stops_every_part_and_up_exits_cleanly(
    sig: signal.Signals, tmp_path: Path, cascade: Path, trees: list[Tree]
) -> None:
    up, tree = start_up(tmp_path, cascade, trees)
    up.signal(sig)
    tree.wait_gone()
    assert up.wait(30) == 0, up.output()[-3000:]
    assert "stopped." in up.output()


def test_sigkill_of_up_takes_every_part_along(tmp_path: Path, cascade: Path, trees: list[Tree]) -> None:
    up, tree = start_up(tmp_path, cascade, trees)
    up.signal(signal.SIGKILL)  # nothing in up runs: only the kernel can stop its children now
    tree.wait_gone()
    assert up.wait(10) == -signal.SIGKILL


def _shell(tmp_path: Path, cascade: Path, pipeline: str, trees: list[Tree], ready: ReadyLine | None) -> Tree:
    """``bash -c "evalstream up ... | PIPELINE"`` in its own process group; its tree."""
    up = " ".join([sys.executable, "-m", "evalstream.cli.app", *up_args(tmp_path / "state", cascade)])
    shell = ChildProcess(
        name="shell", cmd=["bash", "-c", f"{up} | {pipeline}"], log_file=tmp_path / "shell.log", ready=ready
    )
    try:
        shell.start(timeout=START_S)
    finally:
        if shell.pid is not None:
            trees.append(Tree(shell))
    return trees[-1]


def _parts_seen(tree: Tree) -> list[Proc]:
    ups = [p for p in tree.seen.values() if p.ppid == tree.root and p.name != "head" and p.name != "tee"]
    return [p for p in tree.seen.values() if any(p.ppid == u.pid for u in ups)]


def test_up_piped_into_head_stops_everything_when_head_exits(
    tmp_path: Path, cascade: Path, trees: list[Tree]
) -> None:
    # head prints up's first line and exits; up's stdout is then a pipe nobody reads
    tree = _shell(tmp_path, cascade, "head -1", trees, ready=None)

    def started() -> bool:
        tree.look()
        return len(_parts_seen(tree)) >= PARTS

    wait_until(started, timeout=START_S, what="up to start its parts", interval=0.2)
    tree.wait_gone()
    assert len(_parts_seen(tree)) >= PARTS


def test_ctrl_c_while_piped_through_tee_stops_everything(
    tmp_path: Path, cascade: Path, trees: list[Tree]
) -> None:
    # Ctrl-C at a terminal reaches the whole foreground group: up and tee alike; tee usually dies
    # first, so up's "stopping ..." meets a broken pipe
    tree = _shell(tmp_path, cascade, f"tee {tmp_path / 'tee.out'}", trees, ready=UP_READY)
    tree.look()
    assert len(_parts_seen(tree)) == PARTS, [p.name for p in _parts_seen(tree)]
    os.killpg(tree.root, signal.SIGINT)
    tree.wait_gone()
