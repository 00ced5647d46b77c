"""N clients against one worker, in one mode: the run and what it recorded.

local: the batched loop (harness.compute.batcher) in this process, one thread per client, no
network: the upper bound. naive and sys_simulated: N client processes (harness.serve.client) on
this host, on the client's side of the link, against a worker started for them
(harness.testbed.bed.shared_testbed). The link's bytes are its kernel counters from the common
start (read by the lead client once set-up is done: sys_simulated's one weight load is apart) to
the last client's exit.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.compute.models import ModelSpec, build_model, load_config
from harness.errors import UsageError
from harness.serve.load import LoadShape, plan
from harness.serve.metrics import RequestRecord
from harness.testbed.launcher import REPO

SETUP_S = 300.0  # start-up and set-up (a model's weights over the link once) before the duration runs


@dataclass(frozen=True)
class ServeConfig:
    mode: str
    spec: ModelSpec
    shape: LoadShape
    prompt_len: int
    steps: int
    slots: int                        # rows of the batched cache (sys_simulated, local)
    lease_s: float = 5.0
    device: str | None = None         # the worker's (remote) or this process's (local) device

    @property
    def max_len(self) -> int:
        return self.prompt_len + self.steps + 1


@dataclass
class ServeRun:
    mode: str
    clients: int
    records: list[RequestRecord]
    link_bytes: int | None            # both ways, from the common start; None: no link (local)
    wall_s: float
    procs_rc: list[int] = field(default_factory=list)


def run_local(cfg: ServeConfig) -> ServeRun:
    """The clients as threads beside the batched loop on this host's device."""
    from harness.compute.batcher import Batcher
    from harness.compute.models import default_device
    from harness.compute.rows import Rows
    from harness.serve.client import run_plan, warm_up
    from harness.serve.sessions import LocalSessions

    # the model is made on the batcher's thread, which runs all its work (harness.compute.batcher)
    batcher = Batcher(lambda: Rows(build_model(cfg.spec, cfg.device or default_device()), cfg.slots, cfg.max_len),
                      cfg.lease_s)
    vocab, plans = load_config(cfg.spec).vocab_size, plan(cfg.shape)
    for c in range(cfg.shape.clients):
        warm_up(LocalSessions(batcher, f"client{c}"), cfg.prompt_len, vocab)
    t0 = time.time() + 0.05

    def client(c: int) -> list[RequestRecord]:
        return run_plan(LocalSessions(batcher, f"client{c}"), plans[c], cfg.prompt_len, cfg.steps, vocab, t0,
                        cfg.shape.duration_s)
    try:
        with ThreadPoolExecutor(cfg.shape.clients) as pool:
            records = [r for rs in pool.map(client, range(cfg.shape.clients)) for r in rs]
    finally:
        batcher.stop()
    return ServeRun("local", cfg.shape.clients, records, None, time.time() - t0)


def start_clients(cfg: ServeConfig, bed, workdir: Path) -> list[subprocess.Popen]:
    """One process per client, each with its config file in workdir; killed by pid in stop_clients."""
    procs = []
    for rank in range(1, cfg.shape.clients + 1):
        path = workdir / f"client{rank}.json"
        path.write_text(json.dumps({
            "rank": rank, "clients": cfg.shape.clients, "host": bed.cfg.host, "port": bed.cfg.port,
            "channel": bed.cfg.channel, "timeout_s": bed.cfg.timeout_s, "iface": bed.link.client_iface,
            "mode": cfg.mode, "model": asdict(cfg.spec), "shape": asdict(cfg.shape), "prompt_len": cfg.prompt_len,
            "steps": cfg.steps, "slots": cfg.slots, "lease_s": cfg.lease_s, "device": cfg.device,
            "out": str(workdir / f"client{rank}.jsonl")}))
        with open(workdir / f"client{rank}.err", "w") as err:  # the child keeps its own copy
            procs.append(subprocess.Popen([sys.executable, "-m", "harness.serve.client", str(path)], cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=err, start_new_session=True))
    return procs


def stop_clients(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def run_remote(cfg: ServeConfig, bed, workdir: Path, procs: list[subprocess.Popen] | None = None) -> ServeRun:
    """Start the clients (or take those given), wait for all, and read what each recorded. A
    client that exits non-zero fails the run with its own last line, unless it was killed (the
    isolation test kills one on purpose)."""
    t0 = time.time()
    procs = procs or start_clients(cfg, bed, workdir)
    limit = SETUP_S + (cfg.shape.duration_s or SETUP_S)
    try:
        for p in procs:
            p.wait(timeout=max(1.0, t0 + limit - time.time()))
    except subprocess.TimeoutExpired:
        raise UsageError(f"the {cfg.mode} clients did not end within {limit:.0f} s: lower --gap-duration "
                         "or the clients' work") from None
    finally:
        stop_clients(procs)
    wall_s = time.time() - t0
    after = sum(bed.counters())
    for rank, p in enumerate(procs, 1):
        if p.returncode not in (0, -9):
            err = (workdir / f"client{rank}.err").read_text().strip().splitlines() or ["no output"]
            raise RuntimeError(f"{cfg.mode} client {rank} exited {p.returncode}: {err[-1]}")
    records = [RequestRecord.from_dict(json.loads(line)) for rank in range(1, len(procs) + 1)
               if (workdir / f"client{rank}.jsonl").exists()
               for line in (workdir / f"client{rank}.jsonl").read_text().splitlines()]
    start = workdir / "client1.jsonl.t0"
    link_bytes = after - int(start.read_text()) if start.exists() else None
    return ServeRun(cfg.mode, cfg.shape.clients, records, link_bytes, wall_s, [p.returncode for p in procs])
