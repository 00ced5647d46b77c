"""The library's rooms point one way: each module of harness/ imports only from the rooms below
its own (harness/__init__.py says what each room holds). A new arrow upward fails here, naming the
file and the import."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"
# room -> the rooms it may import from (its own always); the top-level modules (cell, sweep,
# options) sit on top and may import any room
BELOW = {
    "errors": set(),
    "compute": {"errors"},
    "testbed": {"compute", "errors"},
    "measure": {"testbed", "compute", "errors"},
    "report": {"measure", "compute", "errors"},
    "predict": {"report", "measure", "compute", "errors"},
    "serve": {"report", "measure", "testbed", "compute", "errors"},
}
TOP = {"cell", "sweep", "options"}


def room_of(parts: tuple[str, ...]) -> str:
    """harness.X... -> X: a subpackage's name, or a top-level module's."""
    return parts[1] if len(parts) > 1 else parts[0]


def imports(path: Path) -> list[str]:
    """Every harness module a file imports, at the top or inside a function."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness."):
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("harness.")]
    return out


def arrows(root: Path) -> list[tuple[str, str, str]]:
    """(file, its room, the room it imports) for every import across rooms under root."""
    out = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("").parts
        room = room_of(rel) if len(rel) > 2 else rel[1]
        for target in imports(path):
            troom = target.split(".")[1]
            if troom != room:
                out.add((str(path.relative_to(root.parent)), room, troom))
    return sorted(out)


def upward(found: list[tuple[str, str, str]]) -> list[str]:
    return [f"{f}: {room} imports {target}" for f, room, target in found
            if room not in TOP and target not in BELOW.get(room, set())]


def test_every_room_imports_only_from_below():
    assert not upward(arrows(HARNESS)), "imports that point up:\n" + "\n".join(upward(arrows(HARNESS)))


def test_every_room_is_placed():
    rooms = {p.name for p in HARNESS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in HARNESS.glob("*.py") if p.stem != "__init__"}
    assert rooms | modules <= set(BELOW) | TOP, f"unplaced: {(rooms | modules) - set(BELOW) - TOP}"


def test_a_planted_upward_import_is_found(tmp_path):
    pkg = tmp_path / "harness"
    (pkg / "compute").mkdir(parents=True)
    (pkg / "compute" / "x.py").write_text("from harness.report.tables import markdown_table\n")
    (pkg / "report").mkdir()
    (pkg / "report" / "y.py").write_text("def f():\n    from harness.measure.results import Stat\n")
    assert upward(arrows(pkg)) == ["harness/compute/x.py: compute imports report"]


@pytest.mark.parametrize("path", sorted(HARNESS.rglob("*.py")), ids=lambda p: str(p.relative_to(HARNESS)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400, f"{path.name}: split it by concept"
