"""Sweeps: the suite run once per point of a grid (link rate x RTT x prompt length x decode
steps x model), one pytest-benchmark JSON per point, named after it.

    python -m harness.sweep --out DIR --gap-model gpt2 --gap-link-gbps 10,25,50,100,unshaped \\
        --gap-link-rtt-ms 0,0.5,5 --gap-prompt-len 128,512 --gap-steps 10 [--gap-rounds 1 --gap-warmup 0] \\
        [--dry-run] [--tests benchmarks/test_cells.py] [-- more pytest arguments]

The suite is the measuring instrument: each point is `pytest benchmarks ...` in a subprocess,
exactly as a user runs it, and nothing here measures. Resumable: a point whose JSON exists and
parses is not measured again. pytest writes to a temporary name that is renamed only once the
run passed, so a run cut off half-way never counts. A point that fails leaves NAME.failure.json
(why, the exit code, the command; its log is NAME.log) and the sweep goes on. On resume a point
that failed as a usage error (pytest's exit 4: its options, or this machine, cannot run it, e.g.
a prompt over the model's context, or an RTT with a rate above what the delay line that stands
in for a missing sch_netem carries) is not retried, since
the same command gives the same answer; a point whose cells failed or that timed out is, since
a shared machine's hiccup can cause either. --retry-failed retries every failed point.

A link axis value is a rate in Gbit/s, `unshaped`, or a profile name (testbed.link.PROFILES,
passed as --gap-link-profile). An RTT of 0 adds none (the veth's own round trip).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from harness.measure.results import SWEEP_INDEX as INDEX
from harness.measure.results import point_files
from harness.options import add_options, flag_of
from harness.report.environment import changed_files
from harness.testbed.link import PROFILES

REPO = Path(__file__).resolve().parent.parent
AXES = ("model", "prompt_len", "steps", "link_gbps", "link_rtt_ms")  # the grid: SuiteOptions' names, lists here
USAGE_ERROR = 4  # pytest's exit code for bad options (and the suite's for a machine that can't run them)


@dataclass(frozen=True)
class Point:
    model: str
    link: str          # a rate in Gbit/s as written, "unshaped", or a profile name
    rtt_ms: float      # 0: none added
    prompt_len: int
    steps: int

    @property
    def name(self) -> str:
        """Names sort and read as the grid: gpt2-25gbit-rtt0.5ms-p128-s10."""
        link = self.link if self.link == "unshaped" or self.link in PROFILES else f"{self.link}gbit"
        return f"{Path(self.model).name}-{link}-rtt{self.rtt_ms:g}ms-p{self.prompt_len}-s{self.steps}"

    def flags(self) -> list[str]:
        """The suite's options for this point (an unshaped link and RTT 0 are its defaults)."""
        out = ["--gap-model", self.model, "--gap-prompt-len", str(self.prompt_len), "--gap-steps", str(self.steps)]
        if self.link in PROFILES:
            out += ["--gap-link-profile", self.link]
        elif self.link != "unshaped":
            out += ["--gap-link-gbps", self.link]
        if self.rtt_ms:
            out += ["--gap-link-rtt-ms", f"{self.rtt_ms:g}"]
        return out


def parse_list(text: str, kind, what: str) -> list:
    values = []
    for v in (v.strip() for v in text.split(",")):
        try:
            values.append(kind(v))
        except ValueError:
            raise SystemExit(f"sweep: {what} {text!r}: {v!r} is not a value it takes") from None
    return values


def link_value(text: str) -> str:
    """A link axis value, checked here so that a typo fails before hours of points, not at one."""
    if text == "unshaped" or text in PROFILES:
        return text
    if float(text) <= 0:  # a ValueError for words, reported by parse_list
        raise ValueError(text)
    return f"{float(text):g}"


def grid(args) -> list[Point]:
    """Every combination, model outermost and RTT innermost, so neighbours differ in one thing."""
    axes = (parse_list(args.gap_model, str, flag_of("model")),
            parse_list(args.gap_prompt_len, int, flag_of("prompt_len")),
            parse_list(args.gap_steps, int, flag_of("steps")),
            parse_list(args.gap_link_gbps, link_value, flag_of("link_gbps")),
            parse_list(args.gap_link_rtt_ms, float, flag_of("link_rtt_ms")))
    points = [Point(m, link, rtt, p, s) for m, p, s, link, rtt in itertools.product(*axes)]
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise SystemExit("sweep: the grid repeats a point (a value given twice?)")
    return points


def command(point: Point, args, json_path: Path) -> list[str]:
    fixed = []
    for name in ("rounds", "warmup"):
        if getattr(args, "gap_" + name) is not None:
            fixed += [flag_of(name), str(getattr(args, "gap_" + name))]
    # no xdist: cells share the link; no cache provider: points must not depend on each other
    return [sys.executable, "-m", "pytest", *args.tests, "-p", "no:xdist", "-p", "no:cacheprovider",
            *point.flags(), *fixed, *args.pytest_args, f"--benchmark-json={json_path}"]


