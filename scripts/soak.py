"""Soak: does anything pile up over many runs (issue 14)? GPU memory, host RSS, open fds,
namespaces and processes left behind.

    sudo .venv/bin/python scripts/soak.py [--suite-runs 20] [--sessions 200] [--model tiny]
                                          [--out results/soak.json] [--suite-args="--gap-device cuda"]

1. The benchmark suite run back to back, each as its own pytest process. After each run: its exit
   code and time, the GPU's used memory (NVML, the whole device: a stranded worker would hold
   some), and what the run left: namespaces named after its pid (sgap<pid>) and rpc_server.py /
   tcpdump / iperf3 / nvidia-smi dmon processes that carry the soak's environment tag.
2. In this process, one testbed (one worker) and --sessions sessions per mode, each prefill +
   decode steps + release. After each: the worker's GPU memory (torch: allocated, reserved), its
   host RSS and open fds, its live KV caches, and this process's RSS and open fds.

Writes one JSON (--out) and prints first/last/max of each figure. Runs on the CPU too (the GPU
figures are then null). Needs root, as the suite does (the embedded namespace + veth testbed).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TAG_VAR = "SGAP_SOAK_TAG"  # inherited by everything the soak starts: attributes leftovers to it


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite-runs", type=int, default=20, help="back-to-back suite runs [20]")
    p.add_argument("--sessions", type=int, default=200, help="sessions per mode against one worker [200]")
    p.add_argument("--model", default="tiny", help="preset or local model directory [tiny]")
    p.add_argument("--modes", default="sys_simulated,naive", help="remote modes for the sessions [both]")
    p.add_argument("--steps", type=int, default=5, help="decode steps per session and per suite cell [5]")
    p.add_argument("--prompt-len", type=int, default=32, help="[32]")
    p.add_argument("--suite-args", default="", help="more arguments for each suite run, one string")
    p.add_argument("--suite-timeout", type=float, default=900, help="seconds one suite run may take [900]")
    p.add_argument("--out", default="soak.json", help="the JSON written [soak.json]")
    return p.parse_args(argv)


# -- what is there: processes, namespaces, fds, memory ------------------------------------------

def helper_processes() -> dict[int, tuple[str, str | None]]:
    """pid -> (command line, soak tag) of every rpc_server.py, tcpdump, iperf3 and nvidia-smi
    dmon running."""
    import psutil
    found = {}
    for p in psutil.process_iter(["cmdline", "status"]):
        argv = p.info["cmdline"] or []
        if p.info["status"] == psutil.STATUS_ZOMBIE or not argv:
            continue
        name = Path(argv[0]).name
        if (name in ("tcpdump", "iperf3") or (name == "nvidia-smi" and "dmon" in argv)
                or any(a.endswith("rpc_server.py") for a in argv)):
            try:
                tag = p.environ().get(TAG_VAR)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                tag = None
            found[p.pid] = (" ".join(argv)[:160], tag)
    return found


def namespaces_of(pid: int) -> list[str]:
    """The namespaces harness.testbed.netns names after pid: sgap<pid>, sgap<pid>-<slot>."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [n for n in names if n == f"sgap{pid}" or n.startswith(f"sgap{pid}-")]


