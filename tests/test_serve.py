"""harness.serve: load shapes (seeded arrivals, each client's sessions and prompts), per-request
records and their summary on hand-made records, and the report. Pure library: no processes."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from harness.errors import UsageError
from harness.serve.load import LoadShape, arrivals, plan, prompt_ids
from harness.serve.metrics import RequestRecord, Summary, summarize
from harness.serve.report import COLUMNS, ServePoint, markdown, plot


def gaps(shape: LoadShape) -> np.ndarray:
    return np.diff(arrivals(shape))


def test_arrivals_are_reproducible_and_seeded():
    shape = LoadShape(clients=4, request_rate=10.0, sessions=200, seed=7)
    assert arrivals(shape) == arrivals(LoadShape(clients=4, request_rate=10.0, sessions=200, seed=7))
    assert arrivals(shape) != arrivals(LoadShape(clients=4, request_rate=10.0, sessions=200, seed=8))
    assert arrivals(shape)[0] == 0.0 and len(arrivals(shape)) == 200
    assert all(b > a for a, b in zip(arrivals(shape), arrivals(shape)[1:]))


# 20000 gaps: the mean's relative standard error is sqrt(CV²/n) <= 0.015 (burstiness 0.25), so 5%
# is over 3 of them; the sample CV²'s is about sqrt((kurtosis - 1)/n) <= 0.04, so 20% is over 5
@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gaps_have_the_rate_and_gamma_variance(burstiness):
    g = gaps(LoadShape(clients=1, request_rate=50.0, burstiness=burstiness, sessions=20001, seed=1))
    assert g.mean() == pytest.approx(1 / 50.0, rel=0.05)
    assert g.var() / g.mean() ** 2 == pytest.approx(1 / burstiness, rel=0.2)


def test_duration_bounds_arrivals_and_the_schedule_does_not_depend_on_the_bound():
    by_time = arrivals(LoadShape(clients=2, request_rate=100.0, duration_s=30.0, seed=3))
    assert max(by_time) < 30.0
    assert len(by_time) == pytest.approx(3000, rel=0.1)  # Poisson: sd sqrt(3000) ~ 1.8%
    by_count = arrivals(LoadShape(clients=2, request_rate=100.0, sessions=len(by_time) + 500, seed=3))
    assert by_count[:len(by_time)] == by_time
    both = arrivals(LoadShape(clients=2, request_rate=100.0, duration_s=30.0, sessions=10, seed=3))
    assert both == by_time[:10]


def test_closed_loop_has_no_arrivals():
    with pytest.raises(UsageError, match="request_rate"):
        arrivals(LoadShape(clients=2, sessions=4))


def test_closed_loop_plan_gives_each_client_its_own_prompts_reproducibly():
    shape = LoadShape(clients=3, sessions=10, seed=5)
    p = plan(shape)
    assert p == plan(LoadShape(clients=3, sessions=10, seed=5))
    sessions = [list(c) for c in p]
    assert [len(s) for s in sessions] == [4, 3, 3]
    assert sorted(s.session for c in sessions for s in c) == list(range(10))
    assert all(s.client == c and s.scheduled_s is None for c, ss in enumerate(sessions) for s in ss)
    prompts = [tuple(s.prompt(16, 50257)) for c in sessions for s in c]
    assert len(set(prompts)) == len(prompts)
    assert prompts == [tuple(s.prompt(16, 50257)) for c in plan(shape) for s in c]
    other = [tuple(s.prompt(16, 50257)) for c in plan(LoadShape(clients=3, sessions=10, seed=6)) for s in c]
    assert not set(other) & set(prompts)


def test_closed_loop_until_duration_is_unbounded_round_robin():
    p = plan(LoadShape(clients=4, duration_s=1.0))
    assert all(c.count is None for c in p)
    assert [s.session for s in itertools.islice(p[1], 3)] == [1, 5, 9]


def test_open_loop_plan_deals_arrivals_round_robin():
    shape = LoadShape(clients=3, request_rate=20.0, sessions=11, seed=2)
    when = arrivals(shape)
    sessions = sorted((s for c in plan(shape) for s in c), key=lambda s: s.session)
    assert [s.session for s in sessions] == list(range(11))
    assert [s.scheduled_s for s in sessions] == when
    assert [s.client for s in sessions] == [i % 3 for i in range(11)]


def test_prompt_ids_are_deterministic_and_in_the_vocabulary():
    ids = prompt_ids(123, 64, 1000)
    assert ids == prompt_ids(123, 64, 1000) and ids != prompt_ids(124, 64, 1000)
    assert len(ids) == 64 and all(isinstance(i, int) and 0 <= i < 1000 for i in ids)


@pytest.mark.parametrize("kwargs, option", [
    ({"clients": 0, "sessions": 1}, "clients"),
    ({"clients": 1, "request_rate": 0.0, "sessions": 1}, "request_rate"),
    ({"clients": 1, "request_rate": float("inf"), "sessions": 1}, "request_rate"),
    ({"clients": 1, "request_rate": 1.0, "burstiness": 0.0, "sessions": 1}, "burstiness"),
    ({"clients": 1}, "duration_s and sessions"),
    ({"clients": 1, "duration_s": -1.0}, "duration_s"),
    ({"clients": 1, "sessions": 0}, "sessions"),
    ({"clients": 1, "sessions": 1, "seed": -1}, "seed"),
])
def test_validation_errors_are_one_line_naming_the_option(kwargs, option):
    with pytest.raises(UsageError) as e:
        LoadShape(**kwargs)
    assert str(e.value).startswith(option) and "\n" not in str(e.value)


def rec(client, session, start, times, finished=True, error=None) -> RequestRecord:
    return RequestRecord(client, session, None, start, times[0] if times else None, list(times),
                         list(range(len(times))), finished, error)


# times in 1/8 s, so every difference below is exact
RECORDS = [rec(0, 0, 0.0, [0.25, 0.5, 0.75, 1.0]),         # ttft .25, tpot .25
           rec(1, 1, 0.0, [0.5, 1.0, 1.5]),                # ttft .5, tpot .5
           rec(2, 2, 0.0, [0.125]),                        # one token: no tpot
           rec(0, 3, 1.0, [1.5, 2.0], finished=False),     # the duration ended it
           rec(1, 4, 1.5, [], error="worker gone")]


def test_a_record_has_vllm_ttft_tpot_and_itl():
    r = RECORDS[0]
    assert (r.ttft_s, r.tpot_s, r.itl_s) == (0.25, 0.25, [0.25, 0.25, 0.25])
    assert RECORDS[2].tpot_s is None and RECORDS[4].ttft_s is None
    queued = RequestRecord(0, 0, 1.0, 1.5, 2.0, [2.0], [7], True, None)
    assert queued.queue_s == 0.5 and r.queue_s is None


def test_records_round_trip_through_json_lines():
    lines = "\n".join(json.dumps(r.to_dict()) for r in RECORDS)
    assert [RequestRecord.from_dict(json.loads(line)) for line in lines.splitlines()] == RECORDS
    d = RECORDS[0].to_dict()
    del d["token_times_s"]
    with pytest.raises(ValueError, match="token_times_s"):
        RequestRecord.from_dict(d)


def test_summary_of_hand_made_records():
    s = summarize(RECORDS, link_bytes=1000, slo_tpot_s=0.3)
    assert (s.finished, s.unfinished, s.errors, s.output_tokens, s.duration_s) == (3, 1, 1, 10, 2.0)
    assert s.tokens_per_s == 5.0          # the unfinished request's 2 tokens count
    assert s.requests_per_s == 1.5        # finished ones only
    assert s.link_bytes_per_token == 100.0
    # linear percentiles: TTFT of the finished [.125, .25, .5], TPOT [.25, .5], ITL [.25 x3, .5 x2]
    assert (s.ttft_p50_s, s.ttft_p90_s, s.ttft_p99_s) == pytest.approx((0.25, 0.45, 0.495), rel=1e-12)
    assert (s.tpot_p50_s, s.tpot_p90_s, s.tpot_p99_s) == pytest.approx((0.375, 0.475, 0.4975), rel=1e-12)
    assert (s.itl_p50_s, s.itl_p99_s) == (0.25, 0.5)
    assert s.goodput_per_s == 1.0         # .25 and the one-token request pass, .5 misses: 2 / 2 s
    assert summarize(RECORDS, None, 0.3, slo_ttft_s=0.2).goodput_per_s == 0.5  # only the .125 one
    none = summarize(RECORDS, None, None)
    assert none.goodput_per_s is None and none.link_bytes_per_token is None
    assert Summary.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_summary_of_nothing_says_so():
    with pytest.raises(ValueError, match="no request records"):
        summarize([], None, None)


def test_report_renders_a_table_and_two_plots(tmp_path):
    s = summarize(RECORDS, link_bytes=1000, slo_tpot_s=0.3)
    points = [ServePoint(m, n, s) for m in ("sys_simulated", "naive", "local") for n in (4, 1, 16)]
    table = markdown(points).splitlines()
    assert table[0] == "| " + " | ".join(COLUMNS) + " |" and len(table) == 2 + 9
    assert table[2].startswith("| local | 1 | 5.0 | 250.00 | 495.00 | 375.00 | 497.50 | 100 B | 1.00 | 3/1 (1 failed) |")
    paths = plot(points, tmp_path, "gpt2 (fp16) on NVIDIA H100, commit 0123456")
    assert [p.name for p in paths] == ["serve_tokens_per_s.png", "serve_tpot_p99.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_the_report_is_made_again_from_a_clients_runs_json(tmp_path):
    """python -m harness.serve.report OUT.json: the table and the plots from the JSON alone (its
    clients cases' extra_info), titled from its machine_info; a JSON without a clients case is one
    line and exit 2."""
    import json
    from harness.serve.report import main
    s = summarize(RECORDS, link_bytes=1000, slo_tpot_s=0.3).to_dict()
    cases = [{"name": f"test_clients[N{n}-{m}]", "extra_info": {"mode": m, "clients": n, "summary": s}}
             for m in ("local", "sys_simulated") for n in (1, 4)]
    data = {"benchmarks": [{"name": "test_cell[decode-local]", "extra_info": {}}, *cases],
            "machine_info": {"semantic_gap": {"model": "tiny", "dtype": "fp32", "command": ["pytest", "benchmarks"]}},
            "commit_info": {"id": "0123456789abcdef"}}
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert main([str(tmp_path / "run.json")]) == 0
    table = (tmp_path / "clients.md").read_text()
    assert "| local | 4 | 5.0 |" in table and "| sys_simulated | 1 |" in table and "test_cell" not in table
    assert (tmp_path / "serve_tokens_per_s.png").exists() and (tmp_path / "serve_tpot_p99.png").exists()
    (tmp_path / "none.json").write_text(json.dumps(data | {"benchmarks": data["benchmarks"][:1]}))
    assert main([str(tmp_path / "none.json")]) == 2
