"""The six cells: every mode x phase a pytest-benchmark case, plus a control of the harness's
own cost. `pytest benchmarks -k decode` runs the three decode cells."""
from __future__ import annotations

import statistics
import time

import pytest

from fixtures.cells import baseline_gate, report_target_misses, report_verdicts
from fixtures.testbed import ENV_KEY
from fixtures.options import suite_options
from harness.compute.modes import MODES
from harness.compute.phase import PHASES
from harness.report.invariants import busy_host_misses, check_cell, target_misses
from harness.report.verdicts import across_cells

CELLS = [(phase, mode) for phase in PHASES for mode in MODES]
IDLE_S = 0.005  # a decode step's length where the run has no local decode cell: within the range
                # of the presets' local decode steps on the GPU cards (docs/evidence.md)
CALLS = 30


def idle_rtt(call, idle_s: float, n: int = CALLS) -> float:
    """The median round trip of call() after idle_s without traffic on either host: idle threads
    and CPUs wake more slowly than back-to-back calls keep them (docs/evidence.md has the CPU
    box's figures)."""
    times = []
    for _ in range(n):
        time.sleep(idle_s)
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_rtt(hold, hold_s: float, n: int = CALLS) -> float:
    """The median round trip of an empty call whose server side stays busy for hold_s (a decode
    step's work), less the time held: a decode step's RPC as it happens, the client waiting on a
    busy server and calling again at once, with no model in it."""
    hold(hold_s)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        held = hold(hold_s)
        times.append(time.perf_counter() - t0 - held)
    return statistics.median(times)


@pytest.mark.cell
@pytest.mark.parametrize("phase,mode", CELLS, ids=[f"{p}-{m}" for p, m in CELLS])
def test_cell(benchmark, make_cell, gap_results, copy_bandwidth, memory_floor, request, phase, mode):
    opts = suite_options(request.config)
    cell = make_cell(mode, phase)
    benchmark.group = phase
    benchmark.pedantic(cell.run_round, setup=cell.setup, teardown=cell.teardown,
                       rounds=cell.cfg.rounds, warmup_rounds=cell.cfg.warmup_rounds)
    assert cell.measured, ("no round was measured: pytest-benchmark is disabled here "
                           "(--benchmark-disable, or xdist's PYTEST_XDIST_* variables in the environment)")
    cell.capture_round()  # where the mode's timed rounds ran without tcpdump
    cell.measure_utilization(opts.util_samples)  # outside the timed rounds
    if MODES[mode].remote:
        cell.dissect()
    info = cell.info()
    first = cell.backend.capture_s() if mode == "local" else {}  # first captures (compilation included), by tokens a step
    if first:
        captured = request.config.stash[ENV_KEY].setdefault("local_capture_s", {})
        captured.update({str(n): s for n, s in first.items() if str(n) not in captured})
    benchmark.extra_info.update(info.to_dict())
    gap_results[info.name] = info
    failures = check_cell(info, gap_results.values()) + baseline_gate(request.config, request.node.name, info)
    assert not failures, "\n".join(failures)
    report_target_misses(target_misses(info) + busy_host_misses(info, gap_results.values()), opts.strict)


@pytest.mark.cell
def test_control_rpc_noop(benchmark, gap_testbed, gap_results, gap_controls, request):
    """What one RPC round trip costs with no work behind it: the floor under every remote step.
    Beside the back-to-back figure, after both hosts idled, and across a server busy for as long
    as this run's local decode step took (a decode step's pattern)."""
    opts = suite_options(request.config)
    worker = gap_testbed.worker(opts.spec, opts.engine_spec)
    benchmark.group = "control"
    proxy = worker.rpc_sync()
    benchmark.pedantic(proxy.noop_remote, rounds=50, warmup_rounds=5)
    local = gap_results.get("decode-local")
    hold_s = (local and local.summary.tpot_s.mean) or IDLE_S
    gap_controls["rpc_noop"] = {"rtt_s": benchmark.stats.stats.median,
                                "rtt_after_idle_s": idle_rtt(proxy.noop_remote, IDLE_S),
                                "idle_s": IDLE_S,
                                "rtt_in_step_s": step_rtt(proxy.hold_remote, hold_s),
                                "hold_s": hold_s}
    benchmark.extra_info.update(gap_controls["rpc_noop"])


@pytest.mark.cell
def test_targets(gap_results, gap_controls, copy_bandwidth, memory_floor, request):
    """The targets that take several cells and the controls, each judged on its interval
    (harness.report.verdicts): sys_simulated's time per token beyond local's against one empty
    round trip + 0.5 ms, and every cell's latency and the decode cells' TPOT at or above their
    floors. A fail fails the run under --gap-strict and warns otherwise; an inconclusive one warns."""
    # copy_bandwidth and memory_floor: asked for so that the run's environment holds them (the floors' inputs)
    verdicts = across_cells(list(gap_results.values()), gap_controls, request.config.stash[ENV_KEY])
    if not verdicts:
        pytest.skip("no target has its inputs here: its cells or the empty-RPC control were deselected")
    report_verdicts(verdicts, suite_options(request.config).strict)
