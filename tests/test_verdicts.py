"""Verdicts that act: each planted failure fails its cell, each missed target warns, and
--gap-strict turns the warnings into failures; the GPU gate compares only valid dmon windows; the
gap table's two ratios; results/README.md regenerates byte-identical from the JSONs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fixtures.cells import HarnessTargetMissed, report_target_misses, report_verdicts
from harness.compute.modes import MODES
from harness.measure.payload import HEADER_BYTES, Shape, cell_payload
from harness.measure.results import CellContext, CellInfo, CellSummary
from harness.report.analysis import analyse_round
from harness.report.catalog import catalog
from harness.report.floors import cell_floor, floor_rows, memory_rows
from harness.report.gate import regressions
from harness.report.invariants import check_cell, target_misses
from harness.report.tables import gap_rows

REPO = Path(__file__).resolve().parent.parent
# a small model's shape: 1 MB of weights, KV 2 layers x 2 x 1 head x 8 dims x 4 B = 128 B a token
SHAPE = Shape(weights_bytes=1_000_000, weights_listed_bytes=1_000_000, layers=2, kv_heads=1, head_dim=8,
              vocab=100, elem_bytes=4)
PROMPT, STEPS = 16, 4
FRAMING = 200.0  # RPC framing bytes per call


def round_record(mode: str, phase: str, *, extra_wire: int = 0, tokens=(1, 2, 3), drops=0, latency_s=0.5,
                 gpu_sm_pct=None, rpc_s=0.4, analysis_s=0.001, warmup=False) -> dict:
    """One round as the cell records it, its wire bytes exactly what the payload model predicts
    (plus extra_wire); times chosen so that the RPC path's rate is easy to compute."""
    payload = cell_payload(SHAPE, MODES[mode], phase, PROMPT, STEPS)
    packets = (payload.total // 1448 + 2 * payload.calls) if MODES[mode].remote else 0
    overhead = packets * HEADER_BYTES + payload.calls * FRAMING
    tx = payload.tx_bytes + int(overhead / 2) + extra_wire
    rx = payload.rx_bytes + int(overhead / 2)
    return {"warmup": warmup, "tokens": list(tokens), "latency_s": latency_s, "ttft_s": 0.1, "tpot_s": None,
            "step_times_s": [], "payload_tx_bytes": payload.tx_bytes, "payload_rx_bytes": payload.rx_bytes,
            "calls": payload.calls, "rpc_s": rpc_s if payload.calls else 0.0, "server_s": {"compute_s": 0.01},
            "call_stamps": [], "client_s": 0.0, "timeline": None, "analysis_s": analysis_s,
            "link_tx_bytes": tx, "link_rx_bytes": rx, "link_packets": packets, "pcap_bytes": tx + rx,
            "pcap_c2g_bytes": tx, "pcap_g2c_bytes": rx, "pcap_packets": packets, "pcap_dropped": drops,
            "pcap_read_s": 0.0, "gpu_sm_pct": gpu_sm_pct, "dmon_samples": 0, "nvml_util_pct": None,
            "nvml_samples": 0, "control_bytes": 0, "clock_offset_s": 0.0, "clock_rtt_s": None}


def cell(mode: str, phase: str = "decode", iperf_gbps: float = 0.1, weight_load=None, rounds=None, **kw) -> CellInfo:
    rounds = rounds or [round_record(mode, phase, **kw) for _ in range(3)]
    ctx = CellContext(cell_payload(SHAPE, MODES[mode], phase, PROMPT, STEPS), FRAMING, iperf_gbps, SHAPE)
    for r in rounds:
        r["analysis"] = analyse_round(r, ctx)
    return CellInfo(mode, phase, STEPS, "synthetic", "fp32", "veth", rounds,
                    CellSummary.of([r for r in rounds if not r["warmup"]]), weight_load)


def three(phase: str = "decode", **naive_kw) -> list[CellInfo]:
    return [cell("local", phase), cell("naive", phase, **naive_kw), cell("sys_simulated", phase)]


def test_a_sound_matrix_passes_every_check():
    infos = three()
    for info in infos:
        assert check_cell(info, infos) == [], info.name
        assert target_misses(info) == [], info.name


def test_token_mismatch_fails_the_cell():
    infos = [cell("local"), cell("naive", tokens=(1, 2, 4)), cell("sys_simulated")]
    failures = check_cell(infos[1], infos)
    assert any("naive and local decode tokens differ" in f for f in failures), failures


def test_tokens_differing_between_rounds_fail_the_cell():
    rounds = [round_record("naive", "decode"), round_record("naive", "decode", tokens=(9, 9, 9)),
              round_record("naive", "decode")]
    info = cell("naive", rounds=rounds)
    assert any("rounds generated different tokens" in f for f in check_cell(info, [info]))


def test_tcpdump_drops_fail_the_cell():
    info = cell("naive", drops=7)
    assert any("tcpdump dropped 21 packets in 3 round(s)" in f for f in check_cell(info, [info]))


def test_naive_not_above_sys_bytes_fails():
    infos = three()
    naive = infos[1]
    flat = replace(naive, summary=replace(naive.summary, link_bytes=infos[2].summary.link_bytes))
    failures = check_cell(flat, [infos[0], flat, infos[2]])
    assert any("the semantic gap vanished" in f for f in failures), failures


def test_closure_outside_tolerance_fails_with_the_numbers():
    info = cell("naive", extra_wire=200_000)  # ~3% of the round's bytes that no model explains
    failures = check_cell(info, [info])
    assert len(failures) == 3 and all("outside the closure tolerance" in f for f in failures), failures
    assert "+3." in failures[0] or "+2." in failures[0], failures[0]
    assert "round 1: wire" in failures[0]


def test_closure_failure_says_why_when_retransmissions_were_seen():
    info = cell("naive", extra_wire=200_000)
    info.rounds[0]["dissection"] = {"retransmission_share": 0.031}
    assert "3.10% of TCP payload was retransmitted" in check_cell(info, [info])[0]


def test_rpc_bound_and_costly_analysis_are_target_misses():
    # the naive round moved ~ (bytes x 8) / rpc_s; an iperf3 of 1000 Gbit/s makes it RPC-bound
    slow = cell("naive", iperf_gbps=1000.0)
    assert any("the RPC path, not the link, set this cell's pace" in m for m in target_misses(slow))
    costly = cell("sys_simulated", analysis_s=0.1)  # 20% of a 0.5 s round
    assert any("reading the capture took 20.0%" in m for m in target_misses(costly))
    assert target_misses(cell("local", analysis_s=0.1)) == [], "local has no capture to read"
    quick = cell("sys_simulated", latency_s=0.004, analysis_s=0.0008)  # 20% of a 4 ms round, in 0.8 ms
    assert target_misses(quick) == [], "a read shorter than tcpdump's own start slows no run"


def test_every_target_fails_where_its_interval_lies_past_it_and_only_there():
    """Planted: each target's figures wholly past its bound fail (and fail a strict run), wholly
    within pass, and straddling it (the noise of a short round) is inconclusive: a warning, never
    a failure, strict or not."""
    from harness.report import verdicts as v
    spread = [0.99, 1.0, 1.01, 1.03, 1.04, 1.05, 0.98, 1.02, 1.06, 1.0, 1.01, 1.03, 0.97, 1.04, 1.02]
    cases = {
        "probe": (v.probe_overhead([1.05, 1.06, 1.07] * 5), v.probe_overhead([1.0, 1.005, 0.995] * 5),
                  v.probe_overhead(spread)),
        "loop vs generate": (v.loop_vs_generate([1.3e-3] * 3, [1.0e-3, 1.01e-3, 0.99e-3]),
                             v.loop_vs_generate([1.0e-3] * 3, [1.0e-3, 1.01e-3, 0.99e-3]),
                             v.loop_vs_generate([0.95e-3, 1.0e-3, 1.12e-3], [1.0e-3] * 3)),
        "TPOT beyond local": (v.tpot_over_rtt([3e-3] * 3, [5e-3, 5.1e-3, 4.9e-3], 1e-3),   # 2 ms > 1.5 ms
                              v.tpot_over_rtt([3e-3] * 3, [4e-3, 4.1e-3, 3.9e-3], 1e-3),   # 1 ms
                              v.tpot_over_rtt([3e-3] * 3, [4.2e-3, 4.5e-3, 4.8e-3], 1e-3)),  # 1.2-1.8 ms
        "floor": (v.over_floor("x", [0.9, 0.91, 0.89], 1.0), v.over_floor("x", [1.1, 1.2, 1.15], 1.0),
                  v.over_floor("x", [0.9, 1.0, 1.1], 1.0)),
    }
    for name, (fail, ok, straddle) in cases.items():
        assert (fail.outcome, ok.outcome, straddle.outcome) == (v.FAIL, v.PASS, v.INCONCLUSIVE), name
        with pytest.raises(pytest.fail.Exception, match="--gap-strict: .*: fail"):
            report_verdicts([fail], strict=True)
        with pytest.warns(HarnessTargetMissed, match="inconclusive"):
            report_verdicts([straddle, ok], strict=True)  # warns, and does not fail
    assert "1.060x (95% interval" in cases["probe"][0].sentence() and "against <= 1.020x" in cases["probe"][0].sentence()
    assert cases["TPOT beyond local"][0].bound == "<= 1.500 ms"


def test_the_run_report_judges_each_target_from_the_json():
    """The table's Targets section: the cross-cell verdicts from the cells' rounds and the empty
    RPC, the controls' from their samples (what a JSON holds: the report regenerates them)."""
    from harness.report.verdicts import of_run

    def with_rounds(mode, tpot_s):
        return cell(mode, rounds=[round_record(mode, "decode") | {"tpot_s": t} for t in tpot_s])
    infos = [with_rounds("local", [3e-3] * 3), with_rounds("naive", [0.2] * 3),
             with_rounds("sys_simulated", [5e-3, 5.1e-3, 4.9e-3])]
    controls = {"rpc_noop": {"rtt_s": 1e-3}, "capture_overhead": {"latency_on_s": [1.0] * 15, "latency_off_s": [1.0] * 15},
                "local_vs_generate": {"tpot_loop_all_s": [1.0] * 3, "tpot_generate_all_s": [1.0] * 3}}
    got = {x.check.split(" ÷")[0].split(",")[0]: x.outcome
           for x in of_run(infos, controls, {"memory_floor": {"floor_s": 2e-3}})}
    assert got == {"the probe (tcpdump": "pass", "local loop": "pass", "sys_simulated TPOT − local TPOT": "fail",
                   "decode-local latency": "pass", "decode-naive latency": "pass",
                   "decode-sys_simulated latency": "pass", "decode-local TPOT": "pass",
                   "decode-sys_simulated TPOT": "pass"}, got


def test_strict_turns_target_misses_into_failures():
    with pytest.warns(HarnessTargetMissed, match="RPC path"):
        report_target_misses(["naive: the RPC path ..."], strict=False)
    with pytest.raises(pytest.fail.Exception, match="--gap-strict: naive: the RPC path"):
        report_target_misses(["naive: the RPC path ..."], strict=True)
    report_target_misses([], strict=True)  # nothing missed: nothing raised


def test_gpu_gate_fails_a_planted_utilization_regression():
    base = cell("naive", latency_s=2.0, gpu_sm_pct=60.0).summary
    now = cell("naive", latency_s=2.0, gpu_sm_pct=30.0).summary
    assert any("GPU utilization moved: 30.0% vs baseline 60.0%" in m for m in regressions(now, base, {"gpu": 0.10}))
    assert regressions(base, base, {"gpu": 0.10}) == []


def test_gpu_gate_ignores_rounds_shorter_than_dmons_period():
    """Rounds under dmon's 1 s sample period have no honest average: a short round's reading may
    move without the gate (or the table) taking it for a regression."""
    base = cell("naive", latency_s=0.5, gpu_sm_pct=60.0).summary
    now = cell("naive", latency_s=0.5, gpu_sm_pct=5.0).summary
    assert now.util_dmon_sm_pct.n == 0 and now.gpu_sm_pct.n == 3
    assert regressions(now, base, {"gpu": 0.10}) == []


def test_gap_table_gives_steady_state_and_whole_session_ratios():
    load = {"latency_s": 1.0, "payload_tx_bytes": 1_000_000, "server_s": {},
            "link_tx_bytes": 1_050_000, "link_rx_bytes": 50_000}
    infos = [cell("naive", latency_s=2.0), cell("sys_simulated", latency_s=0.5, weight_load=load)]
    (row,) = gap_rows(infos)
    n, s = (i.summary for i in infos)
    assert row["Bytes ÷, steady state"] == f"{n.link_bytes.mean / s.link_bytes.mean:,.1f}x"
    assert row["Bytes ÷, one session"] == f"{n.link_bytes.mean / (s.link_bytes.mean + 1_100_000):,.1f}x"
    assert row["Latency ÷, steady state"] == "4.0x" and row["Latency ÷, one session"] == "1.3x"


def test_cell_info_round_trips_and_refuses_a_missing_field():
    info = cell("naive")
    back = CellInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert back.summary == info.summary and back.rounds == info.rounds
    d = info.to_dict()
    del d["summary"]["wire_gbps"]
    with pytest.raises(ValueError, match="lacks wire_gbps"):
        CellInfo.from_dict(d)


def test_results_readme_regenerates_byte_identical():
    shallow = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"],
                             capture_output=True, text=True).stdout.strip()
    if shallow != "false":
        pytest.skip("the catalog says whether the harness changed since each run's commit, which a "
                    "shallow clone lacks: run it in a full clone (git fetch --unshallow)")
    assert (REPO / "results" / "README.md").read_text() == catalog(REPO / "results"), \
        "results/README.md differs from its JSON: run python -m harness.report.catalog"


