"""run_llm.py and rpc_server.py from the outside: bad input gives exit 2 and one stderr line
naming the problem, and leaves nothing running; the local happy path prints one JSON line."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120
TAG_VAR = "SGAP_TEST_TAG"  # inherited by everything the child starts: attributes leftovers to it


def _env(tag: str) -> dict:
    env = dict(os.environ, **{TAG_VAR: tag})
    env.pop("SGAP_DEVICE", None)
    return env


def tagged_servers(tag: str, since: float) -> list[psutil.Process]:
    """rpc_server.py processes started at or after `since` by the run carrying `tag`.
    (The tag, not just the start time, so that a parallel test's servers don't count.)"""
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if not any("rpc_server.py" in a for a in p.info["cmdline"] or []):
                continue
            if p.info["create_time"] < since - 1:
                continue
            if p.environ().get(TAG_VAR) == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def netns_names() -> set[str]:
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    except FileNotFoundError:
        return set()
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def run_script(script: str, *args: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run script with args; assert afterwards that nothing it started is left. Returns the
    finished process and its pid."""
    tag = uuid.uuid4().hex
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=_env(tag),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{script} {' '.join(args)} ran past {TIMEOUT_S} s\nstderr:\n{err}")
    finally:
        leftovers = tagged_servers(tag, t0)
        for p in leftovers:  # clean up before asserting, so a failure leaves nothing behind
            p.kill()
        stale_ns = f"sgap{proc.pid}" in netns_names()
        if stale_ns:
            subprocess.run(["ip", "netns", "del", f"sgap{proc.pid}"], capture_output=True)
            subprocess.run(["ip", "link", "del", f"sgc{proc.pid}"], capture_output=True)
    assert not leftovers, f"rpc_server.py left running: {[p.pid for p in leftovers]}"
    assert not stale_ns, f"namespace sgap{proc.pid} left behind"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def assert_one_error_line(res: subprocess.CompletedProcess, prog: str, *patterns: str) -> str:
    assert res.returncode == 2, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    # strict: no warnings or tracebacks either, just the one line
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{res.stderr}"
    line = lines[0]
    assert line.startswith(f"{prog}: error:"), line
    for pat in patterns:
        assert re.search(pat, line), f"{pat!r} not in {line!r}"
    assert res.stdout.strip() == "", f"stdout not empty: {res.stdout!r}"
    return line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_INPUT = {
    "unknown-mode": (["--mode", "bogus", "--phase", "decode"],
                     [r"--mode", r"bogus", r"local", r"sys_simulated"]),
    "unknown-phase": (["--mode", "local", "--phase", "bogus"],
                      [r"--phase", r"bogus", r"prefill", r"decode"]),
    "unknown-model": (["--mode", "local", "--phase", "decode", "--gap-model", "nosuch"],
                      [r"unknown model 'nosuch'", r"tiny"]),
    "decode-steps-0": (["--mode", "local", "--phase", "decode", "--gap-steps", "0"],
                       [r"--gap-steps 0\b", r">= 1"]),
    "decode-steps-negative": (["--mode", "local", "--phase", "decode", "--gap-steps", "-3"],
                              [r"--gap-steps -3\b", r">= 1"]),
    "prompt-len-0": (["--mode", "local", "--phase", "prefill", "--gap-prompt-len", "0"],
                     [r"--gap-prompt-len 0\b", r">= 1"]),
    "prompt-too-long": (["--mode", "local", "--phase", "prefill", "--gap-prompt-len", "600"],
                        [r"\b600\b", r"context of 512", r"--gap-prompt-len"]),
    "prompt-plus-decode-too-long": (["--mode", "local", "--phase", "decode", "--gap-prompt-len", "500",
                                     "--gap-steps", "50"],
                                    [r"\b500\b", r"\b51\b", r"context of 512", r"--gap-steps"]),
    # the remote modes validate before they start anything: no namespace, no server
    "naive-prompt-too-long": (["--mode", "naive", "--phase", "prefill", "--gap-prompt-len", "600"],
                              [r"\b600\b", r"context of 512"]),
    "sys-unknown-model": (["--mode", "sys_simulated", "--phase", "decode", "--gap-model", "nosuch"],
                          [r"unknown model 'nosuch'"]),
    "link-rate-0": (["--mode", "naive", "--phase", "prefill", "--gap-link-gbps", "0"],
                    [r"--gap-link-gbps 0", r"> 0"]),
    "link-rate-real-host": (["--mode", "naive", "--phase", "prefill", "--gap-link-gbps", "10",
                             "--gpu_host_ip", "10.213.255.254"], [r"--gap-link-gbps", r"real link"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input(case):
    args, patterns = BAD_INPUT[case]
    res, _ = run_script("run_llm.py", *args)
    assert_one_error_line(res, "run_llm", *patterns)


def test_unreachable_gpu_host():
    port = free_port()
    res, _ = run_script("run_llm.py", "--mode", "naive", "--phase", "prefill", "--gap-model", "tiny",
                        "--gpu_host_ip", "127.0.0.1", "--gap-port", str(port))
    assert_one_error_line(res, "run_llm", r"cannot reach", rf"127\.0\.0\.1:{port}\b",
                          r"rpc_server\.py")


def test_rpc_server_port_in_use():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        res, _ = run_script("rpc_server.py", "--host", "127.0.0.1", "--port", str(port))
    assert_one_error_line(res, "rpc_server", rf"\bport {port}\b", r"in use")


@pytest.mark.parametrize("phase,n_tokens", [("decode", 4), ("prefill", 1)])
def test_local_happy_path(phase, n_tokens):
    res, _ = run_script("run_llm.py", "--mode", "local", "--phase", phase, "--gap-model", "tiny",
                        "--gap-steps", "3")
    assert res.returncode == 0, res.stderr
    assert [l for l in res.stderr.splitlines() if l.strip()] == [], f"stderr:\n{res.stderr}"
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["mode"] == "local" and out["phase"] == phase and out["model"] == "tiny"
    assert len(out["tokens"]) == n_tokens
    assert all(isinstance(t, int) and 0 <= t < 4096 for t in out["tokens"])
    assert len(out["step_times_s"]) == n_tokens - 1
    assert out["steps"] == (3 if phase == "decode" else 0)
