"""Many clients sharing one GPU worker: the load they put on it and what it yields, as the names
of vLLM's `bench serve` and NVIDIA AIPerf have it. Pure library: no processes, no RPC here; the
benchmark that runs the clients builds on it.

load.py      LoadShape (clients, closed or open loop, burstiness, duration, sessions, seed);
             arrivals(): the open loop's seeded gamma/Poisson start offsets; plan(): which
             sessions each client runs; prompt_ids(): each session's reproducible prompt
metrics.py   RequestRecord: one session's times and tokens (JSON lines); summarize() -> Summary:
             tokens/s, TTFT / TPOT / ITL percentiles, bytes per token, goodput
report.py    the table per mode x clients, and tokens/s and TPOT p99 against clients
"""
