"""Same function in every mode: local, naive and sys_simulated produce identical greedy tokens,
and local equals transformers' own generate(). Remote modes run over the real testbed."""
from __future__ import annotations

import pytest
import torch

from harness.compute.engine import ENGINES, GRAPHS, EngineSpec
from harness.compute.models import ModelSpec, build_model, default_device, load_config, prompt_ids
from harness.compute.modes import HostLocalBackend, LocalBackend, NaiveBackend, SysBackend
from harness.compute.peer import generate_cache
from harness.compute.phase import run_phase

STEPS = 12
# the engines this host can run: the graph engines capture CUDA graphs (compact runs eagerly off CUDA)
HERE = [e for e in ENGINES if e not in GRAPHS or torch.cuda.is_available()]


def _generate(model, prompt, n_new, engine: EngineSpec):
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                         min_new_tokens=n_new, do_sample=False, **generate_cache(engine))
    return out[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("engine", HERE)
@pytest.mark.parametrize("name,dtype", [("tiny", "fp32"), ("tiny-llama", "fp32"), ("tiny-llama", "bf16")])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_three_modes_and_generate_agree(gap_testbed, name, dtype, phase, engine):
    """Every engine this host can run, all three modes on the worker's device (on a GPU host a
    CPU-run local mode would differ from the GPU's in bf16 by rounding, not by function), the
    local mode both in this process and as the suite runs it, in the worker's."""
    spec = ModelSpec(name, dtype)
    device = gap_testbed.device or default_device()
    model = build_model(spec, device)
    prompt = prompt_ids(load_config(spec), 32, seed=0)  # on the CPU, as run_phase takes it
    eng = EngineSpec(engine, 32 + STEPS + 1)
    worker = gap_testbed.worker(spec, eng)
    state_dict = build_model(spec, "cpu").state_dict()  # the client ships its CPU weights (same seed)
    makers = {"local": lambda: LocalBackend(model, eng),  # in turn: each remote mode loads its own weights
              "local on the GPU host": lambda: HostLocalBackend(worker),  # the suite's local cells
              "naive": lambda: NaiveBackend(worker, state_dict), "sys_simulated": lambda: SysBackend(worker, state_dict)}
    tokens = {name: run_phase(make(), prompt, phase, STEPS).tokens for name, make in makers.items()}
    assert all(t == tokens["local"] for t in tokens.values()), tokens
    assert len(set(tokens["local"])) > 1 or phase == "prefill", "degenerate tokens prove nothing"
    # compiled code rounds otherwise than transformers' in bf16: there test_compact.py bounds its logits
    if not (engine == "compact" and dtype != "fp32" and str(device).startswith("cuda")):
        expected = _generate(model, prompt.to(device), STEPS + 1 if phase == "decode" else 1, eng)
        assert tokens["local"] == expected, "local loop differs from generate()"


def test_a_local_backend_reuses_its_static_slot():
    """Sessions one after another on one static slot: the rewound cache gives the same tokens."""
    spec = ModelSpec("tiny-llama")
    model = build_model(spec, "cpu")
    prompt = prompt_ids(load_config(spec), 16, seed=0)
    backend = LocalBackend(model, EngineSpec("static", 16 + 6))
    first = run_phase(backend, prompt, "decode", 5).tokens
    assert run_phase(backend, prompt, "decode", 5).tokens == first
    assert len(backend.engine._free) == 1, "the slot went back to the pool and was reused"


def test_sys_releases_cache_and_counts_payload(gap_testbed):
    spec = ModelSpec("tiny")
    model = build_model(spec, "cpu")
    worker = gap_testbed.worker(spec)
    backend = SysBackend(worker, model.state_dict())
    result = run_phase(backend, prompt_ids(model.config, 16, 0), "decode", 4)
    assert worker.rpc_sync().stats_remote()["sessions"] == 0, "decode session left its KV cache"
    # sent: 16 prompt ids + 4 single tokens, int64; received: 5 next tokens (argmax on the worker)
    assert result.payload_tx_bytes == (16 + 4) * 8
    assert result.payload_rx_bytes == 5 * 8


def test_remote_bytes_cross_the_link(gap_testbed):
    """The naive payload must appear on the link's counters (not via shared memory)."""
    if gap_testbed.link.kind != "veth":
        pytest.skip(f"link is {gap_testbed.link.label}: counters would include unrelated traffic")
    spec = ModelSpec("tiny")
    model = build_model(spec, "cpu")
    backend = NaiveBackend(gap_testbed.worker(spec), model.state_dict())
    tx0, rx0 = gap_testbed.counters()
    result = run_phase(backend, prompt_ids(model.config, 16, 0), "prefill", 1)
    tx1, rx1 = gap_testbed.counters()
    assert tx1 - tx0 >= result.payload_tx_bytes > 3_000_000
    assert (tx1 - tx0) < result.payload_tx_bytes * 1.05, "far more than the payload: other traffic?"
    assert rx1 - rx0 >= result.payload_rx_bytes


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_a_batch_decodes_alike_in_every_mode(gap_testbed, engine):
    """--gap-batch: sequences decoded together give each sequence the tokens generate() gives it
    in the same batch, in all three modes."""
    spec = ModelSpec("tiny-llama")
    model = build_model(spec, "cpu")
    prompt = prompt_ids(load_config(spec), 16, seed=0, batch=3)
    eng = EngineSpec(engine, 16 + 6, batch=3)
    worker = gap_testbed.worker(spec, eng)
    state_dict = model.state_dict()
    tokens = {}
    for make in (lambda: LocalBackend(model, eng), lambda: NaiveBackend(worker, state_dict),
                 lambda: SysBackend(worker, state_dict)):  # in turn: naive unloads sys's weights
        backend = make()
        tokens[backend.mode] = run_phase(backend, prompt, "decode", 5).tokens
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6,
                         do_sample=False, **generate_cache(eng))
    expected = out[:, 16:].tolist()
    assert len(expected) == 3 and len({tuple(t) for t in expected}) == 3, "three different sequences"
    assert tokens["local"] == expected and tokens["naive"] == expected and tokens["sys_simulated"] == expected