def open_fds(pid: int | str = "self") -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def rss_bytes(pid: int | str = "self") -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def gpu_used_bytes() -> int | None:
    """Used memory of GPU 0 as the driver sees it (every process's), or None without NVML."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:  # no driver, no GPU: a CPU machine
        return None


class Leftovers:
    """What the soak's own runs left: helper processes carrying its tag (an environment variable
    everything it starts inherits) and namespaces named after a run's pid, so that others'
    processes on a shared machine don't count. A worker started over ssh does not inherit the
    tag: new_elsewhere counts helpers that appeared since the soak began, whoever started them."""

    def __init__(self):
        self.tag = uuid.uuid4().hex
        os.environ[TAG_VAR] = self.tag
        self.before = set(helper_processes())

    def now(self, pid: int) -> dict:
        procs = helper_processes()
        mine = {p: cmd for p, (cmd, tag) in procs.items() if tag == self.tag}
        return {"namespaces": namespaces_of(pid),
                "processes": [f"{p} {cmd}" for p, cmd in sorted(mine.items())],
                "new_elsewhere": len(set(procs) - self.before - set(mine))}


# -- part 1: the suite, back to back -------------------------------------------------------------

def suite_command(args, basetemp: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
            "--gap-model", args.model, "--gap-steps", str(args.steps), "--gap-prompt-len", str(args.prompt_len),
            "--gap-rounds", "1", "--gap-warmup", "0", "--basetemp", str(basetemp), *shlex.split(args.suite_args)]


def run_suite_once(cmd: list[str], timeout_s: float) -> tuple[int, int | None, str]:
    """(pid, exit code or None past the timeout, output tail). In a session of its own, so that
    SIGKILL for its group, the last resort, reaches only what it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.pid, proc.returncode, out[-2000:]
    except subprocess.TimeoutExpired:
        return proc.pid, None, _stop(proc)[-2000:]
    except BaseException:  # we are being stopped: our terminal's Ctrl-C does not reach its session
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM first: the suite then tears down as on Ctrl-C (fixtures/signals.py)."""
    os.kill(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out or ""


def soak_suite(args, leftovers: Leftovers) -> list[dict]:
    records = []
    with tempfile.TemporaryDirectory(prefix="sgap-soak-") as tmp:
        for i in range(args.suite_runs):
            t0 = time.monotonic()
            pid, rc, tail = run_suite_once(suite_command(args, Path(tmp) / f"run{i}"), args.suite_timeout)
            rec = {"run": i, "rc": rc, "seconds": round(time.monotonic() - t0, 2),
                   "gpu_used_bytes": gpu_used_bytes(), "soak_fds": open_fds(), **leftovers.now(pid)}
            if rc != 0:
                rec["output_tail"] = tail
            records.append(rec)
            print(f"suite run {i + 1}/{args.suite_runs}: rc {rc}, {rec['seconds']:.0f} s, "
                  f"left {len(rec['namespaces'])} namespaces, {len(rec['processes'])} processes", flush=True)
    return records


# -- part 2: many sessions against one worker ------------------------------------------------------

def soak_sessions(args, leftovers: Leftovers) -> tuple[dict, list[dict]]:
    from harness.compute.calls import call
    from harness.compute.models import build_model, load_config, prompt_ids
    from harness.compute.packing import pack
    from harness.compute.phase import run_phase
    from harness.options import SuiteOptions
    from harness.testbed.bed import testbed

    opts = SuiteOptions(model=args.model, prompt_len=args.prompt_len, steps=args.steps).validate()
    prompt = prompt_ids(load_config(opts.spec), opts.prompt_len, opts.seed)
    weights = pack(build_model(opts.spec, "cpu").state_dict())
    records = []
    with testbed(device=opts.device) as bed:
        worker = bed.worker(opts.spec, opts.engine_spec)  # the worker the suite's cells use
        worker_pid = bed.server.proc.pid  # embedded: `ip netns exec` execs the worker in place
        info = {k: v for k, v in call(worker, "stats_remote").items() if k in ("device", "gpu_name", "malloc")}
        records.append(_session_record(worker, worker_pid, "start", -1))
        for mode in args.modes.split(","):
            backend = bed.backend(mode, opts.spec, weights, opts.engine_spec)  # sys_simulated: weights load here, once
            for i in range(args.sessions):
                run_phase(backend, prompt, "decode", opts.steps)  # prefill + steps, then release (end())
                records.append(_session_record(worker, worker_pid, mode, i))
            print(f"{args.sessions} {mode} sessions: worker rss {_mib(records[-1]['worker_rss_bytes'])}, "
                  f"gpu reserved {_mib(records[-1]['gpu_reserved_bytes'])}", flush=True)
    info["left_after_testbed"] = leftovers.now(os.getpid())
    return info, records


def _session_record(worker, worker_pid: int, mode: str, i: int) -> dict:
    from harness.compute.calls import call
    s = call(worker, "stats_remote")
    return {"mode": mode, "session": i, "live_caches": s["sessions"],
            "gpu_allocated_bytes": s["gpu_allocated_bytes"], "gpu_reserved_bytes": s.get("gpu_reserved_bytes"),
            "worker_rss_bytes": s["rss_bytes"], "worker_fds": open_fds(worker_pid),
            "client_rss_bytes": rss_bytes(), "client_fds": open_fds()}


# -- summary ----------------------------------------------------------------------------------------

def first_last_max(records: list[dict], key: str) -> dict | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    if not values:
        return None
    return {"first": values[0], "last": values[-1], "max": max(values)}


def _mib(v) -> str:
    return "n/a" if v is None else f"{v / 2**20:.1f} MiB"


SESSION_FIGURES = ("live_caches", "gpu_allocated_bytes", "gpu_reserved_bytes", "worker_rss_bytes",
                   "worker_fds", "client_rss_bytes", "client_fds")


def summarize(suite: list[dict], sessions: list[dict]) -> dict:
    """Per part (and per mode: a naive session's buffers differ from a sys_simulated one's)."""
    out = {}
    if suite:
        out["suite"] = {"runs": len(suite), "failed": sum(r["rc"] != 0 for r in suite),
                        "runs_leaving_namespaces": sum(bool(r["namespaces"]) for r in suite),
                        "runs_leaving_processes": sum(bool(r["processes"]) for r in suite)}
        out["suite"] |= {key: first_last_max(suite, key) for key in ("seconds", "gpu_used_bytes", "soak_fds", "new_elsewhere")}
    for mode in dict.fromkeys(r["mode"] for r in sessions if r["session"] >= 0):
        mine = [r for r in sessions if r["mode"] == mode]
        out[f"sessions {mode}"] = {"count": len(mine)} | {key: first_last_max(mine, key) for key in SESSION_FIGURES}
    return out


def print_summary(summary: dict) -> None:
    for part, figures in summary.items():
        print(f"{part}:")
        for key, v in figures.items():
            if isinstance(v, dict):
                fmt = _mib if key.endswith("_bytes") else str
                print(f"  {key:24} first {fmt(v['first']):>12}  last {fmt(v['last']):>12}  max {fmt(v['max']):>12}")
            else:
                print(f"  {key:24} {'n/a (no GPU)' if v is None and 'gpu' in key else v}")


def commit_info() -> dict:
    """What ran, as pytest-benchmark records it for the suite: the commit and whether tracked files
    differed from it (results/ takes only runs from a clean tree)."""
    from harness.report.environment import changed_files
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    changed = changed_files(REPO)
    return {"id": head.stdout.strip() or None, "dirty": None if changed is None else bool(changed)}


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, through the testbed's teardown and _stop's
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    leftovers = Leftovers()
    t0 = time.monotonic()
    suite = soak_suite(args, leftovers) if args.suite_runs > 0 else []
    info, sessions = soak_sessions(args, leftovers) if args.sessions > 0 else ({}, [])
    summary = summarize(suite, sessions)
    result = {"commit_info": commit_info(), "args": vars(args), "seconds": round(time.monotonic() - t0, 1),
              "worker": info, "summary": summary, "suite_runs": suite, "sessions": sessions}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print_summary(summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