def measured(path: Path) -> bool:
    """A point is done when its JSON exists and parses as pytest-benchmark's."""
    try:
        return isinstance(json.loads(path.read_text()).get("benchmarks"), list)
    except (OSError, ValueError, AttributeError):
        return False


def failure(out: Path, point: Point) -> dict | None:
    try:
        return json.loads((out / f"{point.name}.failure.json").read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    """Written whole or not at all: a temporary name, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def child_env() -> dict:
    """Our environment without xdist's worker variables: a pytest that inherits them believes it
    is an xdist worker, and pytest-benchmark then disables itself (and writes no JSON)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}


def run_point(point: Point, args, out: Path) -> dict:
    """One suite run. Returns {"status": "measured"|"failed", "seconds", ...}; the JSON becomes
    NAME.json only if pytest passed and the file parses."""
    final, partial = out / f"{point.name}.json", out / f".{point.name}.partial.json"
    partial.unlink(missing_ok=True)
    cmd = command(point, args, partial)
    t0 = time.monotonic()
    with open(out / f"{point.name}.log", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = wait_for(subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True), args.point_timeout)
    seconds = time.monotonic() - t0
    if rc == 0 and measured(partial):
        os.replace(partial, final)
        for stale in (f"{point.name}.failure.json", f"{point.name}.failed-run.json"):  # an earlier try's
            (out / stale).unlink(missing_ok=True)
        return {"status": "measured", "seconds": round(seconds, 1)}
    if measured(partial):  # the cells ran but some failed: keep their numbers to read, not as the point
        os.replace(partial, out / f"{point.name}.failed-run.json")
    reason = why(out / f"{point.name}.log", rc, args.point_timeout)
    record = {"point": point.__dict__, "name": point.name, "rc": rc, "reason": reason, "command": cmd,
              "seconds": round(seconds, 1), "log": f"{point.name}.log", "finished": now()}
    write_json(out / f"{point.name}.failure.json", record)
    return {"status": "failed", "seconds": round(seconds, 1), "rc": rc, "reason": reason}


