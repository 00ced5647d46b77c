"""The client's calls to the GPU worker over torch RPC, with torch's failures reworded into one
line the user can act on (a dead worker, a cut link, a hung step)."""
from __future__ import annotations


class WorkerHandle:
    """A RemoteWorker on the GPU host, called as `handle.rpc_sync().method(*args)` like its RRef,
    but through a plain function and the worker's key (harness.compute.worker.invoke), not the
    RRef. An RRef among a call's arguments is forked to its owner, which answers with a
    child-accept message that the caller acknowledges: two more messages a call, each woken
    on both hosts, and on the GPU host handled by the one thread that runs the model: an empty
    call through the RRef took many more packets than a plain call, and longer, back to back and
    after an idle wait alike (docs/evidence.md). The RRef is kept: while it lives, the worker
    does."""

    def __init__(self, rref, owner=None, key: str | None = None):
        """rref: the worker's RRef (its key asked of it); or, with rref None, the owner (the worker's
        process) and key of a worker another client made and shared (harness.serve)."""
        from torch.distributed import rpc

        from harness.compute.worker import invoke
        self.rref = rref
        self.key = key or rref.rpc_sync().key_remote()  # also waits until the worker is built
        owner, key = owner or rref.owner(), self.key
        self._call = lambda method, args, timeout=-1.0: rpc.rpc_sync(owner, invoke, args=(key, method, *args),
                                                                     timeout=timeout)
        self._async = lambda method, args: rpc.rpc_async(owner, invoke, args=(key, method, *args))

    def rpc_sync(self, timeout_s: float | None = None) -> "_Methods":
        """timeout_s: this call's RPC timeout instead of the agent's (a call known to be long)."""
        if timeout_s is None:
            return _Methods(self._call)
        return _Methods(lambda method, args: self._call(method, args, timeout_s))

    def rpc_async(self) -> "_Methods":
        """Calls that return a torch Future at once (the message queued), as RRef.rpc_async()."""
        return _Methods(self._async)


class _Methods:
    def __init__(self, call):
        self._call = call

    def __getattr__(self, method: str):
        return lambda *args: self._call(method, args)


def call(worker, method: str, *args):
    """worker.method(*args) over RPC, with torch RPC's failures reworded (harness.compute.calls.explain)."""
    try:
        return getattr(worker.rpc_sync(), method)(*args)
    except RuntimeError as e:
        raise explain(e) from e


def call_each(worker, method: str, args: list[tuple]) -> list:
    """worker.method(*a) for every a in args, all sent at once (each message queued behind the
    last), then waited for; results in order, failures reworded as call's."""
    futures = [getattr(worker.rpc_async(), method)(*a) for a in args]
    results, error = [], None
    for f in futures:  # every one waited for, so that none is still in flight when this returns
        try:
            results.append(f.wait())
        except RuntimeError as e:
            error = error or e
    if error:
        raise explain(error) from error
    return results


class WorkerLost(RuntimeError):
    """An RPC to the GPU worker failed in a way the user can act on; the message says how."""


def first_line(e: BaseException) -> str:
    """An error's first line of text, or its type's name where it has none."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def explain(e: Exception) -> Exception:
    """torch RPC's errors, reworded so that a failed cell says what happened in one line."""
    text = first_line(e)
    if "ran for more than set timeout" in text:
        return WorkerLost(f"the GPU host did not answer within the RPC timeout (link down, or the "
                          f"worker hung; raise --gap-rpc-timeout for slower steps): {text}")
    if "EOF" in text or "Connection reset" in text or "ECONNRESET" in text or "shutdown" in text.lower():
        return WorkerLost(f"the connection to the GPU worker closed mid-call (the worker died or "
                          f"the link was reset): {text}")
    return e
