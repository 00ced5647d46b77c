"""RemoteWorker used in-process (no RPC): the stateless and stateful paths, their equality, the
KV-cache store's errors and its bookkeeping over many sessions."""
from __future__ import annotations

import gc

import psutil
import pytest
import torch

from harness.compute.engine import EngineSpec
from harness.compute.models import ModelSpec, build_model, forward_step, load_config, prompt_ids
from harness.compute.modes import LocalBackend
from harness.compute.packing import Packed, unpack_kv
from harness.compute.phase import run_phase
from harness.compute.worker import RemoteWorker

PROMPT_LEN = 16


@pytest.fixture(scope="module")
def client():
    """The client's side for a preset: its model (CPU), its weights and a prompt."""
    made = {}

    def get(name: str = "tiny"):
        if name not in made:
            spec = ModelSpec(name)
            model = build_model(spec, "cpu")
            made[name] = (spec, model, model.state_dict(), load_config(spec),
                          prompt_ids(load_config(spec), PROMPT_LEN, seed=0))
        return made[name]
    return get


@pytest.fixture
def worker(client):
    spec, _, sd, _, _ = client("tiny")
    return RemoteWorker(spec, "cpu")


def _seq_len(kv) -> int:
    return int(kv[0][0].shape[-2])


def _next_token(logits) -> torch.Tensor:
    return torch.argmax(logits[0]).reshape(1, 1)


# -- stateless ------------------------------------------------------------------------------

def test_stateless_forward_shapes_and_growth(client, worker):
    spec, _, sd, config, prompt = client("tiny")
    reply = worker.run_stateless_forward_remote(sd, prompt)
    assert reply.logits.shape == (1, config.vocab_size)
    assert reply.kv_cache_id is None
    assert isinstance(reply.kv_cache, Packed) and len(reply.kv_cache.buffers) == 1, "one tensor on the wire"
    kv = unpack_kv(reply.kv_cache)
    assert len(kv) == config.n_layer
    for k, v in kv:
        assert k.shape == v.shape
        assert k.shape[-2] == PROMPT_LEN
        assert k.device.type == "cpu"
    assert set(reply.server_s) == {"load_s", "h2d_s", "compute_s", "d2h_s", "dispatch_s"}
    entered, left = reply.stamps_s
    assert 0 <= sum(reply.server_s.values()) <= left - entered, "the timers cover part of the method"

    before = [(k.clone(), v.clone()) for k, v in kv]
    reply2 = worker.run_stateless_forward_remote(sd, _next_token(reply.logits), reply.kv_cache)
    assert reply2.logits.shape == (1, config.vocab_size)
    kv2 = unpack_kv(reply2.kv_cache)
    assert len(kv2) == config.n_layer
    for (k2, v2), (k, v) in zip(kv2, before):
        assert k2.shape[-2] == PROMPT_LEN + 1 and v2.shape[-2] == PROMPT_LEN + 1
        # the old positions come back unchanged, the kv we sent is not modified in place
        assert torch.equal(k2[..., :PROMPT_LEN, :], k) and torch.equal(v2[..., :PROMPT_LEN, :], v)
    for (k, v), (k0, v0) in zip(kv, before):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_stateless_keeps_nothing(client, worker):
    spec, _, sd, _, prompt = client("tiny")
    reply = worker.run_stateless_forward_remote(sd, prompt)
    worker.run_stateless_forward_remote(sd, _next_token(reply.logits), reply.kv_cache)
    assert worker.caches == {}
    assert worker.weights_loaded is False
    # ...even after a stateful load: a stateless call's weights are not the worker's to keep
    worker.load_weights_remote(sd)
    assert worker.weights_loaded is True
    worker.run_stateless_forward_remote(sd, prompt)
    assert worker.weights_loaded is False
    assert worker.caches == {}


# -- stateless == stateful ------------------------------------------------------------------

def _stateless_run(worker, sd, prompt, steps):
    reply = worker.run_stateless_forward_remote(sd, prompt)
    logits, kv = [reply.logits], reply.kv_cache
    for _ in range(steps):
        reply = worker.run_stateless_forward_remote(sd, _next_token(logits[-1]), kv)
        logits.append(reply.logits)
        kv = reply.kv_cache
    return logits


