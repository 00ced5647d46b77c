"""harness.sweep: the grid, one suite run per point, resume without re-measuring, failures
recorded. One real sweep on the tiny model (one cell, the smallest settings); the rest in-process
with the suite's run replaced, so that a test can prove no pytest ran."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import sweep

REPO = Path(__file__).resolve().parent.parent
# one local prefill cell of the tiny model: the sweep's machinery, not a measurement, is tested
TINY = ["--gap-model", "tiny", "--gap-link-gbps", "unshaped", "--gap-link-rtt-ms", "0", "--gap-steps", "1", "--gap-rounds", "1",
        "--gap-warmup", "0", "--tests", "benchmarks/test_cells.py"]
SELECT = ["--", "-k", "prefill and local"]
GOOD, BAD = "tiny-unshaped-rtt0ms-p8-s1", "tiny-unshaped-rtt0ms-p600-s1"  # 600: over tiny's context


def args_for(*argv: str):
    args = sweep.parser().parse_args(list(argv))
    args.argv = list(argv)
    return args


def test_grid_expands_as_stated():
    args = args_for("--out", "x", "--gap-model", "gpt2", "--gap-link-gbps", "10,25,50,100,unshaped",
                    "--gap-link-rtt-ms", "0,0.5,5", "--gap-prompt-len", "128,512", "--gap-steps", "10")
    points = sweep.grid(args)
    assert len(points) == 5 * 3 * 2
    assert {(p.link, p.rtt_ms, p.prompt_len) for p in points} == {
        (link, rtt, pl) for link in ("10", "25", "50", "100", "unshaped") for rtt in (0, 0.5, 5) for pl in (128, 512)}
    assert len({p.name for p in points}) == len(points)
    by_name = {p.name: p for p in points}
    assert by_name["gpt2-unshaped-rtt0ms-p128-s10"].flags() == [
        "--gap-model", "gpt2", "--gap-prompt-len", "128", "--gap-steps", "10"]
    assert by_name["gpt2-25gbit-rtt0.5ms-p512-s10"].flags()[-4:] == [
        "--gap-link-gbps", "25", "--gap-link-rtt-ms", "0.5"]
    profile = sweep.grid(args_for("--out", "x", "--gap-link-gbps", "nic25"))[0]
    assert profile.name == "gpt2-nic25-rtt0ms-p128-s50" and profile.flags()[-2:] == ["--gap-link-profile", "nic25"]


@pytest.mark.parametrize("argv,needle", [
    (["--gap-link-gbps", "10,fast"], "'fast' is not a value it takes"),
    (["--gap-link-gbps", "0"], "'0' is not a value it takes"),
    (["--gap-link-rtt-ms", "0,0"], "repeats a point"),
])
def test_bad_axis_fails_before_any_point(argv, needle):
    with pytest.raises(SystemExit, match=needle):
        sweep.grid(args_for("--out", "x", *argv))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real sweep: one point measured, one that fails as a usage error."""
    out = tmp_path_factory.mktemp("sweep")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    proc = subprocess.run([sys.executable, "-m", "harness.sweep", "--out", str(out), "--gap-prompt-len", "8,600",
                           *TINY, *SELECT], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    return proc, out


def test_sweep_measures_records_failure_and_goes_on(swept):
    proc, out = swept
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a point failed
    assert "[1/2] tiny-unshaped-rtt0ms-p8-s1 (model=tiny link=unshaped rtt=0 ms prompt=8 steps=1)" in proc.stdout
    assert "[2/2]" in proc.stdout and "ETA" in proc.stdout
    data = json.loads((out / f"{GOOD}.json").read_text())
    assert [b["name"] for b in data["benchmarks"]] == ["test_cell[prefill-local]"]
    env = data["machine_info"]["semantic_gap"]
    assert (env["link_rate_gbps"], env["link_rtt_ms"], env["link_profile"]) == (None, 0.0, None)
    failed = json.loads((out / f"{BAD}.failure.json").read_text())
    assert failed["rc"] == 4 and "exceeds tiny's context of 512" in failed["reason"], failed
    assert not (out / f"{BAD}.json").exists() and not list(out.glob(".*partial*"))
    assert [f.name for f in sweep.point_files(out)] == [f"{GOOD}.json"], "a failure record is not a point"
    index = json.loads((out / "sweep.json").read_text())
    assert [e["status"] for e in index["invocations"][0]["points"]] == ["measured", "failed"]
    # the index states the commit its points ran at, from their JSON (none where a point's tree was dirty)
    point = data["commit_info"]
    clean = point.get("dirty") is False
    assert (index["commit_info"]["id"], index["commit_info"]["dirty"]) == ((point["id"], False) if clean else (None, None))


def test_resume_runs_no_pytest(swept, monkeypatch, capsys):
    """Again, same grid: the measured point is not measured again, and the usage error (the same
    command would give the same answer) is not retried."""
    _, out = swept
    before = (out / f"{GOOD}.json").stat().st_mtime_ns

    def no_pytest(*a, **k):
        raise AssertionError(f"a resumed sweep started a process: {a}")
    monkeypatch.setattr(sweep.subprocess, "Popen", no_pytest)
    assert sweep.main(["--out", str(out), "--gap-prompt-len", "8,600", *TINY, *SELECT]) == 0
    said = capsys.readouterr().out
    assert f"{GOOD}: skipped, measured earlier" in said
    assert f"{BAD}: skipped, failed earlier as a usage error" in said
    assert (out / f"{GOOD}.json").stat().st_mtime_ns == before


def test_retry_failed_runs_only_the_failed_point(swept, monkeypatch):
    _, out = swept
    ran = []
    monkeypatch.setattr(sweep, "run_point", lambda point, args, out: ran.append(point.name) or
                        {"status": "failed", "seconds": 0.0, "rc": 4, "reason": "again"})
    sweep.main(["--out", str(out), "--gap-prompt-len", "8,600", "--retry-failed", *TINY, *SELECT])
    assert ran == [BAD]


def test_cut_off_run_leaves_no_json_and_is_retried(tmp_path, monkeypatch):
    """A run stopped half-way (here: past its timeout, with half a JSON written) does not count:
    no NAME.json, a failure saying why, and the next invocation runs it again."""
    def half_written(proc, timeout_s):
        partial = next(a for a in proc.args if a.startswith("--benchmark-json=")).split("=", 1)[1]
        Path(partial).write_text('{"benchmarks": [')
        proc.kill()
        proc.wait()
        return None
    monkeypatch.setattr(sweep, "wait_for", half_written)
    monkeypatch.setattr(sweep, "command", lambda point, args, path: ["sleep", "30", f"--benchmark-json={path}"])
    argv = ["--out", str(tmp_path), "--gap-prompt-len", "8", *TINY]
    assert sweep.main(argv) == 1
    assert not (tmp_path / f"{GOOD}.json").exists()
    assert "ran past --point-timeout" in json.loads((tmp_path / f"{GOOD}.failure.json").read_text())["reason"]
    (tmp_path / f"{GOOD}.json").write_text('{"benchmarks": [')  # half a JSON under the final name
    assert sweep.plan(sweep.grid(sweep.parser().parse_args(argv)), tmp_path, False)[0][1] is None
