"""The front door is checked: the README's first screen holds the purpose, the two commands and a
table generated from a committed run; every path the README, the docs and the workflows name
exists; every command they show parses; the generated pages regenerate byte-identical."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures import options_doc
from harness.report import readme

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ROOTS = r"(?:\.github|results|docs|harness|fixtures|benchmarks|tests|scripts)"
PATH = re.compile(rf"(?<![\w/.<-])({ROOTS}/[\w./-]*\w|run_llm\.py|rpc_server\.py|parse_dmon\.py|setup\.sh|requirements\.txt)")
LINK = re.compile(r"\]\(([^)#\s]+)\)")
OUTPUT = re.compile(r"(--benchmark-json=|--out[ =])\S+")  # what a command writes need not exist yet


def named_paths(text: str, where: Path) -> list[Path]:
    """Paths a page names: repository paths anywhere (relative to the root), link targets (relative
    to the page); a command's outputs and placeholders (<card>) left out."""
    text = OUTPUT.sub("", text)
    found = [REPO / m.group(1).rstrip(".") for m in PATH.finditer(text)]
    found += [(where.parent / m.group(1)).resolve() for m in LINK.finditer(text) if "://" not in m.group(1)]
    return found


def missing(text: str, where: Path) -> list[str]:
    return sorted({str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)
                   for p in named_paths(text, where) if not p.exists()})


RUNNERS = (".venv/bin/python", "python", "python3")


def commands(text: str) -> list[list[str]]:
    """The commands a page or workflow shows, in code lines (indented four spaces, continuation
    lines joined) and inline code: those that run the suite, a module of the project or a script
    with Python ([optional arguments] left out)."""
    text = re.sub(r"\\\n\s*", " ", text)
    spans = [ln.strip() for ln in text.splitlines() if ln.startswith("    ")]
    spans += re.findall(r"`([^`]+)`", text)
    out = []
    for span in spans:
        for part in span.removeprefix("sudo ").split(" && "):
            part = re.sub(r"\[[^\]]*\]", "", part.removeprefix("sudo ")).strip()
            if part.startswith(tuple(r + " " for r in RUNNERS)):
                out.append(shlex.split(part))
    return out


@pytest.mark.parametrize("page", [*PAGES, *WORKFLOWS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_named_exists(page):
    assert not missing(page.read_text(), page), f"{page.name} names paths that are not there"


def test_a_planted_missing_path_is_found():
    text = "See `harness/compute/engine.py` and [the method](docs/nothing-here.md); `results/cpu/gone/x.json`."
    assert missing(text, REPO / "README.md") == ["docs/nothing-here.md", "results/cpu/gone/x.json"]
    assert missing("--benchmark-json=results/cpu/new/x.json", REPO / "README.md") == [], "an output"


def _parses(argv: list[str]) -> subprocess.CompletedProcess:
    """pytest --collect-only with the command's options (outputs dropped); run_llm.py and the
    sweep through their own parsers with the command's arguments (in a child, for argparse's exit);
    any other module or script, or one named bare: --help."""
    argv = [sys.executable, *argv[1:]]
    if argv[1:3] == ["-m", "pytest"]:
        args = [a for a in argv[3:] if not a.startswith(("--benchmark-json", "-n"))
                and a not in ("2",)]
        argv = [*argv[:3], *args, "--collect-only", "-q", "-p", "no:xdist", "-p", "no:cacheprovider"]
    elif (argv[1] == "run_llm.py" and argv[2:]) or (argv[1:3] == ["-m", "harness.sweep"] and argv[3:]):
        rest = argv[2:] if argv[1] == "run_llm.py" else argv[3:]
        parse = ("import run_llm; run_llm.parse_args(sys.argv[1:])" if argv[1] == "run_llm.py"
                 else "from harness import sweep; sweep.parser().parse_args(sys.argv[1:])")
        argv = [sys.executable, "-c", "import sys; " + parse, *rest]
    else:
        argv = [*argv[:3 if argv[1] == "-m" else 2], "--help"]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_removed_flag_in_a_shown_command_fails():
    assert _parses(["python", "run_llm.py", "--mode", "local", "--phase", "decode"]).returncode == 0
    assert _parses(["python", "run_llm.py", "--mode", "local", "--phase", "decode", "--decode-steps", "3"]).returncode
    assert _parses(["python", "-m", "harness.sweep", "--out", "x", "--rtt-ms", "0"]).returncode


def workflow_runs(path: Path) -> str:
    """A workflow's `run:` scripts, each as code lines (folded blocks joined by YAML)."""
    jobs = yaml.safe_load(path.read_text())["jobs"].values()
    runs = [step["run"] for job in jobs for step in job.get("steps", []) if "run" in step]
    return "\n".join("    " + line for run in runs for line in run.strip().splitlines())


def test_every_command_shown_parses():
    shown = [c for p in PAGES for c in commands(p.read_text())]
    shown += [c for w in WORKFLOWS for c in commands(workflow_runs(w))]
    assert any(a.startswith("--benchmark-compare=results/") for c in shown for a in c), "the GPU smoke's baseline"
    assert any(c[1:4] == ["-m", "pytest", "benchmarks"] for c in shown), "the main job's command"
    for argv in {tuple(c) for c in shown}:
        proc = _parses(list(argv))
        assert proc.returncode == 0, f"{shlex.join(argv)}:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"


def test_the_first_screen_is_the_front_door():
    text = (REPO / "README.md").read_text()
    first = "\n".join(text.splitlines()[:60])
    assert len(text.splitlines()) <= 150
    assert "./setup.sh && .venv/bin/python -m pytest benchmarks" in first
    assert "./setup.sh && .venv/bin/python -m pytest -n 2" in first
    assert "<!-- table: results/" in first and "| decode | sys_simulated |" in first


def test_the_generated_pages_regenerate_byte_identical():
    text = (REPO / "README.md").read_text()
    assert readme.render(text, REPO) == text, "README.md's table differs: run python -m harness.report.readme"
    assert (REPO / "docs/options.md").read_text() == options_doc.render(), \
        "docs/options.md differs: run python -m fixtures.options_doc"


def test_the_ci_runs_the_readmes_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -n 2" in ci
