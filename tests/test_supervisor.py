"""The launcher on small real child processes: ready lines, probes, restart on the same port, stop
with a grace period, process groups, and children that die with their parent (but not with the
thread that asked for them)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

from evalstream.local.supervisor import ChildProcess, ChildStartError, http_probe
from evalstream.runtime.procs import free_port, wait_until
from evalstream.runtime.ready import JUDGE_READY, LLM_REPLAY_READY, METRICS_READY, ReadyLine

PY = sys.executable


def script(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def gone(pid: int) -> None:
    wait_until(lambda: not running(pid), timeout=10, what=f"process {pid} to be gone")


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_a_ready_line_parses_what_it_formats() -> None:
    line = JUDGE_READY.format(address="127.0.0.1:4242")
    assert JUDGE_READY.search(f"some log\n{line}\nmore") == {"address": "127.0.0.1:4242"}
    assert JUDGE_READY.search("evalstream-judge starting") is None
    assert LLM_REPLAY_READY.search(LLM_REPLAY_READY.format(url="http://h:1")) == {"url": "http://h:1"}
    # the address stops where the template's literal text resumes
    assert METRICS_READY.search("INFO metrics on http://127.0.0.1:9/metrics (x)") == {
        "address": "127.0.0.1:9"
    }
    with pytest.raises(ValueError, match="needs"):
        JUDGE_READY.format()
    with pytest.raises(ValueError, match="plain, unique field name"):
        ReadyLine("listening on {address:>10}")


def test_start_returns_the_ready_lines_address_and_output_keeps_the_log(tmp_path: Path) -> None:
    ready = ReadyLine("toy listening on {address}")
    child = ChildProcess(
        name="toy",
        cmd=script(
            """
            import sys, time
            print("warming up", flush=True)
            print("toy listening on 127.0.0.1:5555", flush=True)
            time.sleep(60)
            """
        ),
        log_file=tmp_path / "toy.log",
        ready=ready,
    )
    try:
        assert child.start(timeout=30) == "127.0.0.1:5555"
        assert child.address == "127.0.0.1:5555" and child.alive
        assert "warming up" in child.output()
    finally:
        assert child.stop(grace=5) == -signal.SIGTERM


def test_a_child_that_exits_before_it_is_ready_is_reported_with_its_output(tmp_path: Path) -> None:
    child = ChildProcess(
        name="broken",
        cmd=script("import sys; print('bad flag --nope', file=sys.stderr); sys.exit(2)"),
        log_file=tmp_path / "broken.log",
        ready=ReadyLine("never {address}"),
    )
    with pytest.raises(
        ChildStartError, match=r"exited with code 2 before it was ready(.|\n)*bad flag --nope"
    ):
        child.start(timeout=30)


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace_period(tmp_path: Path) -> None:
    child = ChildProcess(
        name="stubborn",
        cmd=script(
            """
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("stubborn ready", flush=True)
            time.sleep(60)
            """
        ),
        log_file=tmp_path / "stubborn.log",
        ready=ReadyLine("stubborn ready"),
    )
    child.start(timeout=30)
    assert child.stop(grace=1) == -signal.SIGKILL


def test_stop_takes_the_childs_own_children_along(tmp_path: Path) -> None:
    child = ChildProcess(
        name="forker",
        cmd=script(
            f"""
            import subprocess, time
            grandchild = subprocess.Popen([{PY!r}, "-c", "import time; time.sleep(60)"])
            print("forked", grandchild.pid, flush=True)
            time.sleep(60)
            """
        ),
        log_file=tmp_path / "forker.log",
        ready=ReadyLine("forked {pid}"),
    )
    grandchild = int(child.start(timeout=30))
    assert running(grandchild)
    child.stop(grace=5)
    gone(grandchild)


def test_restart_comes_back_on_the_same_port_with_extra_arguments(tmp_path: Path) -> None:
    port = free_port()
    child = ChildProcess(
        name="http",
        cmd=[PY, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        log_file=tmp_path / "http.log",
        ready=http_probe(f"http://127.0.0.1:{port}/"),
        port=port,
        cwd=tmp_path,
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "marker.txt").write_text("first")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "marker.txt").write_text("second")
    try:
        child.start("--directory", str(tmp_path / "a"), timeout=30)
        first = child.pid
        assert httpx.get(f"{child.url}/marker.txt").text == "first"
        child.restart("--directory", str(tmp_path / "b"), timeout=30)
        assert child.pid != first and child.address == f"127.0.0.1:{port}"
        assert httpx.get(f"{child.url}/marker.txt").text == "second"
        assert child.starts == 2
    finally:
        child.stop(grace=5)


def test_a_child_started_from_a_worker_thread_outlives_that_thread(tmp_path: Path) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: the launcher forks on its own thread
    child = ChildProcess(
        name="sleeper", cmd=script("import time; print('up', flush=True); time.sleep(60)"),
        log_file=tmp_path / "sleeper.log", ready=ReadyLine("up"),
    )  # fmt: skip
    worker = threading.Thread(target=child.start, kwargs={"timeout": 30})
    worker.start()
    worker.join()
    try:
        assert child.alive
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)  # still running a second after its starter thread ended
    finally:
        child.stop(grace=5)


def test_children_die_when_their_parent_is_killed(tmp_path: Path) -> None:
    """A parent process starts a child with the launcher and is then SIGKILLed: nothing in it can stop
    the child, the kernel must."""
    parent = ChildProcess(
        name="parent",
        cmd=script(
            f"""
            import time
            from pathlib import Path
            from evalstream.local.supervisor import ChildProcess
            from evalstream.runtime.ready import ReadyLine
            child = ChildProcess(
                name="orphan", cmd=[{PY!r}, "-c", "import time; print('ok', flush=True); time.sleep(120)"],
                log_file=Path({str(tmp_path / "orphan.log")!r}), ready=ReadyLine("ok"),
            )
            child.start(timeout=30)
            print("child", child.pid, flush=True)
            time.sleep(120)
            """
        ),
        log_file=tmp_path / "parent.log",
        ready=ReadyLine("child {pid}"),
    )
    orphan = int(parent.start(timeout=60))
    assert running(orphan)
    parent.signal(signal.SIGKILL)  # nothing in the parent runs any more: the kernel must stop the child
    assert parent.wait(timeout=10) == -signal.SIGKILL
    gone(orphan)
