"""The suite's plain library (no pytest here; fixtures/ wraps it). Rooms that import one way
(tests/test_layers.py checks it): testbed from compute; measure from testbed and compute; report
from measure and compute; predict from report, measure and compute; serve from report, measure,
testbed and compute; the modules at the end sit on top and import any room.

compute/   what runs the model, on either host
    models.py     presets with deterministic random weights, building, one forward step
    modes.py      the three modes: MODES table, LocalBackend / NaiveBackend / SysBackend
    worker.py     RemoteWorker, the GPU host's side (stateless and stateful)
    phase.py      run_phase: one measured prefill or decode on any Backend
    tokens.py     the greedy next token and step ids, the same function in every mode
    engine.py     how forwards run: transformers' model eagerly or captured, or the compact code
    compact.py    compact Llama and GPT-2 decoder code over a static cache (the compact engine)
    rows.py       one batched static cache, a row per session, each at its own position
    batcher.py    many clients' sessions on one model, their decode steps batched
    floor.py      the GPU's memory floor under a decode step, measured
    staging.py    weights in bulk through pinned memory into parameters that are one buffer;
                  small transfers through persistent pinned buffers
    packing.py    tensors packed one buffer per dtype for the wire, sent in chunks; payload bytes
    calls.py      the client's RPC calls, torch's failures reworded
    hostmem.py    the processes' malloc policy;  cpuidle.py  the low-latency idle request
    timers.py     device-synchronised phase timer;  threads.py  host threads for the model
    nvml.py       the worker's NVML utilization sampler (it runs on the GPU host)
    baseline.py   the local loop against transformers' generate();  peer.py  generate() timed alone
testbed/   where the GPU host is and how to reach it
    bed.py        testbed(): link + worker up and down together; Testbed.backend()
    netns.py      namespace + veth emulation, shaping;  link.py  Link and its kernel counters
    delayline.py  the userspace delay line where the kernel has no netem
    hosts.py      ssh targets and the GPU host;  launcher.py  starts rpc_server.py;  sshd.py
    rpc.py        torch RPC forced onto TCP over the measured link
measure/   what is recorded around a round, and the typed results it becomes
    probe.py      counters, tcpdump, dmon and NVML around one round
    tcpdump.py    the tcpdump process;  pcap.py  the fast pcap reader;  pcap_records.py  the format
    dissect.py    Wireshark's TCP analysis (retransmissions, lanes) through tshark/pyshark
    dmon.py       nvidia-smi dmon and its parser
    iperf.py      the link's throughput;  clocks.py  the GPU host's clock offset
    timeline.py   each RPC call's time split by clocks and packets
    payload.py    the analytic payload per cell and the closure check
    results.py    CellContext, CellInfo / CellSummary / Stat: typed results from the cell to the
                  report and the JSON; a sweep's point files
report/    what the numbers mean and how they are shown
    analysis.py   per-round derived figures;  invariants.py  what every cell must satisfy
    tables.py     the plan's table and the check tables;  floors.py  every cell beside its floor
    plots.py      the plots and their shared style;  gate.py  the baseline gate
    environment.py  machine_info;  __main__.py  `python -m harness.report out.json`
    catalog.py    results/README.md from the runs' JSON;  readme.py  the README's generated table
    cli.py        the writers' command-line end;  units.py
predict/   figures no run measured, from runs that were
    costmodel/    each cell's latency and bytes from a few fitted components; held-out evaluation
    sweepreport.py  a sweep's README: cells, the cost model's held-out errors, plots
    extrapolate.py  more decode steps than a run measured;  project.py  the plan's testbed
    plantestbed.py  the testbed's constants and the projection procedure;  projcheck.py  its checks
    projpages.py / projassume.py / projcalib.py  the projected pages and calibration.md
serve/     many clients sharing one GPU worker (vLLM's `bench serve`, AIPerf): load and metrics
    load.py       LoadShape: closed or open loop (gamma arrivals); each client's sessions, prompts
    metrics.py    RequestRecord per session; summarize: tokens/s, TTFT/TPOT/ITL percentiles, goodput
    report.py     the table per mode x clients; tokens/s and TPOT p99 against clients
    sessions.py   one client's sessions in each mode;  client.py  one client process
    run.py        N clients against one worker (started for them), what each recorded
    checks.py     every session's tokens against the one-session local loop's
cell.py    one mode x phase cell as pytest-benchmark drives it
sweep.py   `python -m harness.sweep`: one suite run per point of a grid, resumable
options.py the suite's options (also run_llm.py's), validated once;  errors.py  UsageError
"""
