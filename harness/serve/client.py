"""One client of many: its sessions, run against the model in one mode, each recorded.

    python -m harness.serve.client CONFIG.json     (started by harness.serve.run, one per client)

A client process is rank r of an RPC world of the worker (rank 0) and N clients. Client 1 leads:
it makes the worker (rpc.remote) and shares it by key; for sys_simulated it also loads the
weights once and opens the batched sessions. Then it tells every other client the worker's key
and a common start time t0 (an RPC to each), and all run their plans from t0. Each writes its
records (harness.serve.metrics.RequestRecord, JSON lines) to its `out` file and leaves without a
graceful RPC shutdown: a graceful one is a barrier of the whole world, which a killed client
would hold forever.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.compute.calls import first_line
from harness.serve.load import ClientPlan, LoadShape, plan
from harness.serve.metrics import RequestRecord

START_TIMEOUT_S = 300.0  # the lead's set-up (a model's weights over the link) before the others start
_START: dict = {}
_KEYED, _WARM, _GO = threading.Event(), threading.Event(), threading.Event()


@dataclass(frozen=True)
class ClientConfig:
    rank: int                       # 1..clients; 1 leads
    clients: int
    host: str                       # the worker's address on the link
    port: int
    channel: str
    timeout_s: float
    iface: str                      # this side's interface on the link
    mode: str                       # naive | sys_simulated
    model: dict                     # harness.compute.models.ModelSpec's fields
    shape: dict                     # harness.serve.load.LoadShape's fields
    prompt_len: int
    steps: int
    slots: int
    lease_s: float
    device: str | None
    out: str


def run_plan(sessions, client_plan: ClientPlan, prompt_len: int, steps: int, vocab: int, t0: float,
             duration_s: float | None) -> list[RequestRecord]:
    """Each session of the plan from t0: open, prefill, `steps` decode steps, close. A session
    running when duration_s ends is cut there and counted unfinished; none starts after it."""
    end = t0 + duration_s if duration_s is not None else float("inf")
    records = []
    for s in client_plan:
        due = t0 + s.scheduled_s if s.scheduled_s is not None else None
        if due is not None and due > time.time():
            time.sleep(min(due, end) - time.time())
        if time.time() >= end:
            break
        records.append(_session(sessions, s, due, prompt_len, steps, vocab, end))
    return records


def _session(sessions, s, due: float | None, prompt_len: int, steps: int, vocab: int, end: float) -> RequestRecord:
    rec = RequestRecord(s.client, s.session, due, time.time(), None)
    try:
        handle = sessions.open()
        try:
            token = sessions.prefill(handle, s.prompt(prompt_len, vocab))
            rec.first_token_s = _arrived(rec, token)
            for _ in range(steps):
                if time.time() >= end:
                    break
                token = sessions.step(handle, token)
                _arrived(rec, token)
            else:
                rec.finished = True
        finally:
            sessions.close(handle)
    except Exception as e:  # noqa: BLE001  (the session failed, whatever the cause; the client goes on)
        rec.finished, rec.error = False, f"{type(e).__name__}: {first_line(e)}"
    return rec


def _arrived(rec: RequestRecord, token: int) -> float:
    t = time.time()
    rec.tokens.append(int(token))
    rec.token_times_s.append(t)
    return t


def warm_up(sessions, prompt_len: int, vocab: int) -> None:
    """One session of one step, not recorded: the first call's one-time costs (a connection's
    set-up, the worker's first buffers) out of the measured sessions, as the cells' warm-up rounds."""
    handle = sessions.open()
    try:
        sessions.step(handle, sessions.prefill(handle, list(range(prompt_len)) if prompt_len <= vocab
                                               else [0] * prompt_len))
    finally:
        sessions.close(handle)


# The lead's calls to every other client over RPC, in order: the worker's key (warm up now), wait
# until warm, then the common start time. Two rounds, so that every connection exists before t0.
def receive_key(key: str) -> None:
    _START["key"] = key
    _KEYED.set()


def wait_warm(timeout_s: float) -> bool:
    return _WARM.wait(timeout_s)


def receive_t0(t0: float) -> None:
    _START["t0"] = t0
    _GO.set()


def _lead(cfg: ClientConfig, spec, weights, vocab: int) -> tuple[str, float]:
    """Make the shared worker, set it up for the mode, and start every other client."""
    from torch.distributed import rpc as torch_rpc

    from harness.compute.calls import WorkerHandle, call
    from harness.compute.engine import AUTO, EngineSpec
    from harness.compute.worker import RemoteWorker
    from harness.testbed import rpc
    from harness.testbed.link import stats as link_stats

    engine = EngineSpec(AUTO, max_len=cfg.prompt_len + cfg.steps + 1)
    handle = WorkerHandle(torch_rpc.remote(rpc.WORKER_NAME, RemoteWorker, args=(spec, cfg.device, engine)))
    call(handle, "share_remote")
    if cfg.mode == "sys_simulated":
        call(handle, "load_weights_remote", weights)
        call(handle, "open_batcher_remote", cfg.slots, cfg.prompt_len + cfg.steps + 1, cfg.lease_s)
    counters = link_stats(cfg.iface)  # the link's bytes from here on are the run's (the set-up is apart)
    with open(cfg.out + ".t0", "w") as f:
        f.write(str(counters["tx_bytes"] + counters["rx_bytes"]))
    others = [rpc.client_name(r, cfg.clients + 1) for r in range(2, cfg.clients + 1)]
    for name in others:
        torch_rpc.rpc_sync(name, receive_key, args=(handle.key,))
    warm_up(sessions_for(cfg, handle.key, weights), cfg.prompt_len, vocab)
    for name in others:
        if not torch_rpc.rpc_sync(name, wait_warm, args=(START_TIMEOUT_S,), timeout=START_TIMEOUT_S + 10):
            raise RuntimeError(f"{name} did not warm up in {START_TIMEOUT_S:g} s")
    t0 = time.time() + 0.05
    for name in others:
        torch_rpc.rpc_sync(name, receive_t0, args=(t0,))
    return handle.key, t0


def sessions_stats(key: str) -> dict:
    """The shared worker's own account (harness.compute.worker.RemoteWorker.stats_remote)."""
    from torch.distributed import rpc as torch_rpc

    from harness.compute.worker import invoke
    from harness.testbed import rpc
    return torch_rpc.rpc_sync(rpc.WORKER_NAME, invoke, args=(key, "stats_remote"))