def wait_for(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """The run's exit code; None if it ran past timeout_s. Stopped as Ctrl-C would: SIGTERM, which
    the suite turns into its own teardown (worker, capture, namespace), then SIGKILL to its group."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc)
        return None
    except BaseException:  # Ctrl-C, or SIGTERM (main makes it one): the run must not outlive us
        stop(proc)
        raise


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_new_session): ours is spared
        proc.wait()


def why(log: Path, rc: int | None, timeout_s: float) -> str:
    """The lines of the run's output that say what went wrong: pytest's failure summary, a usage
    error, an exit message; else its last line."""
    if rc is None:
        return f"ran past --point-timeout {timeout_s:g} s and was stopped"
    lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR ", "ERROR:", "Exit:", "!!!"))]
    text = " | ".join(said or lines[-1:]) or "no output"
    return f"pytest exit {rc}: {text[:1500]}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


def plan(points: list[Point], out: Path, retry_failed: bool) -> list[tuple[Point, str | None]]:
    """Each point with why it is not run now (None: run it)."""
    planned = []
    for p in points:
        failed = failure(out, p)
        if measured(out / f"{p.name}.json"):
            planned.append((p, "measured earlier"))
        elif failed and failed.get("rc") == USAGE_ERROR and not retry_failed:
            planned.append((p, f"failed earlier as a usage error: {failed.get('reason', '')[:200]}"))
        else:
            planned.append((p, None))
    return planned


def progress(i: int, n: int, point: Point, started: float, durations: list[float], left: int) -> str:
    """[i/n] name (parameters) | elapsed, ETA: the points left to run (this one included) at the
    mean time of the points this invocation measured."""
    elapsed = time.monotonic() - started
    eta = clock(sum(durations) / len(durations) * left) if durations else "after the first point"
    params = (f"model={point.model} link={point.link} rtt={point.rtt_ms:g} ms "
              f"prompt={point.prompt_len} steps={point.steps}")
    return f"[{i}/{n}] {point.name} ({params}) | elapsed {clock(elapsed)}, ETA {eta}"


def sweep(args) -> int:
    """Runs the grid; returns 0 if every point is measured now, 1 if some failed."""
    out = Path(args.out).resolve()
    points = grid(args)
    check_out(out)
    todo = plan(points, out, args.retry_failed)
    if args.dry_run:
        return show(todo, args, out)
    out.mkdir(parents=True, exist_ok=True)
    started, log = time.monotonic(), []
    try:
        run_all(todo, args, out, started, log)
    finally:  # Ctrl-C too: the directory says what this invocation did
        record_invocation(out, args, started, log)
    return summarize(log, time.monotonic() - started)


def run_all(todo, args, out: Path, started: float, log: list[dict]) -> None:
    durations = []  # of measured points: a usage error fails in seconds and says nothing of the rest
    left = sum(1 for _, skip in todo if skip is None)
    for i, (point, skip) in enumerate(todo, 1):
        if skip:
            print(f"[{i}/{len(todo)}] {point.name}: skipped, {skip}", flush=True)
            log.append({"name": point.name, "status": "skipped", "why": skip})
            continue
        print(progress(i, len(todo), point, started, durations, left), flush=True)
        result = run_point(point, args, out)
        left -= 1
        if result["status"] == "measured":
            durations.append(result["seconds"])
        print(f"    {result['status']} in {result['seconds']:.0f} s"
              + (f": {result['reason']}" if result["status"] == "failed" else ""), flush=True)
        log.append({"name": point.name, **result})


def check_out(out: Path) -> None:
    """The suite refuses a JSON under results/ from a tree that differs from its commit: say so
    once, before any point, rather than at every point."""
    results = REPO / "results"
    if results != out and results not in out.parents:
        return
    changed = changed_files(REPO)
    if changed is None or changed:
        raise SystemExit(f"sweep: --out {out} is under results/, which takes runs from a clean, committed "
                         f"tree only ({len(changed or [])} tracked file(s) differ): write it elsewhere")


def show(todo, args, out: Path) -> int:
    for i, (point, skip) in enumerate(todo, 1):
        what = f"skip ({skip})" if skip else " ".join(command(point, args, out / f"{point.name}.json"))
        print(f"[{i}/{len(todo)}] {point.name}: {what}")
    print(f"{len(todo)} points, {sum(1 for _, s in todo if s is None)} to run")
    return 0


def record_invocation(out: Path, args, started: float, log: list[dict]) -> None:
    """sweep.json: every invocation's command line and what each point did, so the directory
    says how it was made."""
    path = out / INDEX
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError):
        history = {"invocations": []}
    history["invocations"].append({"command": ["python", "-m", "harness.sweep", *args.argv],
                                   "finished": now(), "wall_s": round(time.monotonic() - started, 1),
                                   "points": log})
    history["commit_info"] = points_commit(out)
    write_json(path, history)


def points_commit(out: Path) -> dict:
    """The commit the folder's measured points ran at, from their own JSON (pytest-benchmark's
    commit_info): one commit, clean, or dirty=None where they differ or none is there yet."""
    infos = []
    for f in point_files(out):
        try:
            infos.append(json.loads(f.read_text())["commit_info"])
        except (OSError, ValueError, KeyError):
            continue
    ids = {i.get("id") for i in infos}
    if len(ids) == 1 and all(i.get("dirty") is False for i in infos):
        return {"id": ids.pop(), "dirty": False, "from": f"the {len(infos)} points' JSON"}
    return {"id": None, "dirty": None, "from": f"the {len(infos)} points' JSON: {len(ids)} commits, or a dirty one"}


def summarize(log: list[dict], wall_s: float) -> int:
    counts = {s: sum(1 for e in log if e["status"] == s) for s in ("measured", "failed", "skipped")}
    print(f"sweep: {counts['measured']} measured, {counts['failed']} failed, {counts['skipped']} skipped "
          f"in {clock(wall_s)}", flush=True)
    for e in log:
        if e["status"] == "failed":
            print(f"  FAILED {e['name']}: {e['reason']}")
    return 1 if counts["failed"] else 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for the points' JSON, logs and sweep.json")
    grid_group = ap.add_argument_group("the grid (each axis comma-separated) and what every point runs")
    add_options(lambda key: grid_group, (*AXES, "rounds", "warmup"), many=AXES,
                defaults={"model": "gpt2", "link_gbps": "unshaped", "link_rtt_ms": "0", "rounds": None,
                          "warmup": None},
                helps={"link_gbps": f"link rates in Gbit/s, unshaped, or profiles ({', '.join(PROFILES)}) "
                                    "[unshaped]",
                       "link_rtt_ms": "round trips added to the link, ms; 0: none [0]",
                       "rounds": "measured rounds per cell [the suite's]",
                       "warmup": "warm-up rounds per cell [the suite's]"})
    ap.add_argument("--tests", default="benchmarks", type=lambda t: t.split(","),
                    help="what pytest runs, comma separated: benchmarks/test_cells.py runs the six cells "
                         "and the RPC control without the harness' own checks [benchmarks]")
    ap.add_argument("--point-timeout", type=float, default=3600, help="seconds one point may take [3600]")
    ap.add_argument("--retry-failed", action="store_true", help="retry points that failed as usage errors too")
    ap.add_argument("--dry-run", action="store_true", help="print the points and their commands; run nothing")
    ap.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest arguments for every point")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    if args.pytest_args[:1] == ["--"]:
        args.pytest_args = args.pytest_args[1:]
    before = signal.signal(signal.SIGTERM, _interrupt)  # stop the point's run too, as Ctrl-C does
    try:
        return sweep(args)
    except KeyboardInterrupt:
        print("sweep: interrupted (the point under way is not kept); run it again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, before)  # main() called in-process (tests) leaves it as it was


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
