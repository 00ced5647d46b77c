"""Many clients, one worker: each mode at each N of --gap-clients, one pytest-benchmark case.
Its own run, left out of the main job: `pytest benchmarks -k clients --gap-clients 1,2,4`.

Each case runs the load once (closed loop: --gap-client-sessions per client; open loop:
--gap-request-rate) and records every request; extra_info.summary holds the serving metrics
(harness.serve.metrics.Summary: tokens_per_s, ttft_p50_s, tpot_p99_s, link_bytes_per_token,
goodput_per_s, ...). Every session's tokens must equal its prompt's tokens from the suite's own
one-session local loop: batching, sharing a worker or crossing the link changes no token."""
from __future__ import annotations

import pytest

from fixtures.options import suite_options
from fixtures.serve import save_records
from harness.compute.modes import MODES
from harness.serve.checks import agreement
from harness.serve.report import ServePoint


@pytest.mark.cell
@pytest.mark.parametrize("mode", list(MODES))
def test_clients(benchmark, serving, serve_points, request, mode, clients):
    opts = suite_options(request.config)
    benchmark.group = f"clients-N{clients}"
    run = benchmark.pedantic(serving.run, args=(mode, clients), rounds=1, iterations=1)
    summary = serving.summary(run)
    benchmark.extra_info.update(mode=mode, clients=clients, summary=summary.to_dict(),
                                link_bytes=run.link_bytes, wall_s=run.wall_s,
                                shape=serving.config(mode, clients).shape.__dict__)
    save_records(request.config, mode, run)
    serve_points.append(ServePoint(mode, clients, summary))
    errors = [f"client {r.client} session {r.session}: {r.error}" for r in run.records if r.error]
    assert not errors, "\n".join(errors[:5])
    agreed = agreement(opts.spec, opts.device, opts.seed, opts.prompt_len, run.records)
    benchmark.extra_info.update(tokens_agree_share=agreed.share, tokens_parted=agreed.parted)
    if opts.spec.dtype == "fp32":  # bf16's batched products may round apart: reported, not failed
        assert not agreed.parted, "\n".join(agreed.parted[:5])