def sessions_for(cfg: ClientConfig, key: str, weights):
    from harness.serve.sessions import NaiveSessions, SysSessions
    from harness.testbed import rpc

    name = rpc.client_name(cfg.rank, cfg.clients + 1)
    return (SysSessions(rpc.WORKER_NAME, key, name) if cfg.mode == "sys_simulated"
            else NaiveSessions(rpc.WORKER_NAME, key, weights))


def main(path: str) -> int:
    from torch.distributed import rpc as torch_rpc

    from harness.compute.models import ModelSpec, build_model, load_config
    from harness.compute.packing import pack
    from harness.testbed import rpc

    cfg = ClientConfig(**json.loads(Path(path).read_text()))
    spec, shape = ModelSpec(**cfg.model), LoadShape(**cfg.shape)
    # the naive client ships its own weights on every call; sys_simulated's lead ships them once
    weights = (pack(build_model(spec, "cpu").state_dict())
               if cfg.mode == "naive" or cfg.rank == 1 else None)
    world = cfg.clients + 1
    name = rpc.client_name(cfg.rank, world)
    rpc.init(rpc.RpcConfig(cfg.host, cfg.port, cfg.channel, cfg.timeout_s), name, cfg.rank, cfg.iface, world)
    vocab = load_config(spec).vocab_size
    if cfg.rank == 1:
        key, t0 = _lead(cfg, spec, weights, vocab)
    else:
        if not _KEYED.wait(START_TIMEOUT_S):
            print(f"client {cfg.rank}: the lead client did not start us in {START_TIMEOUT_S:g} s", file=sys.stderr)
            return 1
        key = _START["key"]
        warm_up(sessions_for(cfg, key, weights), cfg.prompt_len, vocab)
        _WARM.set()
        _GO.wait(START_TIMEOUT_S)
        t0 = _START["t0"]
    sessions = sessions_for(cfg, key, weights)
    records = run_plan(sessions, plan(shape)[cfg.rank - 1], cfg.prompt_len, cfg.steps, vocab, t0, shape.duration_s)
    stats = sessions_stats(key)
    with open(cfg.out + ".stats", "w") as f:  # what the worker held when this client was done
        f.write(json.dumps({"t_s": time.time(), **stats}))
    with open(cfg.out + ".part", "w") as f:
        f.writelines(json.dumps(r.to_dict()) + "\n" for r in records)
    os.replace(cfg.out + ".part", cfg.out)  # whole, or not at all
    torch_rpc.shutdown(graceful=False)
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main(sys.argv[1]))  # torch RPC's threads would hold a normal exit
