"""A smoke run of the benchmark suite on the tiny model, as users run it: a pytest subprocess.
Checks the JSON result store, the report, the -k selection, the bytes gate and the xdist guard."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS, PROMPT_LEN = 5, 32
SMOKE = ["--gap-model", "tiny", "--gap-steps", str(STEPS), "--gap-rounds", "3", "--gap-prompt-len", str(PROMPT_LEN)]


def run_suite(*args, timeout=600):
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:xdist", "-p", "no:cacheprovider",
           *SMOKE, *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=clean_env())


def clean_env() -> dict:
    """Our environment without xdist's worker variables: a child pytest that inherits them
    believes it is an xdist worker, and pytest-benchmark then disables itself."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "out.json"
    proc = run_suite(f"--benchmark-json={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc, json.loads(out.read_text()), out


def cells(data):
    return {b["name"]: b for b in data["benchmarks"] if "summary" in b["extra_info"]}


def test_six_cells_with_rounds_bytes_and_utilization(smoke):
    proc, data, _ = smoke
    found = cells(data)
    assert len(found) == 6, sorted(found)
    for name, bench in found.items():
        rounds = [r for r in bench["extra_info"]["rounds"] if not r["warmup"] and r["timed"]]
        assert len(rounds) == 3 and bench["stats"]["rounds"] == 3, name
        # sys_simulated is timed without tcpdump and captured in one more round (Mode.captured_while_timed)
        untimed = [r for r in bench["extra_info"]["rounds"] if not r["timed"]]
        assert len(untimed) == ("sys_simulated" in name), (name, len(untimed))
        assert all(r["pcap_bytes"] is None for r in rounds) == ("sys_simulated" in name), name
        for r in rounds:
            assert {"link_tx_bytes", "link_rx_bytes", "pcap_bytes", "payload_tx_bytes",
                    "gpu_sm_pct", "ttft_s", "tokens"} <= r.keys()
    assert "Avg. GPU Utilization (%)" in proc.stdout, "the suite prints the plan's table at the end"
    info = data["machine_info"]["semantic_gap"]
    assert info["versions"]["torch"]
    # the transport TensorPipe used, as the wire shows it (not as our settings say): the uv (TCP)
    # transport puts every payload byte into the capture of the link's TCP traffic; shared memory
    # or cross-memory-attach would leave only control messages there (harness/testbed/rpc.py)
    for name, bench in found.items():
        for r in (r for r in bench["extra_info"]["rounds"]
                  if not r["warmup"] and "local" not in name and r["pcap_bytes"] is not None):
            assert r["pcap_c2g_bytes"] >= r["payload_tx_bytes"] > 0, (name, r["pcap_c2g_bytes"], r["payload_tx_bytes"])
            assert r["pcap_g2c_bytes"] >= r["payload_rx_bytes"] > 0, (name, r["pcap_g2c_bytes"], r["payload_rx_bytes"])
    # measured environment fields: RPC framing from no-op round trips (~760 B on this box), iperf3
    # over the link, the worker's own report of its host-memory policy (the default, keep)
    assert 100 < info["rpc_framing_bytes_per_call"] < 5_000, info["rpc_framing_bytes_per_call"]
    # an empty call's whole bytes: the framing plus a header for each of its packets (request, reply, ACKs)
    assert info["rpc_noop_packets_per_call"] >= 2, info["rpc_noop_packets_per_call"]
    assert info["rpc_noop_wire_bytes_per_call"] > info["rpc_framing_bytes_per_call"], info
    assert all(info["link_check"][f"iperf3_gbps_{n}_stream"] > 0 for n in (1, 4, 16)), info["link_check"]
    assert info["worker_malloc"] == info["client_malloc"] == "keep", (info["worker_malloc"], info["client_malloc"])
    # both processes give the model the same host threads: on a CPU device, torch's default
    assert info["threads"]["client"] == info["threads"]["gpu_host"] >= 1, info["threads"]
    # naive prefill, a call a round, warms up until its worker's receive buffer has settled (2 calls);
    # the stateful cells warm up for 2 rounds (harness.cell.SETTLE_ROUNDS)
    warm = {name: sum(r["warmup"] for r in bench["extra_info"]["rounds"]) for name, bench in found.items()}
    assert warm["test_cell[prefill-naive]"] == 2 and warm["test_cell[decode-naive]"] == 1, warm
    assert all(n == 2 for name, n in warm.items() if "naive" not in name), warm


def test_rpc_control_measures_a_decode_steps_pattern(smoke):
    """The empty RPC's round trip across a server held busy for this run's local decode step,
    less the time held: positive, and held for the local cell's own time per token."""
    _, data, _ = smoke
    (noop,) = [b for b in data["benchmarks"] if b["name"] == "test_control_rpc_noop"]
    local = cells(data)["test_cell[decode-local]"]["extra_info"]["summary"]
    assert noop["extra_info"]["hold_s"] == local["tpot_s"]["mean"], (noop["extra_info"], local["tpot_s"])
    assert 0 < noop["extra_info"]["rtt_in_step_s"] < 1, noop["extra_info"]


def test_semantic_gap_shows_in_bytes(smoke):
    """The link bytes against the analytic payload (harness.measure.payload: from the model's
    shape alone, not from what the run counted). Each round of a remote cell carries its payload
    in each direction plus at most 5% + 64 KB of headers, RPC framing and ACKs (measured here:
    0.3% + 7 KB), so sys shipping the weights, or naive shipping GPT-2's tied weights twice or
    not the KV cache, fails; naive's excess over sys is the weights and KV cache the model
    predicts, within 8%; local moves no payload."""
    from harness.compute.models import ModelSpec, load_config
    from harness.compute.modes import MODES
    from harness.measure.payload import cell_payload, shape_of
    data = smoke[1]
    spec = ModelSpec("tiny", data["machine_info"]["semantic_gap"]["dtype"])
    shape = shape_of(load_config(spec), spec.torch_dtype)
    found = cells(data)
    for phase in ("prefill", "decode"):
        mean = {}
        for mode in MODES:
            name = f"test_cell[{phase}-{mode}]"
            p = cell_payload(shape, MODES[mode], phase, PROMPT_LEN, STEPS)
            mean[mode] = (found[name]["extra_info"]["summary"]["link_bytes"]["mean"], p.total)
            for r in (r for r in found[name]["extra_info"]["rounds"] if not r["warmup"]):
                tx, rx = r["link_tx_bytes"], r["link_rx_bytes"]
                assert tx >= p.tx_bytes and rx >= p.rx_bytes, (name, (tx, rx), p)
                assert tx + rx <= 1.05 * p.total + 65_536, (name, tx + rx, p)
        local_link, local_payload = mean["local"]
        assert local_payload == 0 and local_link < 10_000, (phase, mean)
        gap = (mean["naive"][0] - mean["sys_simulated"][0]) / (mean["naive"][1] - mean["sys_simulated"][1])
        assert 1.0 <= gap <= 1.08, (phase, gap, mean)


def test_time_breakdown_is_measured_and_covers_the_round(smoke):
    """Every part comes from a clock or the capture; together they cover each captured round's
    wall-clock (the issue's 5%), and none is negative beyond clock resolution (event order is
    consistent). The summary's time breakdown is complete for every cell."""
    for name, bench in cells(smoke[1]).items():
        # the rounds with a capture: sys_simulated's is a round of its own after the timed ones
        for r in (r for r in bench["extra_info"]["rounds"] if not r["warmup"] and r["pcap_bytes"] is not None):
            a = r["analysis"]
            assert a["time_complete"], (name, a["time"], r["timeline"])
            assert 0.95 <= a["time_parts_sum_ratio"] <= 1.05, (name, a["time_parts_sum_ratio"], a["time"])
            assert min(a["time"].values()) > -1e-3, (name, a["time"])
            if "local" not in name:
                assert r["timeline"]["calls_placed"] == r["calls"], (name, r["timeline"])
                assert a["time"]["wire_tx_s"] > 0 and a["time"]["wire_rx_s"] >= 0, (name, a["time"])
        assert bench["extra_info"]["summary"]["time_complete"], name


def test_report_writes_table_csv_and_plots(smoke, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.report", str(smoke[2]), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| decode | naive |" in proc.stdout
    for check in ("iperf3 Gbit/s (1/4/16 streams; unshaped)", "naive RPC path ÷ iperf3", "latency probe on ÷ off",
                  "local loop ÷ generate()", "payload closure error", "time parts ÷ wall-clock"):
        assert check in proc.stdout, f"harness check {check!r} missing from the report"
    for name in ("table.md", "table.csv", "link_bytes.png", "latency_s.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_k_decode_runs_exactly_the_three_decode_cells(tmp_path):
    """... and --gap-rounds-stateful measures the stateful modes' cells that many times, naive's not."""
    out = tmp_path / "decode.json"
    proc = run_suite("-k", "decode", f"--benchmark-json={out}", "--gap-rounds", "1", "--gap-warmup", "0",
                     "--gap-rounds-stateful", "2")
    assert proc.returncode == 0, proc.stdout[-3000:]
    rounds = {b["name"]: b["stats"]["rounds"] for b in json.loads(out.read_text())["benchmarks"]}
    assert rounds == {"test_cell[decode-local]": 2, "test_cell[decode-naive]": 1,
                      "test_cell[decode-sys_simulated]": 2}, rounds


def test_bytes_gate_fails_on_planted_regression(smoke, tmp_path):
    """A baseline that moved half the bytes: today's run is a +100% regression and must fail."""
    baseline = copy.deepcopy(smoke[1])
    for bench in baseline["benchmarks"]:
        summary = bench["extra_info"].get("summary")
        if summary:
            summary["link_bytes"]["mean"] /= 2
    storage = tmp_path / "storage" / "planted"
    storage.mkdir(parents=True)
    (storage / "0001_planted.json").write_text(json.dumps(baseline))
    proc = run_suite("-k", "prefill-naive", f"--benchmark-compare={storage / '0001_planted.json'}",
                     "--gap-compare-fail=bytes:5%",
                     "--gap-rounds", "1", "--gap-warmup", "0")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "bytes regressed" in proc.stdout and "vs baseline" in proc.stdout, proc.stdout[-3000:]


def test_bytes_gate_passes_against_itself(smoke, tmp_path):
    storage = tmp_path / "storage" / "same"
    storage.mkdir(parents=True)
    (storage / "0001_same.json").write_text(json.dumps(smoke[1]))
    proc = run_suite("-k", "prefill-naive", f"--benchmark-compare={storage / '0001_same.json'}",
                     "--gap-compare-fail=bytes:5%,gpu:10%",
                     "--gap-rounds", "1", "--gap-warmup", "0")
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_a_baseline_of_another_setup_is_refused(smoke, tmp_path):
    """The gate compares like with like: a baseline that ran another engine fails every gated cell
    in one line saying what differs, whatever its bytes."""
    baseline = copy.deepcopy(smoke[1])
    baseline["machine_info"]["semantic_gap"]["engine"] = "graphs"
    storage = tmp_path / "storage" / "other"
    storage.mkdir(parents=True)
    (storage / "0001_other.json").write_text(json.dumps(baseline))
    proc = run_suite("-k", "prefill-naive", f"--benchmark-compare={storage / '0001_other.json'}",
                     "--gap-compare-fail=bytes:5%", "--gap-rounds", "1", "--gap-warmup", "0")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "the baseline ran engine graphs, this run engine eager" in proc.stdout, proc.stdout[-3000:]


def test_sessions_run_as_fresh_runs_and_their_spread_is_reported(tmp_path):
    """--gap-sessions 2: a second pytest run after this one's cells; each cell carries both
    sessions' means in the JSON, and the table their spread beside the rounds' own."""
    out = tmp_path / "sessions.json"
    proc = run_suite("-k", "prefill-sys", f"--benchmark-json={out}", "--gap-sessions", "2",
                     "--gap-rounds", "2", "--gap-warmup", "0")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "session 2: exit 0" in proc.stdout, proc.stdout[-3000:]
    data = json.loads(out.read_text())
    sessions = cells(data)["test_cell[prefill-sys_simulated]"]["extra_info"]["sessions"]
    assert len(sessions) == 2 and all(s["rounds"] == 2 and s["latency_s"] > 0 for s in sessions), sessions
    assert data["machine_info"]["semantic_gap"]["sessions"]["asked"] == 2
    assert "Latency over sessions (s)" in proc.stdout and "(2 sessions)" in proc.stdout, proc.stdout[-3000:]


def test_cells_refuse_to_run_concurrently():
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-n", "2", "-p", "no:cacheprovider", *SMOKE]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=clean_env())
    assert proc.returncode != 0
    assert "must never run concurrently" in proc.stdout + proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["--gap-steps", "0"], "--gap-steps 0 must be >= 1"),
    (["--gap-threads", "0"], "--gap-threads 0 must be >= 1"),
    (["--gap-rounds-stateful", "0"], "--gap-rounds-stateful 0 must be >= 1"),
    (["--gap-engine", "graphs-all"], "graphs-all captures CUDA graphs: it needs a CUDA device"),
    (["--gap-model", "nosuch"], "unknown model 'nosuch'"),
    (["--gap-compare-fail", "speed:5"], "expected METRIC:N%"),
    (["--gap-prompt-len", "600"], "exceeds tiny's context of 512"),
    (["--gap-link-gbps", "-1"], "--gap-link-gbps -1.0 must be > 0"),
    (["--gap-link-gbps", "10", "--gap-gpu-addr", "10.213.255.254"], "shapes the embedded link only"),
    (["--gap-sessions", "0"], "--gap-sessions 0 must be >= 1"),
    (["--gap-sessions", "2", "--gap-gpu-addr", "10.213.255.254"], "alone reaches one that someone else started"),
])
def test_bad_options_fail_at_parse_time(args, needle):
    proc = run_suite(*args, timeout=120)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage-error exit code
    assert needle in proc.stderr
