"""The soak benchmark, short: ``benchmarks/soak.py`` for two minutes with its four faults (a judge
SIGKILL, an LLM 5xx burst, a pipeline SIGKILL, the LLM judge SIGKILL) on real parts.

The benchmark itself checks the accounting (events in = unsampled + verdicts + dead letters, from
the summaries and from the records), that every acknowledged event was accounted for, that no verdict
was written twice, and memory flatness; it exits 1 when a check fails. Two minutes is too short for
the memory figure to mean much (processes are still warming up), so the run here allows 25% growth;
the 30-minute benchmark holds it to 10%.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def test_a_short_soak_with_faults_balances_and_writes_no_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--minutes",
            "2",
            "--rate",
            "20",
            "--tolerance",
            "0.25",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    accounting = result["accounting"]
    assert accounting["balanced"], accounting
    assert accounting["duplicate_verdicts"] == 0, accounting
    assert [f["name"] for f in result["faults"]] == [
        "SIGKILL rules judge",
        "LLM endpoint 5xx burst",
        "SIGKILL pipeline",
        "SIGKILL LLM judge",
    ]
    assert all(f["recovered_s"] is not None for f in result["faults"]), result["faults"]
