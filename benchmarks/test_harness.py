"""What the harness itself costs, and whether its baseline is honest. Results go to extra_info;
nothing here asserts a timing (shared machines are noisy: compare ratios from one run)."""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from fixtures.cells import report_verdicts
from fixtures.options import suite_options
from harness.cell import SETTLE_ROUNDS
from harness.compute.baseline import compare, gap_cost
from harness.compute.models import forward_step, load_config, prompt_ids
from harness.compute.phase import run_phase
from harness.report.verdicts import INCONCLUSIVE, of_controls, probe_overhead

PROBE_PAIRS, PROBE_PAIRS_MORE, PROBE_PAIRS_MAX = 15, 10, 45  # alternating pairs: first, added while inconclusive, cap
PROBE_MORE_S = 60.0  # no pairs are added once the control has run this long (a large model's round is seconds)


@pytest.mark.cell
def test_local_loop_vs_generate(benchmark, client_models, gap_controls, request):
    """The local mode's decode loop is no slower than generate() (target: ratio <= 1.05, judged on
    its interval over the repeats); on CUDA generate()'s compiled static-cache step, in a process
    of its own."""
    opts = suite_options(request.config)
    model = client_models("local")
    prompt = prompt_ids(load_config(opts.spec), opts.prompt_len, opts.seed, opts.batch)
    benchmark.group = "baseline"
    result = benchmark.pedantic(compare, args=(model, prompt, opts.steps, opts.engine_spec),
                                kwargs={"spec": opts.spec}, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    gap_controls["local_vs_generate"] = result
    report_verdicts(of_controls({"local_vs_generate": result}), opts.strict)


@pytest.mark.cell
def test_control_local_step_after_gap(benchmark, client_models, gap_controls, request):
    """The local decode step with and without the GPU idle between steps for as long as an empty
    RPC takes in a decode step's pattern (1 ms where the run has no RPC control): what a round
    trip a step costs the GPU's own work, beside what it costs in the RPC (the TPOT check shows
    both)."""
    opts = suite_options(request.config)
    if not opts.resolved_device.startswith("cuda"):
        pytest.skip(f"measures a GPU's wake after idle: the model runs on {opts.resolved_device} here")
    model = client_models("local")
    prompt = prompt_ids(load_config(opts.spec), opts.prompt_len, opts.seed, opts.batch)
    noop = gap_controls.get("rpc_noop") or {}
    gap_s = noop.get("rtt_in_step_s") or noop.get("rtt_after_idle_s") or 1e-3
    benchmark.group = "baseline"
    result = benchmark.pedantic(gap_cost, args=(model, prompt, opts.steps, gap_s, opts.engine_spec),
                                rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    gap_controls["local_gap"] = result


@pytest.mark.cell
def test_control_step_io(benchmark, gap_controls, request):
    """A decode step's [1, 1] id up and token down with no model between: the engine's small
    pinned buffers and one synchronisation, against .to(device) and .tolist()."""
    from harness.compute.staging import step_io_s
    opts = suite_options(request.config)
    if not opts.resolved_device.startswith("cuda"):
        pytest.skip(f"times host<->device copies: the model runs on {opts.resolved_device} here")
    benchmark.group = "control"
    result = benchmark.pedantic(step_io_s, args=(torch.device(opts.resolved_device),), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    gap_controls["step_io"] = result


@pytest.mark.cell
def test_control_empty_forward(benchmark, client_models, request):
    """One token through the model with no cache: the least a forward pass costs here."""
    from transformers import DynamicCache
    model = client_models("local")
    tok = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
    benchmark.group = "control"
    benchmark.pedantic(lambda: forward_step(model, tok, DynamicCache()).sum().item(),
                       rounds=30, warmup_rounds=3)


@pytest.mark.cell
def test_capture_overhead(benchmark, make_cell, gap_controls, request):
    """Naive prefill rounds with the probe (tcpdump, dmon, NVML sampler) on and off, alternating:
    the latency ratio on/off (target <= 1.02: the median over pairs, judged on its interval; pairs
    are added while the interval straddles the target, up to a cap in pairs and in time) and the
    capture analysis' share of a round."""
    opts = suite_options(request.config)
    cell = make_cell("naive", "prefill")
    on, off, share = [], [], []

    def probed():
        r = cell.round()
        on.append(r.result.latency_s)
        share.append((r.analysis_s or 0) / on[-1])

    def bare():
        off.append(run_phase(cell.backend, cell.prompt, "prefill", 1).latency_s)

    def pairs(n: int):
        for i in range(len(on), len(on) + n):  # alternate which goes first, so drift hits both alike
            for f in ((probed, bare) if i % 2 else (bare, probed)):
                f()

    def measure():
        t0 = time.perf_counter()
        bare()  # warm-up, not recorded
        off.clear()
        pairs(max(opts.rounds, PROBE_PAIRS))  # short rounds vary: enough pairs for a steady median
        while (len(on) < PROBE_PAIRS_MAX and time.perf_counter() - t0 < PROBE_MORE_S
               and probe_overhead(ratios()).outcome == INCONCLUSIVE):
            pairs(PROBE_PAIRS_MORE)
    # each pair ran back to back: per-pair ratios cancel slow drift (docs/evidence.md)
    ratios = lambda: [a / b for a, b in zip(on, off)]
    benchmark.group = "control"
    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    verdict = probe_overhead(ratios())
    q1, _, q3 = statistics.quantiles(ratios(), n=4)
    benchmark.extra_info.update({
        "latency_on_s": on, "latency_off_s": off,
        "on_over_off": verdict.figure, "on_over_off_iqr": [q1, q3], "on_over_off_interval": [verdict.low, verdict.high],
        "latency_off_cv": statistics.stdev(off) / statistics.mean(off),
        "analysis_share_median": statistics.median(share)})
    gap_controls["capture_overhead"] = dict(benchmark.extra_info)
    report_verdicts([verdict], opts.strict)


@pytest.mark.cell
def test_capture_cost_per_step(benchmark, make_cell, gap_controls, request):
    """sys_simulated decode rounds with tcpdump and without, alternating: what the capture adds to
    a step of small calls, the reason that mode's timed rounds run without it
    (harness.compute.modes.Mode.captured_while_timed)."""
    opts = suite_options(request.config)
    cell = make_cell("sys_simulated", "decode")
    if not cell.probe.capture_on:
        pytest.skip("no capture in this run (--gap-no-capture, or a loopback link)")
    tpot = {True: [], False: []}

    def one(capture: bool):
        tpot[capture].append(cell.round(capture).result.tpot_s)

    def measure():
        for _ in range(SETTLE_ROUNDS):  # warm-up, as the cell's own (harness.cell says why)
            one(False)
        tpot[False].clear()
        for i in range(max(opts.rounds, 4)):  # alternating, so drift hits both alike
            for capture in ((True, False) if i % 2 else (False, True)):
                one(capture)
    benchmark.group = "control"
    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    on, off = statistics.median(tpot[True]), statistics.median(tpot[False])
    benchmark.extra_info.update({"tpot_captured_s": tpot[True], "tpot_uncaptured_s": tpot[False],
                                 "step_cost_s": on - off})
    gap_controls["capture_step_cost"] = dict(benchmark.extra_info)


@pytest.mark.cell
def test_serialisation_alone(benchmark, client_models, gap_controls, request):
    """torch RPC's own pickler on the naive prefill request (packed weights, prompt, no cache), no
    link and no server: what serialising costs on its own, beside what the time breakdown puts in
    client_ser_s (the call until its first data byte leaves, which also holds TensorPipe's set-up)."""
    from torch.distributed.rpc.internal import _internal_rpc_pickler
    opts = suite_options(request.config)
    sent = (client_models("weights"), prompt_ids(load_config(opts.spec), opts.prompt_len, opts.seed, opts.batch), None)

    def round_trip():
        _internal_rpc_pickler.deserialize(*_internal_rpc_pickler.serialize(sent))
    benchmark.group = "control"
    benchmark.pedantic(round_trip, rounds=20, warmup_rounds=2)
    gap_controls["serialisation"] = {"pickle_round_trip_s": benchmark.stats.stats.median}
    benchmark.extra_info.update(gap_controls["serialisation"])
