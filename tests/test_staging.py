"""The worker's bulk load (harness/compute/staging.py): the client's Packed weights land with one
copy per dtype in parameters that are views of one buffer, and give bitwise the logits of the plain
load_state_dict path; the chunked host->device copy moves every byte."""
from __future__ import annotations

import pytest
import torch

from harness.compute.models import ModelSpec, build_model, load_config, prompt_ids
from harness.compute.packing import pack
from harness.compute.staging import FlatParams, HostStaging, covered, parallel_copy
from harness.compute.worker import RemoteWorker


@pytest.fixture(scope="module", params=["tiny", "tiny-llama"])
def client(request):
    spec = ModelSpec(request.param)
    model = build_model(spec, "cpu")
    return spec, model.state_dict(), prompt_ids(load_config(spec), 16, seed=0)


def test_parameters_are_views_of_one_buffer_per_dtype(client):
    spec, sd, _ = client
    model = build_model(spec, "cpu", with_weights=False)
    flat = FlatParams(model)
    (store,) = flat.store.buffers.values()
    lo, hi = store.data_ptr(), store.data_ptr() + store.nbytes
    for name, t in model.state_dict().items():
        assert lo <= t.data_ptr() and t.data_ptr() + t.nbytes <= hi, name
    assert flat.matches(pack(sd)), "the client's pack of the same model must land in place"
    assert not flat.matches(pack(dict(reversed(list(sd.items()))))), "another layout must not"


def test_bulk_load_gives_bitwise_the_logits_of_load_state_dict(client):
    spec, sd, prompt = client
    bulk, plain = RemoteWorker(spec, "cpu"), RemoteWorker(spec, "cpu")
    addresses = [p.data_ptr() for p in bulk.model.parameters()]
    a = bulk.run_stateless_forward_remote(pack(sd), prompt)       # FlatParams path
    b = plain.run_stateless_forward_remote(dict(sd), prompt)      # load_state_dict path
    assert torch.equal(a.logits, b.logits)
    assert [p.data_ptr() for p in bulk.model.parameters()] == addresses, "parameters must keep their addresses"
    tok = torch.argmax(a.logits[0]).reshape(1, 1)
    a2 = bulk.run_stateless_forward_remote(pack(sd), tok, a.kv_cache)
    b2 = plain.run_stateless_forward_remote(dict(sd), tok, b.kv_cache)
    assert torch.equal(a2.logits, b2.logits)


def test_bulk_load_replaces_every_weight(client):
    """Weights from another seed must change the logits: the load really lands."""
    spec, sd, prompt = client
    worker = RemoteWorker(spec, "cpu")
    first = worker.run_stateless_forward_remote(pack(sd), prompt).logits
    other = build_model(ModelSpec(spec.name, seed=1), "cpu").state_dict()
    assert not torch.equal(worker.run_stateless_forward_remote(pack(other), prompt).logits, first)
    assert torch.equal(worker.run_stateless_forward_remote(pack(sd), prompt).logits, first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned staging needs a CUDA device; "
                    "the GPU run exercises it")
def test_chunked_pinned_copy_moves_every_byte(monkeypatch):
    monkeypatch.setattr("harness.compute.staging.CHUNK_BYTES", 1 << 10)
    src = torch.randn(100_003)
    dst = torch.empty_like(src, device="cuda")
    HostStaging(torch.device("cuda")).to_device(src, dst)
    torch.cuda.synchronize()
    assert torch.equal(dst.cpu(), src)


@pytest.mark.parametrize("n,parts", [(100_003, 4), (3, 4), (1, 1), (4096, 3)])
def test_the_staging_copy_on_several_threads_moves_every_byte(n, parts):
    """The staging buffer's fill, split over threads (slices uneven, more threads than elements)."""
    from concurrent.futures import ThreadPoolExecutor
    src, dst = torch.randn(n), torch.zeros(n)
    with ThreadPoolExecutor(parts) as pool:
        parallel_copy(dst, src, pool, parts)
    assert torch.equal(dst, src)


def test_a_range_counts_as_pinned_only_when_a_locked_range_holds_all_of_it():
    locked = {4096: 8192}  # [4096, 12288)
    assert covered(4096, 12288, locked) is True and covered(5000, 6000, locked) is True
    assert covered(8192, 16384, locked) is False and covered(0, 5000, locked) is False
    assert covered(12288, 20000, locked) is None and covered(0, 4096, locked) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locking needs a CUDA device; "
                    "the GPU run exercises it")
def test_a_buffer_locked_only_in_part_is_staged():
    """A receive buffer that starts in a range locked for an earlier, smaller one (another worker's
    weights, in one process) reads as pinned; a direct DMA from it failed with 'invalid argument'."""
    src = torch.randn(1 << 20)
    dst = torch.empty_like(src, device="cuda")
    staging = HostStaging(torch.device("cuda"), pin_received=True)
    staging._register(src.data_ptr(), src.nbytes // 2)
    try:
        assert src.is_pinned(), "the pointer reads as pinned: the case this guards"
        staging.to_device(src, dst)
        torch.cuda.synchronize()
        assert torch.equal(dst.cpu(), src)
    finally:
        for start in list(staging.registered):
            torch.cuda.cudart().cudaHostUnregister(start)
            del staging.registered[start]
