"""How one client reaches the model in each mode, behind one interface: open() -> a session,
prefill(session, ids) -> the first token, step(session, token) -> the next, close(session).

- LocalSessions: the batched loop (harness.compute.batcher) in this process, on the GPU host.
- SysSessions: the shared semantics-aware worker over RPC: one copy of the weights there, this
  client's KV cache in a row of its batched cache; a step sends a token and the session's id.
- NaiveSessions: the stateless worker: every call carries this client's whole state_dict and its
  session's whole KV cache (harness.compute.modes.NaiveBackend, reached by the worker's key). It
  cannot share weights or batch: it does not know two calls run the same model.
"""
from __future__ import annotations

import torch

from harness.compute.calls import WorkerHandle, explain
from harness.compute.modes import NaiveBackend
from harness.compute.packing import Packed


class LocalSessions:
    def __init__(self, batcher, owner: str):
        self.batcher, self.owner = batcher, owner

    def open(self):
        return self.batcher.open(self.owner)

    def prefill(self, sid, ids: list[int]) -> int:
        return self.batcher.prefill(sid, self.owner, ids).wait()

    def step(self, sid, token: int) -> int:
        return self.batcher.step(sid, self.owner, token).wait()

    def close(self, sid) -> None:
        self.batcher.close(sid, self.owner)


class SysSessions:
    """owner: this client's RPC name, to which the worker binds the sessions it opens."""

    def __init__(self, worker_name: str, key: str, owner: str):
        self.worker_name, self.key, self.owner = worker_name, key, owner

    def _sync(self, method: str, *args):
        from torch.distributed import rpc

        from harness.compute.worker import invoke
        try:
            return rpc.rpc_sync(self.worker_name, invoke, args=(self.key, method, *args))
        except RuntimeError as e:
            raise explain(e) from e

    def _async(self, method: str, *args) -> int:
        from torch.distributed import rpc

        from harness.compute.worker import invoke_async
        try:
            return rpc.rpc_async(self.worker_name, invoke_async, args=(self.key, method, *args)).wait()
        except RuntimeError as e:
            raise explain(e) from e

    def open(self):
        return self._sync("session_open_remote", self.owner)

    def prefill(self, sid, ids: list[int]) -> int:
        return self._async("session_prefill_remote", sid, self.owner, list(ids))

    def step(self, sid, token: int) -> int:
        return self._async("session_step_remote", sid, self.owner, int(token))

    def close(self, sid) -> None:
        self._sync("session_close_remote", sid, self.owner)


class NaiveSessions:
    """weights: this client's own pack of the model (harness.compute.packing.pack), sent whole
    on every call, as the naive system sends it."""

    def __init__(self, worker_name: str, key: str, weights: Packed):
        self.handle = WorkerHandle(None, owner=worker_name, key=key)
        self.weights = weights

    def open(self):
        return NaiveBackend(self.handle, self.weights)

    def prefill(self, backend, ids: list[int]) -> int:
        return backend.prefill(torch.tensor([ids], dtype=torch.long))[0]

    def step(self, backend, token: int) -> int:
        return backend.step([token])[0]

    def close(self, backend) -> None:
        backend.end()