def test_the_catalog_says_whether_the_harness_changed_since_a_run():
    from harness.report.catalog import harness_since
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    first = subprocess.run(["git", "-C", str(REPO), "rev-list", "--max-parents=0", "HEAD"],
                           capture_output=True, text=True).stdout.split()[0]
    tree = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "harness", "fixtures", "benchmarks"])
    since_head, since_first = harness_since(head, REPO), harness_since(first, REPO)
    if tree.returncode == 0:
        assert since_head == "same"
    else:
        assert since_head.startswith("older harness (")
    assert since_first.startswith("older harness (") and since_first.endswith(" files)")
    assert harness_since("0" * 40, REPO) == "unknown"


def test_catalog_refuses_a_run_from_a_dirty_tree(tmp_path):
    dest = tmp_path / "results" / "cpu" / "planted"
    dest.mkdir(parents=True)
    data = {"commit_info": {"id": "0" * 40, "dirty": True}, "machine_info": {}, "benchmarks": []}
    (dest / "planted.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="clean, committed tree"):
        catalog(tmp_path / "results")


def test_suite_refuses_to_write_results_from_a_dirty_tree(tmp_path):
    """A copy of the checkout with one tracked file changed: --benchmark-json under its results/
    is refused before anything starts."""
    if shutil.which("git") is None:
        pytest.fail("git is needed to check a run's provenance")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / "README.md").write_text("changed\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "--benchmark-json=results/cpu/x/x.json"], cwd=clone, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "clean, committed" in proc.stderr and "README.md" in proc.stderr
    assert not (clone / "results" / "cpu" / "x").exists()


def test_floor_arithmetic_on_a_synthetic_cell():
    """Naive's serial floor is wire + bus both ways + the local cell's compute; its overlapped
    floor runs each direction's copy beside its wire time; the wire is the best iperf3 figure;
    sys's is wire + compute + one empty round trip per call; local's is its own compute."""
    infos = three()
    local, naive, sys_ = infos
    compute = 0.2
    local.summary.time["server_compute_s"] = compute
    copy = {"h2d_gbps": 50.0, "d2h_gbps": 25.0}
    env = {"rpc": {"channels": ["mpt_uv"]}, "copy_gbps": copy,
           "link_check": {"iperf3_gbps_1_stream": 2.0, "iperf3_gbps_4_stream": 8.0, "iperf3_gbps_16_stream": 6.0}}
    rows = {r["Mode"]: r for r in floor_rows(infos, {"rpc_noop": {"rtt_s": 0.001}}, env)}
    tx, rx = naive.summary.payload_tx_bytes.mean, naive.summary.payload_rx_bytes.mean
    parts = cell_floor(naive, compute, 8.0, copy, 0.001)
    assert parts["wire in"] == pytest.approx(tx * 8 / 8e9) and parts["wire out"] == pytest.approx(rx * 8 / 8e9)
    assert parts["host→device"] == pytest.approx(tx / 50e9) and parts["device→host"] == pytest.approx(rx / 25e9)
    assert parts["compute"] == compute and parts["round trips"] is None
    serial = sum(v for v in parts.values() if v is not None)
    overlapped = (max(parts["wire in"], parts["host→device"]) + compute
                  + max(parts["wire out"], parts["device→host"]))
    assert overlapped < serial
    assert rows["naive"]["Serial floor (s)"] == f"{serial:.4f}", "the 4-stream figure, the best, sets the wire"
    assert rows["naive"]["Overlapped floor (s)"] == f"{overlapped:.4f}"
    assert rows["naive"]["Measured ÷ overlapped"] == f"{naive.summary.latency_s.mean / overlapped:.2f}"
    assert rows["naive"]["Dominant part"] == "compute"  # 0.2 s against ~5 ms of wire
    s = cell_floor(sys_, compute, 8.0, copy, 0.001)
    assert s["round trips"] == pytest.approx((1 + STEPS) * 0.001) and s["host→device"] is None
    assert rows["local"]["Serial floor (s)"] == rows["local"]["Overlapped floor (s)"] == f"{compute:.4f}"


def test_memory_rows_set_tpot_against_the_floor_and_name_what_is_beyond_it():
    """A decode step of 4 ms whose device span is 3.5 ms, on a 2 ms memory floor: the host costs
    0.5 ms, kernels beyond the weights' stream 1.5 ms, and the row says so."""
    def rounds(mode, phase, span, tpot):
        return [round_record(mode, phase) | {"tpot_s": tpot, "server_s": {"compute_s": 0.01, "gpu_span_s": span}}
                for _ in range(3)]
    prefill = cell("local", "prefill", rounds=rounds("local", "prefill", 0.001, None))
    decode = cell("local", "decode", rounds=rounds("local", "decode", 0.001 + STEPS * 0.0035, 0.004))
    floor = {"floor_s": 0.002, "gemv_chain_s": 0.0025, "device": "cuda:0", "streamed_bytes": 6e9,
             "weights_bytes": 6e9, "read_gbps": 3000.0, "gemv_kernels": 10}
    (row,) = memory_rows([prefill, decode], floor)
    assert (row["TPOT ÷ floor"], row["TPOT ÷ chain"], row["GPU span / step (ms)"]) == ("2.00", "1.60", "3.500")
    assert row["Beyond the floor"] == "kernels beyond the stream: host 0.500 ms, kernels 1.500 ms"
    assert memory_rows([prefill, decode], None) == []


def test_a_batch_scales_ids_logits_and_cache_but_not_weights():
    one = cell_payload(SHAPE, MODES["naive"], "decode", PROMPT, STEPS)
    two = cell_payload(SHAPE, MODES["naive"], "decode", PROMPT, STEPS, batch=2)
    weights = (1 + STEPS) * SHAPE.weights_bytes
    assert two.tx_bytes - weights == 2 * (one.tx_bytes - weights)
    assert two.rx_bytes == 2 * one.rx_bytes and two.calls == one.calls
    sys_one = cell_payload(SHAPE, MODES["sys_simulated"], "decode", PROMPT, STEPS)
    sys_two = cell_payload(SHAPE, MODES["sys_simulated"], "decode", PROMPT, STEPS, batch=2)
    assert (sys_two.tx_bytes, sys_two.rx_bytes) == (2 * sys_one.tx_bytes, 2 * sys_one.rx_bytes)


def test_tpot_row_sets_sys_beyond_local_against_one_round_trip():
    """The harness table's TPOT row: sys_simulated's time per output token less local's, beside
    the empty RPC's round trip (back to back, after idle, across a step's server work) + 0.5 ms."""
    from harness.report.tables import harness_rows

    def with_tpot(mode, tpot_s):
        rounds = [round_record(mode, "decode") | {"tpot_s": tpot_s} for _ in range(3)]
        return cell(mode, rounds=rounds)
    infos = [with_tpot("local", 0.003), with_tpot("naive", 0.2), with_tpot("sys_simulated", 0.0045)]
    noop = {"rtt_s": 0.0007, "rtt_after_idle_s": 0.0012, "idle_s": 0.005}
    (row,) = [r for r in harness_rows(infos, {"rpc_noop": noop}, {}) if "TPOT" in r["Check"]]
    assert row["Figure"] == "1.500 ms (round trip 0.700 ms back to back; after 5 ms idle 1.200 ms)"
    assert row["Target"] == "<= round trip + 0.5 ms = 1.200 ms"
    noop |= {"rtt_in_step_s": 0.0009, "hold_s": 0.003}
    (row,) = [r for r in harness_rows(infos, {"rpc_noop": noop}, {}) if "TPOT" in r["Check"]]
    assert row["Figure"] == ("1.500 ms (round trip 0.700 ms back to back; after 5 ms idle 1.200 ms; "
                             "across 3.00 ms of server work 0.900 ms)")
    assert row["Target"] == "<= round trip + 0.5 ms = 1.200 ms back to back, 1.400 ms across a step"
    assert not [r for r in harness_rows(infos, {}, {}) if "TPOT" in r["Check"]], "no control, no row"


def test_a_capture_round_gives_the_packet_figures_and_the_timed_rounds_the_rest():
    """sys_simulated is timed without tcpdump (Mode.captured_while_timed) and captured in one more
    round: pcap bytes and the capture analysis' share come from that round alone; latency, bytes
    by the counters and the closure from the timed rounds, whatever the capture round took."""
    timed = [round_record("sys_simulated", "decode", latency_s=0.5) | {"pcap_bytes": None, "analysis_s": None}
             for _ in range(3)]
    captured = round_record("sys_simulated", "decode", latency_s=0.9, analysis_s=0.009) | {"timed": False}
    info = cell("sys_simulated", rounds=[*timed, captured])
    s = CellSummary.of(info.measured, None, [captured])
    assert [r["latency_s"] for r in info.measured] == [0.5] * 3, "the capture round is not a timed round"
    assert (s.latency_s.mean, s.latency_s.n) == (0.5, 3)
    assert (s.pcap_bytes.mean, s.pcap_bytes.n) == (captured["pcap_bytes"], 1)
    assert s.analysis_share.mean == pytest.approx(0.01) and s.analysis_share.n == 1
    assert (s.link_bytes.n, s.closure_error.n) == (3, 3)
    plain = CellSummary.of(timed)  # without the capture round nothing packet-level is known
    assert plain.pcap_bytes.n == 0 and plain.analysis_share.n == 0


def test_a_busy_host_is_named_not_measured(recwarn):
    """local and sys_simulated compute the same function, one in the client, one in the worker:
    where their compute times part by more than 1.5x, or local takes longer than local plus an
    RPC beyond their spreads, the later cell warns (fails under --gap-strict) in one line, and the
    table marks both; where they agree, nothing does."""
    from harness.report.invariants import busy_host_misses
    from harness.report.tables import BUSY_MARK, full_report

    def with_compute(mode, compute_s, latency_s):
        rounds = [round_record(mode, "decode", latency_s=latency_s) | {"server_s": {"compute_s": compute_s}}
                  for _ in range(3)]
        return cell(mode, rounds=rounds)
    busy_local, worker = with_compute("local", 0.9, 1.0), with_compute("sys_simulated", 0.3, 0.4)
    misses = busy_host_misses(worker, [busy_local, worker])
    assert len(misses) == 2 and "3.0x apart" in misses[0] and "longer than sys_simulated's" in misses[1]
    assert all("busy host" in m and "\n" not in m for m in misses)
    assert busy_host_misses(busy_local, [busy_local]) == [], "alone, a cell has nothing to agree with"
    report = full_report([busy_local, worker])
    assert report.count(BUSY_MARK.strip()) == 2 + 1, "both latencies marked, and one line saying why"
    calm = with_compute("local", 0.3, 0.35)
    assert busy_host_misses(worker, [calm, worker]) == [] and BUSY_MARK not in full_report([calm, worker])
    with pytest.raises(pytest.fail.Exception, match="--gap-strict: decode: the same forwards"):
        report_target_misses(misses, strict=True)
    report_target_misses(misses, strict=False)
    assert len([w for w in recwarn if issubclass(w.category, HarnessTargetMissed)]) == 2


def test_a_cell_beside_busy_neighbours_says_so():
    """A cell during which other processes took over a quarter of the host's CPUs warns in one
    line, whatever its figures, and the table marks it; a quiet host's cell does not."""
    from dataclasses import replace as with_

    from harness.report.invariants import busy_host_misses
    from harness.report.tables import BUSY_MARK, table_rows
    busy = with_(cell("naive"), host_load={"others_share": 0.6})
    quiet = with_(cell("naive"), host_load={"others_share": 0.1})
    (miss,) = busy_host_misses(busy, [])
    assert "other processes used 60% of the host's CPUs" in miss and "\n" not in miss
    assert busy_host_misses(quiet, []) == [] and busy_host_misses(cell("naive"), []) == []
    assert table_rows([busy])[0]["Latency (s)"].endswith(BUSY_MARK)
    assert not table_rows([quiet])[0]["Latency (s)"].endswith(BUSY_MARK)


def test_the_worker_and_the_local_loop_compile_times_are_rows_of_their_own():
    """Compilation is reported apart from the rounds: the worker's before the cells, the local
    loop's in its cells' warm-up (where inductor's cache on disk serves the second process)."""
    from harness.report.tables import harness_rows
    rows = {r["Check"]: r["Figure"] for r in harness_rows(three(), {}, {}, {"1": 20.8, "128": 5.2}, {"1": 2.0})}
    assert rows["the worker's graphs captured (compiled) before the cells, by tokens a step"] == "1: 20.8 s, 128: 5.2 s"
    assert rows["the local loop's graphs captured (compiled) in its first cells' warm-up, after the worker's, "
                "by tokens a step"] == "1: 2.0 s"
