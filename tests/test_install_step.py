"""The install step's system-package part (``.ci/system-packages``) touches only what it installs.

It runs inside private PID and mount namespaces (``unshare``), so the step sees only the processes
and mounts of the test: if it ever stops processes by name again, it stops the test's dummies and
the test fails, while the other Prometheus servers on a shared machine stay untouched.

To take the install path without downloading anything, the guard tests hide the installed
``prometheus`` (an overlay over its folder, in the private mount namespace) and put a stand-in
``apt-get`` first on PATH that records its arguments and what ``/usr/sbin/policy-rc.d`` answers
while it runs: that is what Debian's ``invoke-rc.d``/``deb-systemd-invoke`` ask before a
post-install script starts a service.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEP = ROOT / ".ci" / "system-packages"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="the install step's apt part runs as root, and these tests need unshare (util-linux)",
)


def _in_namespaces(script: str, tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a bash ``script`` in new PID and mount namespaces; its mounts vanish when it exits."""
    driver = tmp_path / "driver.sh"
    driver.write_text("set -euo pipefail\n" + script)
    return subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private",
         "bash", str(driver)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip


def test_a_running_prometheus_alertmanager_and_node_exporter_stay_alive(tmp_path: Path) -> None:
    # Copies of sleep under the names the old step killed by (pkill -x prometheus, pkill -f
    # prometheus-node-exporter, pkill -x prometheus-alertmanager), as someone's own monitoring.
    sleep = shutil.which("sleep")
    assert sleep is not None
    names = ("prometheus", "prometheus-node-exporter", "prometheus-alertmanager")
    for name in names:
        shutil.copy(sleep, tmp_path / name)
    starts = "\n".join(f"'{tmp_path / n}' 600 & pids+=($!)" for n in names)
    result = _in_namespaces(
        f"""
pids=()
{starts}
bash '{STEP}'
echo "step exit $?"
for pid in "${{pids[@]}}"; do
  if kill -0 "$pid" 2>/dev/null; then echo "alive $pid $(cat /proc/$pid/comm)"; else echo "gone $pid"; fi
done
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "step exit 0" in result.stdout, result.stdout + result.stderr
    alive = [line for line in result.stdout.splitlines() if line.startswith("alive ")]
    assert len(alive) == len(names), f"the install step stopped a process it did not start:\n{result.stdout}"


def _install_path_script(tmp_path: Path, *, policy: str | None, apt_exit: int) -> str:
    """A driver that makes the step install: prometheus hidden, /usr/sbin overlaid, apt-get recorded.

    ``policy``: the content of a /usr/sbin/policy-rc.d already there, or None for none at all.
    """
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "apt.log"
    apt = fake_bin / "apt-get"
    apt.write_text(
        "#!/bin/sh\n"
        f'echo "apt-get $*" >> {log}\n'
        "if [ -x /usr/sbin/policy-rc.d ]; then /usr/sbin/policy-rc.d prometheus start; "
        f'echo "policy-rc.d says $?" >> {log}; else echo "no policy-rc.d" >> {log}; fi\n'
        f"exit {apt_exit}\n"
    )
    apt.chmod(0o755)
    for sub in ("sbin-upper", "sbin-work", "bin-upper", "bin-work"):
        (tmp_path / sub).mkdir()
    set_policy = "rm -f /usr/sbin/policy-rc.d\n"
    if policy is not None:
        (tmp_path / "policy").write_text(policy)
        set_policy += f"cp '{tmp_path / 'policy'}' /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d\n"
    return f"""
overlay() {{
  mount -t overlay overlay -o "lowerdir=$1,upperdir={tmp_path}/$2-upper,workdir={tmp_path}/$2-work" "$1"
}}
overlay /usr/sbin sbin
{set_policy}
prometheus=$(readlink -f "$(command -v prometheus)")
overlay "$(dirname "$prometheus")" bin
rm "$prometheus"
set +e
PATH='{fake_bin}':"$PATH" bash '{STEP}'
echo "step exit $?"
if [ -e /usr/sbin/policy-rc.d ]; then echo "after:"; cat /usr/sbin/policy-rc.d; else echo "after: none"; fi
"""


def test_no_service_starts_while_installing_and_the_guard_is_removed_after(tmp_path: Path) -> None:
    result = _in_namespaces(_install_path_script(tmp_path, policy=None, apt_exit=0), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step exit 0" in result.stdout, result.stdout + result.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    install = [i for i, line in enumerate(calls) if line.startswith("apt-get install")]
    assert install, calls
    assert "prometheus prometheus-alertmanager" in calls[install[0]]
    assert calls[install[0] + 1] == "policy-rc.d says 101", calls  # 101: action forbidden
    assert "after: none" in result.stdout, result.stdout


def test_the_guard_is_removed_when_apt_fails(tmp_path: Path) -> None:
    result = _in_namespaces(_install_path_script(tmp_path, policy=None, apt_exit=100), tmp_path)
    assert "step exit 100" in result.stdout, result.stdout + result.stderr
    assert "after: none" in result.stdout, result.stdout


def test_an_existing_policy_rc_d_is_used_and_left_as_it_was(tmp_path: Path) -> None:
    own = "#!/bin/sh\n# the machine's own policy\nexit 0\n"
    result = _in_namespaces(_install_path_script(tmp_path, policy=own, apt_exit=0), tmp_path)
    assert "step exit 0" in result.stdout, result.stdout + result.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert "policy-rc.d says 0" in calls, calls  # the step did not replace the machine's policy
    assert result.stdout.split("after:\n", 1)[1] == own, result.stdout


def test_nothing_to_do_when_everything_is_installed(tmp_path: Path) -> None:
    # On this machine the packages are installed (the step ran before the tests): no apt at all.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "apt-get").write_text(f"#!/bin/sh\necho called > {tmp_path / 'apt.log'}\nexit 1\n")
    (fake_bin / "apt-get").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(STEP)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "apt.log").exists()
