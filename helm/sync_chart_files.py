"""Copy deploy/'s Prometheus rules and Grafana dashboards into the chart (helm/evalstream/files/).

deploy/ is the one source of truth. Helm reads only files inside a chart's folder (and a packaged or
repository-installed chart carries nothing else), the repository has no symlinks, so the chart holds a
byte-for-byte copy; tests/test_helm.py fails when it differs. Run after editing deploy/:

    python helm/sync_chart_files.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART_FILES = ROOT / "helm" / "evalstream" / "files"
#: chart folder -> (deploy folder, file pattern)
COPIES = {
    "prometheus-rules": (ROOT / "deploy" / "prometheus" / "rules", "*.yml"),
    "dashboards": (ROOT / "deploy" / "grafana" / "dashboards", "*.json"),
}


def sync() -> list[str]:
    """Make the chart's copies equal to deploy/'s files; return what changed."""
    changed: list[str] = []
    for folder, (source, pattern) in COPIES.items():
        target = CHART_FILES / folder
        target.mkdir(parents=True, exist_ok=True)
        wanted = {p.name: p for p in sorted(source.glob(pattern))}
        for stale in sorted(set(p.name for p in target.glob(pattern)) - set(wanted)):
            (target / stale).unlink()
            changed.append(f"removed {folder}/{stale}")
        for name, path in wanted.items():
            copy = target / name
            if not copy.exists() or copy.read_bytes() != path.read_bytes():
                shutil.copyfile(path, copy)
                changed.append(f"copied {folder}/{name}")
    return changed


if __name__ == "__main__":
    for line in sync() or ["the chart's files already equal deploy/"]:
        sys.stdout.write(line + "\n")
