"""Many clients sharing one worker (harness.serve, harness.compute.batcher): the isolation a
shared worker owes its clients, and a smoke run of the clients benchmark as users run it."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from harness.compute.batcher import Batcher, WorkerFull
from harness.compute.models import ModelSpec, build_model
from harness.compute.rows import Rows
from harness.serve.checks import agreement
from harness.serve.load import LoadShape
from harness.serve.run import ServeConfig, run_remote, start_clients
from harness.testbed import netns
from harness.testbed.bed import shared_testbed
from tests.test_suite import REPO, clean_env

needs_root = pytest.mark.skipif(not netns.can_make_namespaces(), reason="the namespace link needs root")


@pytest.fixture(scope="module")
def tiny():
    return build_model(ModelSpec("tiny"), "cpu")


def one_line(e: BaseException) -> str:
    text = str(e).strip("'\"")
    assert "\n" not in text, text
    return text


def test_another_clients_session_is_refused(tiny):
    batcher = Batcher(Rows(tiny, 2, 32))
    try:
        sid = batcher.open("alice")
        token = batcher.prefill(sid, "alice", [1, 2, 3]).wait()
        for attempt in (lambda: batcher.step(sid, "bob", token), lambda: batcher.prefill(sid, "bob", [1]),
                        lambda: batcher.close(sid, "bob")):
            with pytest.raises(PermissionError) as e:
                attempt()
            assert "belongs to another client" in one_line(e.value)
        assert batcher.step(sid, "alice", token).wait() >= 0  # alice's session is untouched
        with pytest.raises(KeyError) as e:
            batcher.step("0" * 32, "alice", token)
        assert "unknown session" in one_line(e.value)
    finally:
        batcher.stop()


def test_full_rows_answer_in_one_line(tiny):
    batcher = Batcher(Rows(tiny, 1, 32))
    try:
        batcher.open("alice")
        with pytest.raises(WorkerFull) as e:
            batcher.open("bob")
        assert one_line(e.value).startswith("worker full: all 1 session rows are in use")
    finally:
        batcher.stop()


def test_an_idle_session_is_freed_by_its_lease_and_the_others_go_on(tiny):
    batcher = Batcher(Rows(tiny, 2, 512), lease_s=0.4)
    try:
        gone = batcher.open("killed")
        batcher.prefill(gone, "killed", [5, 6, 7]).wait()  # then its client goes silent
        sid = batcher.open("alive")
        token = batcher.prefill(sid, "alive", [1, 2, 3]).wait()
        deadline = time.monotonic() + 5.0
        while gone in batcher.sessions and time.monotonic() < deadline:
            token = batcher.step(sid, "alive", token).wait()
        assert gone not in batcher.sessions and batcher.stats()["free_rows"] == 1
        assert batcher.open("new")  # its row serves a new session
    finally:
        batcher.stop()


def test_memory_stays_flat_over_many_sessions(tiny):
    batcher = Batcher(Rows(tiny, 2, 32))
    try:
        buffers = [t.data_ptr() for t in batcher.rows.keys]
        for i in range(200):
            sid = batcher.open(f"client{i % 3}")
            batcher.step(sid, f"client{i % 3}", batcher.prefill(sid, f"client{i % 3}", [i % 50, 1]).wait()).wait()
            batcher.close(sid, f"client{i % 3}")
        stats = batcher.stats()
        assert stats["sessions"] == 0 and stats["free_rows"] == 2
        assert [t.data_ptr() for t in batcher.rows.keys] == buffers  # the same rows, reused
    finally:
        batcher.stop()


@needs_root
def test_a_killed_client_frees_its_row_while_the_others_finish(tmp_path):
    """Three sys_simulated clients; the third is SIGKILLed mid-run. The two others finish with
    their single-client tokens, and within 10 s of the kill the worker holds no session of it."""
    spec, steps, kill_at_s = ModelSpec("tiny"), 60, 2.0
    cfg = ServeConfig("sys_simulated", spec, LoadShape(3, duration_s=kill_at_s + 10.0), 8, steps, slots=3)
    with shared_testbed(3) as bed:
        procs = start_clients(cfg, bed, tmp_path)
        deadline = time.monotonic() + 120
        while not (tmp_path / "client1.jsonl.t0").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the run starts once the lead's set-up is done
        time.sleep(kill_at_s)
        os.kill(procs[2].pid, signal.SIGKILL)
        killed_at = time.time()
        run = run_remote(cfg, bed, tmp_path, procs)
    assert run.procs_rc == [0, 0, -9]
    survivors = [r for r in run.records if r.client in (0, 1)]
    assert survivors and all(r.error is None for r in survivors), [r.error for r in survivors if r.error][:3]
    sample = [r for c in (0, 1) for r in [x for x in survivors if x.client == c][:3]]
    assert not agreement(spec, "cpu", 0, 8, sample).parted
    last = max((json.loads((tmp_path / f"client{k}.jsonl.stats").read_text()) for k in (1, 2)),
               key=lambda s: s["t_s"])
    assert last["t_s"] - killed_at <= 10.5 and last["batcher"]["sessions"] == 0, last


def test_the_clients_benchmark_runs_as_users_run_it(tmp_path):
    """`pytest benchmarks -k clients`, as the README shows it: every mode at each N, summaries in
    the JSON, a line per request beside it (this run's alone, written once the JSON is); the main
    job leaves it out."""
    import subprocess
    import sys
    out = tmp_path / "clients.json"
    out.with_suffix(".requests.jsonl").write_text('{"an earlier run": 1}\n')  # replaced, never joined
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-k", "clients", "-p", "no:xdist",
                           "-p", "no:cacheprovider", "--gap-model", "tiny", "--gap-clients", "1,2",
                           "--gap-steps", "4", "--gap-prompt-len", "8", f"--benchmark-json={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=clean_env(), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    cases = {b["name"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert len(cases) == 6, sorted(cases)
    for name, info in cases.items():
        assert {"tokens_per_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "link_bytes_per_token",
                "goodput_per_s"} <= info["summary"].keys(), name
        assert info["tokens_agree_share"] == 1.0, name
    naive, sys_ = (cases[f"test_clients[N2-{m}]"]["summary"]["link_bytes_per_token"] for m in ("naive", "sys_simulated"))
    assert naive > 100 * sys_, (naive, sys_)
    lines = out.with_suffix(".requests.jsonl").read_text().splitlines()
    assert len(lines) == sum(c["clients"] * 2 for c in cases.values())
    assert "many clients, one worker" in proc.stdout


def test_the_batcher_makes_its_rows_on_its_own_thread(tiny):
    """Given a function, the batcher calls it on its thread (where every step of the model then
    runs), and a failure there is the constructor's own."""
    import threading
    made_on = []

    def make():
        made_on.append(threading.current_thread().name)
        return Rows(tiny, 1, 32)
    batcher = Batcher(make)
    try:
        sid = batcher.open("alice")
        assert isinstance(batcher.prefill(sid, "alice", [1, 2, 3]).wait(), int)
        assert made_on == [batcher.thread.name] and batcher.thread is not threading.main_thread()
    finally:
        batcher.stop()
    with pytest.raises(ValueError, match="no rows here"):
        Batcher(lambda: (_ for _ in ()).throw(ValueError("no rows here")))
