"""The client's calls to the GPU worker over torch RPC, with torch's failures reworded into one
line the user can act on (a dead worker, a cut link, a hung step)."""
from __future__ import annotations


def call(worker, method: str, *args):
    """worker.method(*args) over RPC, with torch RPC's failures reworded (harness.compute.calls.explain)."""
    try:
        return getattr(worker.rpc_sync(), method)(*args)
    except RuntimeError as e:
        raise explain(e) from e


class WorkerLost(RuntimeError):
    """An RPC to the GPU worker failed in a way the user can act on; the message says how."""


def explain(e: Exception) -> Exception:
    """torch RPC's errors, reworded so that a failed cell says what happened in one line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "ran for more than set timeout" in text:
        return WorkerLost(f"the GPU host did not answer within the RPC timeout (link down, or the "
                          f"worker hung; raise --gap-rpc-timeout for slower steps): {text}")
    if "EOF" in text or "Connection reset" in text or "ECONNRESET" in text or "shutdown" in text.lower():
        return WorkerLost(f"the connection to the GPU worker closed mid-call (the worker died or "
                          f"the link was reset): {text}")
    return e