def _stateful_run(worker, sd, prompt, steps):
    worker.load_weights_remote(sd)
    reply = worker.run_prefill_remote(prompt)
    cid = reply.kv_cache_id
    logits = [reply.logits]
    for _ in range(steps):
        reply = worker.run_decode_step_remote(_next_token(logits[-1]), cid)
        assert reply.kv_cache_id == cid and reply.kv_cache is None
        logits.append(reply.logits)
    worker.release_cache_remote(cid)
    return logits


def _local_run(model, prompt, steps):
    from transformers import DynamicCache
    cache = DynamicCache()
    logits = [forward_step(model, prompt, cache)]
    for _ in range(steps):
        logits.append(forward_step(model, _next_token(logits[-1]), cache))
    return logits


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_stateless_and_stateful_bitwise_equal(client, preset):
    spec, model, sd, config, prompt = client(preset)
    steps = 5
    stateless = _stateless_run(RemoteWorker(spec, "cpu"), sd, prompt, steps)
    stateful = _stateful_run(RemoteWorker(spec, "cpu"), sd, prompt, steps)
    assert len(stateless) == len(stateful) == steps + 1
    for i, (a, b) in enumerate(zip(stateless, stateful)):
        assert a.shape == (1, config.vocab_size)
        assert torch.equal(a, b), f"{preset}: logits differ at forward {i}"
    # equality must not come from a worker that ignores its input: every forward's logits differ
    # from the one before (a new token and a longer cache each time)
    for i in range(steps):
        assert not torch.equal(stateless[i], stateless[i + 1]), f"{preset}: forwards {i} and {i + 1} alike"


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_worker_matches_client_model(client, preset):
    """The worker's skeleton (built without init) + shipped weights computes what the client's
    own model computes: catches buffers that load_state_dict does not fill (RoPE inv_freq)."""
    spec, model, sd, _, prompt = client(preset)
    local = _local_run(model, prompt, 3)
    remote = _stateful_run(RemoteWorker(spec, "cpu"), sd, prompt, 3)
    for i, (a, b) in enumerate(zip(local, remote)):
        torch.testing.assert_close(b, a, msg=lambda m: f"{preset} forward {i}: {m}")
    assert [int(torch.argmax(l)) for l in local] == [int(torch.argmax(l)) for l in remote]


def test_the_local_mode_runs_in_the_worker_on_weights_made_there(client):
    """local_prepare_remote makes the model's weights on the worker, as the client makes its copy,
    and run_local_phase_remote runs the local loop there, timed there: the client's own local
    loop's tokens. Unprepared, or after a reset, it says what to call."""
    spec, model, _, _, prompt = client("tiny-llama")
    engine = EngineSpec("static", PROMPT_LEN + 6)
    worker = RemoteWorker(spec, "cpu", engine)
    with pytest.raises(RuntimeError, match="call local_prepare_remote first"):
        worker.run_local_phase_remote(prompt, "decode", 5)
    worker.local_prepare_remote()
    there = worker.run_local_phase_remote(prompt, "decode", 5)
    here = run_phase(LocalBackend(model, engine), prompt, "decode", 5)
    assert there.tokens == here.tokens and len(set(there.tokens)) > 1, (there.tokens, here.tokens)
    assert there.mode == "local" and len(there.step_times_s) == 5 and there.payload_tx_bytes == 0
    assert worker.local_capture_s_remote() == {}, "a static engine captures nothing off CUDA"
    worker.reset_remote()
    with pytest.raises(RuntimeError, match="call local_prepare_remote first"):
        worker.run_local_phase_remote(prompt, "decode", 5)


# -- errors ---------------------------------------------------------------------------------

def test_prefill_before_load_weights(client, worker):
    _, _, _, _, prompt = client("tiny")
    with pytest.raises(RuntimeError, match="load_weights_remote"):
        worker.run_prefill_remote(prompt)
    assert worker.caches == {}


def test_decode_before_load_weights(worker):
    with pytest.raises(RuntimeError, match="load_weights_remote"):
        worker.run_decode_step_remote(torch.tensor([[1]]), "whatever")


