"""The suite's plain library (no pytest here; fixtures/ wraps it). Where each concept lives:

compute/   what runs the model, on either host
    models.py     presets with deterministic random weights, building, one forward step
    modes.py      the three modes: MODES table, LocalBackend / NaiveBackend / SysBackend
    worker.py     RemoteWorker, the GPU host's side (stateless and stateful)
    phase.py      run_phase: one measured prefill or decode on any backend
    tokens.py     the greedy next token and step ids, the same function in every mode
    engine.py     how forwards run: eager, static cache, or one CUDA graph per decode step
    staging.py    weights in bulk through pinned memory into parameters that are one buffer
    packing.py    tensors packed one buffer per dtype for the wire; payload byte counting
    calls.py      the client's RPC calls, torch's failures reworded
    hostmem.py    the worker's malloc policy;  timers.py  device-synchronised phase timer
    nvml.py       the worker's NVML utilization sampler (it runs on the GPU host)
    baseline.py   the local loop against transformers' generate()
testbed/   where the GPU host is and how to reach it
    bed.py        testbed(): link + worker up and down together; Testbed.backend()
    netns.py      namespace + veth emulation, shaping;  link.py  Link and its kernel counters
    hosts.py      ssh targets and the GPU host;  launcher.py  starts rpc_server.py;  sshd.py
    rpc.py        torch RPC forced onto TCP over the measured link
measure/   what is recorded around a round
    probe.py      counters, tcpdump, dmon and NVML around one round
    tcpdump.py    the tcpdump process;  pcap.py  the pcap reader (bytes, per-packet arrays)
    dissect.py    Wireshark's TCP analysis (retransmissions, lanes) through tshark/pyshark
    dmon.py       nvidia-smi dmon and its parser
    iperf.py      the link's throughput;  clocks.py  the GPU host's clock offset
    timeline.py   each RPC call's time split by clocks and packets
report/    what the numbers mean and how they are shown
    summary.py    CellInfo / CellSummary: typed results from the cell to the report
    payload_model.py  analytic payload per cell and the closure check
    analysis.py   per-round derived figures;  invariants.py  what every cell must satisfy
    tables.py     the plan's table and the check tables;  plots.py;  gate.py (baseline gate)
    environment.py  machine_info;  __main__.py  `python -m harness.report out.json`
    catalog.py    results/README.md from the runs' JSON
    costmodel/    each cell's latency and bytes from a few fitted components; held-out evaluation
                  (terms, points, predict, fit, evaluate)
    project.py    the plan's A100 + 25 GbE testbed, projected (python -m harness.report.project)
    cli.py        the writers' command-line end
    sweepreport.py  a sweep's README: cells, the cost model's held-out errors, plots
cell.py    one mode x phase cell as pytest-benchmark drives it
sweep.py   `python -m harness.sweep`: one suite run per point of a grid, resumable
options.py the suite's options (also run_llm.py's), validated once;  errors.py  UsageError
"""
