"""``evalstream up`` as a newcomer runs it: its address table reads at 80 columns, its Prometheus
answers, and Ctrl-C leaves nothing of it running, also when its output went through ``| tee`` (which
Ctrl-C ends first, so every later print fails).

Only tier 0 runs here (``--tiers 0``), so no encoder is trained; everything else is the real stack.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVALSTREAM = ROOT / ".venv" / "bin" / "evalstream"

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (read from /proc): pid -> command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = (
                    (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
            except OSError:
                continue
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, deadline: float) -> bytes:
    assert proc.stdout is not None
    out = b""
    os.set_blocking(proc.stdout.fileno(), False)
    while marker not in out:
        assert time.monotonic() < deadline, f"up did not print {marker!r} in time:\n{out.decode()}"
        assert proc.poll() is None, f"up exited with {proc.returncode}:\n{out.decode()}"
        chunk = proc.stdout.read()
        if chunk:
            out += chunk
        else:
            time.sleep(0.2)  # polling a pipe, under the deadline above
    return out


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, dict[int, str]]]:
    """``up`` started; at teardown, whatever of it still runs is killed (only what the test saw)."""
    log = tmp_path / "up.stderr"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [str(EVALSTREAM), "up", "--tiers", "0", "--state-dir", str(tmp_path / "state")],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "COLUMNS": "80"},
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
    seen: dict[int, str] = {}  # its children, as the test saw them while up ran
    try:
        yield proc, log, seen
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in seen:  # whatever a failed test left behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("output", ["terminal", "tee-ended"])
def test_up_prints_whole_addresses_at_80_columns_and_ctrl_c_stops_everything(
    started: tuple[subprocess.Popen[bytes], Path, dict[int, str]], output: str
) -> None:
    proc, log, seen = started
    text = _read_until(proc, b"Ctrl-C stops everything", time.monotonic() + 600).decode()
    table = text[text.index("evalstream is up") :]
    assert "…" not in table, table
    prometheus = re.search(r"Prometheus \(rules and alerts loaded\): (http://127\.0\.0\.1:\d+) ", table)
    assert prometheus, table
    for url in re.findall(r"http://127\.0\.0\.1:\d+\S*", table):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+(/[\w/.]+)?\)?", url), url  # never split
    with urllib.request.urlopen(f"{prometheus.group(1)}/-/ready", timeout=10) as ready:
        assert ready.status == 200

    parts = _descendants(proc.pid)
    seen.update(parts)
    assert any("prometheus" in cmd for cmd in parts.values()), parts
    assert proc.stdout is not None
    if output == "tee-ended":
        proc.stdout.close()  # Ctrl-C ends `tee` first: every later print of up fails
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: SIGINT to the foreground process group
    proc.wait(180)
    deadline = time.monotonic() + 30
    while (left := {p: c for p, c in parts.items() if _running(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)  # the last children may still be exiting after up returned
    assert not left, f"still running after Ctrl-C (exit {proc.returncode}): {left}\n{log.read_text()[-3000:]}"
    if output == "terminal":
        assert proc.returncode == 0, log.read_text()[-3000:]