def test_a_decode_step_is_one_message_each_way(gap_testbed):
    """sys_simulated's step reaches the worker by a plain call: no RRef among its arguments,
    whose fork would add the owner's child-accept and the caller's ack to every call (measured
    on the CPU box: 25 packets an empty call through the RRef, 12 without)."""
    if gap_testbed.link.kind != "veth":
        pytest.skip(f"link is {gap_testbed.link.label}: counters would include unrelated traffic")
    from harness.testbed.link import stats
    spec = ModelSpec("tiny")
    backend = SysBackend(gap_testbed.worker(spec), build_model(spec, "cpu").state_dict())
    backend.prefill(prompt_ids(load_config(spec), 8, seed=0))
    iface, calls = gap_testbed.link.client_iface, 40
    before = stats(iface)
    for _ in range(calls):
        backend.step([1])
    after = stats(iface)
    backend.end()
    packets = sum(after[k] - before[k] for k in ("tx_packets", "rx_packets")) / calls
    # a request and a reply, each a few segments (TensorPipe writes a message's parts apart), their ACKs
    assert packets < 18, f"{packets:.1f} packets a decode call: more messages than request and reply"


def test_gap_cost_times_the_same_steps_with_and_without_the_wait(monkeypatch):
    """harness.compute.baseline.gap_cost (the TPOT check's GPU part, run on CUDA only): the local
    loop's time per token with and without a wait after every forward of the gapped runs, alternating."""
    from harness.compute import baseline
    waits = []
    monkeypatch.setattr(baseline, "spin", waits.append)
    spec = ModelSpec("tiny", "fp32")
    model = build_model(spec, "cpu")
    prompt = prompt_ids(load_config(spec), 8, 0)
    out = baseline.gap_cost(model, prompt, 4, 0.002, EngineSpec("static", max_len=16), repeats=3)
    assert out["gap_s"] == 0.002 and len(out["tpot_gap_all_s"]) == len(out["tpot_no_gap_all_s"]) == 3
    assert out["gap_cost_s"] == pytest.approx(out["tpot_gap_s"] - out["tpot_no_gap_s"])
    assert waits == [0.002] * ((2 + 1) + 3 * (4 + 1)), "a wait after every forward of the gapped runs only"


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_a_prompts_explicit_mask_computes_transformers_own_prefill(name):
    """graphs-all hands a prompt its causal mask (harness.compute.engine._prompt_mask: a capture cannot
    hold transformers' host-side choice of is_causal). Run eagerly on the CPU into the same static
    cache, it gives transformers' own prefill: the logits, the cache, and the next step after it."""
    from harness.compute.engine import Engine
    model = build_model(ModelSpec(name, "fp32"), "cpu")
    engine = Engine(model, EngineSpec("static", 16 + 4))
    ids = prompt_ids(model.config, 16, seed=0)
    own, masked = engine.new_slot(), engine.new_slot()
    a = engine.forward(own, ids).clone()
    b = engine._eager(masked.cache, ids, engine._prompt_mask(16))
    masked.length = 16
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for x, y in zip(engine.kv(masked), engine.kv(own)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    step = a.argmax(-1, keepdim=True)
    torch.testing.assert_close(engine.forward(masked, step), engine.forward(own, step), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="graphs-all captures CUDA graphs: run it on a GPU host "
                    "(pytest tests/test_equivalence.py -k captured)")
@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_a_captured_prompt_replays_its_eager_run(name):
    """graphs-all's prompt graph gives what the same masked prefill gives eagerly, in a fresh slot
    and again from the pool (a replay, not a second capture), and decodes the same tokens after it."""
    from harness.compute.engine import Engine
    model = build_model(ModelSpec(name, "fp16"), "cuda")
    ids = prompt_ids(model.config, 16, seed=0).cuda()
    eager = Engine(model, EngineSpec("static", 16 + 9))
    ref = eager._eager(eager.new_slot().cache, ids, eager._prompt_mask(16))
    graphs = Engine(model, EngineSpec("graphs-all", 16 + 9))
    runs = []
    for _ in range(2):
        slot = graphs.new_slot()
        logits = graphs.forward(slot, ids).clone()
        torch.testing.assert_close(logits, ref)
        tokens = [int(logits.argmax())]
        for _ in range(8):
            tokens.append(int(graphs.forward(slot, torch.tensor([[tokens[-1]]], device="cuda")).argmax()))
        runs.append((tokens, slot))
        graphs.release(slot)
    assert runs[0][0] == runs[1][0], runs
    assert runs[1][1] is runs[0][1] and sorted(runs[1][1].graphs) == [1, 16], "the pooled slot replays its graphs"


def test_weights_sent_in_chunks_compute_what_one_message_does(gap_testbed):
    """A GPU worker takes the stateless call's weights in chunks (load_chunk_remote) that land while
    later ones still travel; forced here on the CPU, with chunks far smaller than a buffer, they
    land where one message's would: after other weights held the worker's parameters, the chunked
    call gives the one-message call's tokens and payload, and other weights in chunks give other
    tokens. A forward whose chunks did not all land is refused."""
    from harness.compute.calls import call
    from harness.compute.packing import Chunked, chunks
    spec = ModelSpec("tiny-llama")
    worker = gap_testbed.worker(spec)
    prompt = prompt_ids(load_config(spec), 16, seed=0)

    def backend(seed: int, chunked: bool):
        b = NaiveBackend(worker, build_model(ModelSpec(spec.name, seed=seed), "cpu").state_dict())
        assert b.chunks is None, "a CPU worker takes the weights whole"
        b.chunks = chunks(b.weights, 1 << 20) if chunked else None
        return b
    one = run_phase(backend(0, False), prompt, "decode", 4)
    run_phase(backend(1, False), prompt, "decode", 4)  # the worker's parameters now hold other weights
    seed0 = backend(0, True)
    assert len(seed0.chunks) > 3
    many = run_phase(seed0, prompt, "decode", 4)
    assert many.tokens == one.tokens and many.payload_tx_bytes == one.payload_tx_bytes
    assert run_phase(backend(1, True), prompt, "decode", 4).tokens != one.tokens, "other weights landed"
    call(worker, "load_chunk_remote", "partial", seed0.chunks[0])
    with pytest.raises(RuntimeError, match="send every chunk"):
        call(worker, "run_stateless_forward_remote", Chunked("partial", seed0.nbytes), prompt, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the local loop runs ahead on an asynchronous device only: "
                    "run it on a GPU host (pytest tests/test_equivalence.py -k ahead)")
@pytest.mark.parametrize("engine", HERE)
def test_the_loop_ahead_gives_the_one_sync_steps_tokens(engine):
    """The local loop that queues each announced step before reading the last token (ahead.py)
    gives the tokens of the one-synchronisation step, whether all, some or none of the steps
    were announced (the rest are queued when asked for), on a reused slot."""
    from harness.compute.timers import Clock
    model = build_model(ModelSpec("tiny-llama", "bf16"), "cuda")
    prompt = prompt_ids(model.config, 16, seed=0)
    backend = LocalBackend(model, EngineSpec(engine, 16 + 10))
    eng = backend.engine
    slot = eng.new_slot()
    want = [eng.next_tokens(slot, prompt, Clock(eng.device))]
    for _ in range(8):
        want.append(eng.next_tokens(slot, want[-1], Clock(eng.device)))
    eng.release(slot)
    assert len(set(map(tuple, want))) > 1, "degenerate tokens prove nothing"
    for announced in (8, 3, 0):
        got = [backend.prefill(prompt, announced)]
        for _ in range(8):
            got.append(backend.step(got[-1]))
        backend.end()
        assert got == want, (announced, got, want)
    with pytest.raises(AssertionError, match="runs greedily ahead"):
        backend.prefill(prompt, 2)
        backend.step([want[0][0] + 1])
