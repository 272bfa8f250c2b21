"""What each kind of process loads: judge servers and the exporter never load Beam or torch.

The dependency groups in pyproject.toml (``judges``, ``exporter``, ``pipeline``, ``encoder``, ``all``)
only hold if the processes keep to them. Each process here is started for real in its own
interpreter with ``python -X importtime``, which logs every module the interpreter imports, and its
log is read once the process is ready (and again after it was stopped).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evalstream.kafka.admin import ensure_topics
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.ready import EXPORTER_READY, JUDGE_READY
from evalstream.runtime.settings import KafkaSettings

#: Top-level packages a judge or exporter process must not import.
FORBIDDEN = frozenset({"apache_beam", "torch", "sentence_transformers", "transformers"})


def imported(log: str) -> set[str]:
    """Top-level packages named in ``-X importtime`` lines ("import time: self | cumulative | name")."""
    found = set()
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                found.add(name.split(".")[0])
    return found


def _python(*args: str) -> list[str]:
    return [sys.executable, "-X", "importtime", *args]


def _imports_of(code: str) -> set[str]:
    done = subprocess.run(_python("-c", code), capture_output=True, text=True, timeout=120, check=True)
    return imported(done.stderr)


def _served(child: ChildProcess, children: list[ChildProcess]) -> set[str]:
    children.append(child)
    child.start(timeout=120)
    child.stop(grace=10)
    return imported(child.output())


def test_the_detector_sees_beam_where_the_pipeline_loads_it() -> None:
    """Control: the same reading finds Beam in the pipeline's modules, so an absence below means something."""
    assert "apache_beam" in _imports_of("import evalstream.pipeline.run")


def test_judge_modules_import_neither_beam_nor_torch() -> None:
    modules = _imports_of(
        "import evalstream.judges.server, evalstream.judges.encoder, evalstream.judges.rules, "
        "evalstream.judges.llm, evalstream.judges.registry"
    )
    assert "grpc" in modules
    assert modules.isdisjoint(FORBIDDEN), sorted(modules & FORBIDDEN)


def test_exporter_modules_import_neither_beam_nor_torch() -> None:
    modules = _imports_of("import evalstream.exporter.server")
    assert "kafka" in modules
    assert modules.isdisjoint(FORBIDDEN), sorted(modules & FORBIDDEN)


@pytest.mark.slow
def test_a_serving_encoder_judge_loads_onnx_runtime_and_no_torch(
    encoder_artefact: Path, tmp_path: Path, children: list[ChildProcess]
) -> None:
    child = ChildProcess(
        name="encoder-judge",
        cmd=_python("-m", "evalstream.judges.server", "--judge", "encoder", "--port", "0"),
        log_file=tmp_path / "encoder-judge.log",
        ready=JUDGE_READY,
        env={"EVALSTREAM_ENCODER_MODEL_DIR": str(encoder_artefact)},
    )
    modules = _served(child, children)
    assert {"onnxruntime", "tokenizers", "sklearn"} <= modules
    assert modules.isdisjoint(FORBIDDEN), sorted(modules & FORBIDDEN)


@pytest.mark.slow
def test_a_serving_rules_judge_loads_neither_beam_nor_torch(
    tmp_path: Path, children: list[ChildProcess]
) -> None:
    child = ChildProcess(
        name="rules-judge",
        cmd=_python("-m", "evalstream.judges.server", "--judge", "rules", "--port", "0"),
        log_file=tmp_path / "rules-judge.log",
        ready=JUDGE_READY,
    )
    modules = _served(child, children)
    assert "grpc" in modules
    assert modules.isdisjoint(FORBIDDEN | {"onnxruntime"}), sorted(modules & (FORBIDDEN | {"onnxruntime"}))


@pytest.mark.slow
@pytest.mark.broker
def test_a_running_exporter_loads_neither_beam_nor_torch(
    broker, unique: str, tmp_path: Path, children: list[ChildProcess]
) -> None:
    verdicts, summaries = f"deps-verdicts-{unique}", f"deps-summaries-{unique}"
    ensure_topics(KafkaSettings(bootstrap=broker.bootstrap), {verdicts: 1, summaries: 1})
    flags = [
        "--bootstrap", broker.bootstrap,
        "--verdicts-topic", verdicts,
        "--summaries-topic", summaries,
        "--group-id", f"deps-{unique}",
        "--state-file", str(tmp_path / "state.json"),
        "--metrics-port", "0",
        "--pipeline-group", "",
    ]  # fmt: skip
    child = ChildProcess(
        name="exporter",
        cmd=_python("-m", "evalstream.exporter", *flags),
        log_file=tmp_path / "exporter.log",
        ready=EXPORTER_READY,
    )
    modules = _served(child, children)
    assert {"kafka", "prometheus_client"} <= modules
    assert modules.isdisjoint(FORBIDDEN), sorted(modules & FORBIDDEN)