def test_unknown_cache_id(client, worker):
    _, _, sd, _, _ = client("tiny")
    worker.load_weights_remote(sd)
    with pytest.raises(KeyError, match="nosuchid"):
        worker.run_decode_step_remote(torch.tensor([[1]]), "nosuchid")
    with pytest.raises(KeyError, match="nosuchid"):
        worker.release_cache_remote("nosuchid")


def test_release_cache(client, worker):
    _, _, sd, _, prompt = client("tiny")
    worker.load_weights_remote(sd)
    cid = worker.run_prefill_remote(prompt).kv_cache_id
    assert list(worker.caches) == [cid]
    worker.release_cache_remote(cid)
    assert worker.caches == {}
    with pytest.raises(KeyError, match=cid):
        worker.release_cache_remote(cid)
    with pytest.raises(KeyError, match=cid):
        worker.run_decode_step_remote(torch.tensor([[1]]), cid)


def test_store_full(client, worker, monkeypatch):
    monkeypatch.setattr(RemoteWorker, "MAX_SESSIONS", 3)
    _, _, sd, _, prompt = client("tiny")
    worker.load_weights_remote(sd)
    ids = [worker.run_prefill_remote(prompt).kv_cache_id for _ in range(3)]
    assert len(set(ids)) == 3 and len(worker.caches) == 3
    with pytest.raises(RuntimeError, match=r"full \(3 sessions\).*release_cache_remote"):
        worker.run_prefill_remote(prompt)
    assert len(worker.caches) == 3  # the refused prefill left nothing behind
    worker.release_cache_remote(ids[0])
    ids.append(worker.run_prefill_remote(prompt).kv_cache_id)  # room again
    assert len(worker.caches) == 3


def test_reset_remote(client, worker):
    _, _, sd, _, prompt = client("tiny")
    worker.load_weights_remote(sd)
    worker.run_prefill_remote(prompt)
    worker.reset_remote()
    assert worker.caches == {} and worker.weights_loaded is False
    with pytest.raises(RuntimeError, match="load_weights_remote"):
        worker.run_prefill_remote(prompt)


# -- many sessions --------------------------------------------------------------------------

def test_many_sessions_leave_nothing(client, worker):
    _, _, sd, _, prompt = client("tiny")
    worker.load_weights_remote(sd)
    proc = psutil.Process()

    def session():
        reply = worker.run_prefill_remote(prompt)
        cid = reply.kv_cache_id
        tok = _next_token(reply.logits)
        for _ in range(4):
            tok = _next_token(worker.run_decode_step_remote(tok, cid).logits)
        worker.release_cache_remote(cid)

    session()
    gc.collect()
    rss0 = proc.memory_info().rss
    for _ in range(199):
        session()
    gc.collect()
    assert len(worker.caches) == 0
    grown = proc.memory_info().rss - rss0
    assert grown < 50 * 2**20, f"RSS grew {grown / 2**20:.1f} MB over 199 sessions"


@pytest.mark.parametrize("engine", ["static", "compact"])
def test_a_warm_up_on_uninitialised_weights_leaves_nothing_behind(client, engine, monkeypatch):
    """warm_remote runs the engine on the skeleton's weights before any arrive, and on a GPU those
    are whatever memory held (NaN among it). A static cache is read whole behind its mask, and a
    masked NaN still poisons a row, so the warm-up's slot is zeroed (Engine.clear): after it, the
    first session gives a fresh worker's tokens; without it, it would not."""
    from harness.compute.engine import Engine, EngineSpec
    from harness.compute.packing import pack
    spec, _, sd, _, prompt = client("tiny-llama")

    def first_tokens(warm: bool) -> list:
        worker = RemoteWorker(spec, "cpu", EngineSpec(engine, PROMPT_LEN + 4))
        for buf in worker.params.store.buffers.values():
            buf.fill_(float("nan"))
        if warm:
            worker.warm_remote(PROMPT_LEN)
        worker.load_weights_remote(pack(sd))
        return worker.run_prefill_remote(prompt, True).tokens
    fresh = first_tokens(False)
    assert first_tokens(True) == fresh
    if engine == "compact":  # its attention reads every position (transformers' CPU prefill here does not)
        monkeypatch.setattr(Engine, "clear", lambda self, slot: None)
        assert first_tokens(True) != fresh, "without the clear the warm-up's NaN reaches the first session"
