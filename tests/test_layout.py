"""The package's shape: one import name per module, no links, and imports that point one way.

``evalstream`` is a PEP 420 namespace package with four source roots (docs/DEVELOPING.md). These
tests read the files themselves, so they fail when a module gains a second name, a link comes back,
or a module imports a layer above its own.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("src", "pipelines", "services", "protos")

# Each subpackage of evalstream and the subpackages it may import (itself always). Dependencies
# point one way: cli -> local, tools -> evaluation, pipeline, judges, exporter, llm_replay -> kafka,
# runtime -> wire (and the generated v1). Pipelines never import services, services never pipelines.
_BASE = {"wire", "v1"}
ALLOWED: dict[str, set[str]] = {
    "v1": set(),
    "wire": {"v1"},
    "runtime": _BASE,
    "kafka": _BASE | {"runtime"},
    "evaluation": _BASE | {"runtime"},
    "pipeline": _BASE | {"runtime", "kafka"},
    "judges": _BASE | {"runtime", "evaluation"},
    "exporter": _BASE | {"runtime", "kafka", "evaluation"},
    "llm_replay": _BASE | {"runtime", "evaluation"},
    "tools": _BASE | {"runtime", "kafka", "evaluation", "pipeline", "judges", "exporter", "llm_replay"},
    "local": _BASE
    | {"runtime", "kafka", "evaluation", "pipeline", "judges", "exporter", "llm_replay", "tools"},
    "cli": set(),  # the top: may import anything
}


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file, from the source roots' folders."""
    found: dict[str, Path] = {}
    for root in SOURCE_ROOTS:
        for path in sorted((ROOT / root / "evalstream").rglob("*.py")):
            rel = path.relative_to(ROOT / root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            assert name not in found, f"{name} is defined twice: {found[name]} and {path}"
            found[name] = path
    return found


def test_no_links_in_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    links = [line.split("\t", 1)[1] for line in tracked if line.startswith("120000 ")]
    assert links == []
    on_disk = [
        str(p.relative_to(ROOT)) for root in SOURCE_ROOTS for p in (ROOT / root).rglob("*") if p.is_symlink()
    ]
    assert on_disk == []


def test_evalstream_is_one_namespace_over_the_four_source_roots():
    spec = importlib.util.find_spec("evalstream")
    assert spec is not None and spec.origin in (None, "namespace")
    assert spec.submodule_search_locations is not None
    assert sorted(Path(p).resolve() for p in spec.submodule_search_locations) == sorted(
        (ROOT / r / "evalstream").resolve() for r in SOURCE_ROOTS
    )
    # a regular package anywhere above a root's evalstream/ would give its modules a second name
    for root in SOURCE_ROOTS:
        assert not (ROOT / root / "__init__.py").exists()
        assert not (ROOT / root / "evalstream" / "__init__.py").exists()


def test_every_module_has_exactly_one_import_name():
    modules = _modules()
    assert len(modules) > 80
    for name, path in modules.items():
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"{name} ({path}) is not importable"
        origin = Path(spec.origin or "").resolve()
        assert origin == path.resolve(), f"{name} resolves to {origin}, not {path}"
    # the names the symlinked layout used to give, and the folders' own names, import nothing
    for old in ("evalstream.pipelines", "evalstream.services", "pipelines.run", "services.judges"):
        try:
            found = importlib.util.find_spec(old)
        except ModuleNotFoundError:
            found = None
        assert found is None, f"{old} is importable: a module has a second name"


def _imports(path: Path) -> set[str]:
    """The evalstream subpackages a module imports, at import time or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "evalstream" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_imports_point_one_way():
    wrong = []
    for name, path in _modules().items():
        parts = name.split(".")
        if len(parts) < 2:
            continue
        own = parts[1]
        assert own in ALLOWED, f"{name}: subpackage {own!r} has no place in the layering; add it"
        if own == "cli":
            continue
        for target in _imports(path) - {own}:
            if target not in ALLOWED[own]:
                wrong.append(f"{name} imports evalstream.{target}")
    assert wrong == []


@pytest.mark.parametrize(
    "module",
    ["evalstream.exporter.server", "evalstream.judges.server", "evalstream.pipeline.run"],
)
def test_service_processes_load_no_command_line_code(module):
    """Starting the exporter, a judge or the pipeline loads neither the CLI nor its libraries."""
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich')"
        " or m.startswith(('evalstream.cli', 'evalstream.tools', 'evalstream.local')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
