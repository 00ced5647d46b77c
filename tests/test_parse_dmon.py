import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT))

from harness.measure.dmon import DmonMonitor, DmonSeries, parse_dmon  # noqa: E402

H100 = DATA / "dmon-h100-1gpu.log"
TWO_GPU = DATA / "dmon-2gpu-repeated-headers.log"
STAMPED = DATA / "dmon-timestamped.log"


def read(p: Path) -> str:
    return p.read_text()


# -----------------------------------------------------------------------------
# parse_dmon


def test_real_h100_log_mean():
    # by hand from the file: 27 samples, all sm 0 except 1, 2, 3
    expected_sm = [0] * 22 + [1, 2, 3] + [0, 0]
    s = parse_dmon(read(H100))
    assert s == DmonSeries(gpu=0, column="sm", values=[float(v) for v in expected_sm], samples_skipped=0)
    assert s.n == 27
    assert s.mean == pytest.approx(6 / 27)


def test_gpu_selection_on_two_gpu_log():
    # constructed log: gpu 0 sm = 2*i with sample 7 '-', gpu 1 sm = 50 + i, i in 0..24
    g0 = parse_dmon(read(TWO_GPU), gpu=0)
    assert g0.values == [float(2 * i) for i in range(25) if i != 7]
    assert g0.mean == pytest.approx((600 - 14) / 24)
    g1 = parse_dmon(read(TWO_GPU), gpu=1)
    assert g1.values == [float(50 + i) for i in range(25)]
    assert g1.mean == pytest.approx(62.0)


def test_repeated_headers_are_skipped():
    text = read(TWO_GPU)
    assert text.count("# gpu") == 3  # the fixture really does repeat the header
    s = parse_dmon(text, gpu=1, column="mem")
    assert s.n + s.samples_skipped == 25
    assert s.values == [float(10 + i % 3) for i in range(25)]


def test_dash_counted_in_samples_skipped():
    text = read(TWO_GPU)
    sm = parse_dmon(text, gpu=0, column="sm")
    assert (sm.n, sm.samples_skipped) == (24, 1)
    enc = parse_dmon(text, gpu=1, column="enc")
    assert (enc.n, enc.samples_skipped) == (25 - 9, 9)  # i % 3 == 0
    dec = parse_dmon(text, gpu=1, column="dec")
    assert (dec.n, dec.samples_skipped) == (25 - 7, 7)  # i % 4 == 0


def test_all_dashes_gives_no_mean():
    text = "# gpu sm\n# Idx %\n 0 -\n 0 -\n"
    s = parse_dmon(text)
    assert (s.n, s.samples_skipped, s.mean) == (0, 2, None)


def test_timestamp_columns_handled():
    s = parse_dmon(read(STAMPED), column="sm")
    assert s.values == [0.0, 35.0, 97.0, 98.0, 96.0, 40.0, 2.0]
    assert s.samples_skipped == 1
    assert s.mean == pytest.approx(368 / 7)
    mem = parse_dmon(read(STAMPED), column="mem")
    assert mem.values == [float(3 * i) for i in range(8)]


def test_column_found_by_latest_header():
    # the same log restarted with -o T halfway: sm moves from field 1 to field 2
    text = ("# gpu sm mem\n# Idx % %\n 0 10 90\n"
            "#Time gpu sm mem\n#HH:MM:SS Idx % %\n 10:00:00 0 20 80\n")
    assert parse_dmon(text).values == [10.0, 20.0]


def test_error_not_dmon():
    with pytest.raises(ValueError, match=r"not an nvidia-smi dmon log: no '# gpu \.\.\.' header line"):
        parse_dmon("hello\nworld\n")


def test_error_missing_column():
    with pytest.raises(ValueError, match=r"column 'pwr' not in dmon header \(columns: sm mem enc dec jpg ofa\)"):
        parse_dmon(read(H100), column="pwr")


def test_error_missing_gpu():
    with pytest.raises(ValueError, match=r"no rows for gpu 3 \(gpus present: 0, 1\)"):
        parse_dmon(read(TWO_GPU), gpu=3)


# -----------------------------------------------------------------------------
# CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "parse_dmon.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_good_log():
    r = cli(str(H100))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "avg sm 0.22 % over 27 samples (gpu 0)"


def test_cli_json():
    r = cli(str(TWO_GPU), "--gpu", "1", "--column", "enc", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"gpu": 1, "column": "enc", "mean": 0.0, "n": 16, "samples_skipped": 9}


@pytest.mark.parametrize("args", [
    ("tests/data/no-such.log",),
    ("tests/data/README.md",),
    ("tests/data/dmon-h100-1gpu.log", "--column", "pwr"),
    ("tests/data/dmon-h100-1gpu.log", "--gpu", "5"),
])
def test_cli_bad_input(args):
    r = cli(*args)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("parse_dmon: error:"), r.stderr
    assert r.stdout == ""


# -----------------------------------------------------------------------------
# DmonMonitor


@pytest.mark.skipif(not DmonMonitor.available(), reason="no nvidia-smi on this machine")
def test_monitor_captures_samples(tmp_path):
    log = tmp_path / "dmon.log"
    with DmonMonitor(log, interval_s=1) as mon:
        time.sleep(2.5)
    assert mon.text == log.read_text()
    s = parse_dmon(mon.text)
    assert s.n + s.samples_skipped >= 1


def test_monitor_stops_when_command_missing(tmp_path):
    mon = DmonMonitor(tmp_path / "dmon.log", prefix=["/nonexistent/launcher"])
    with pytest.raises(OSError):
        mon.start()
    assert mon.stop() == ""  # nothing left running, stop stays safe to call


def test_real_h100_log_with_repeated_headers():
    """A whole suite run on the H100: dmon repeated its two header lines mid-log (six times:
    file lines 1-2, 47-48, 93-94, 139-140, 185-186, 231-232). By hand from the file: 254 lines,
    12 of them headers, 242 samples, all of gpu 0, none '-'; the sm column sums to 1479 (119
    samples at 0, the busiest 19 at line 90), the mem column to 84."""
    text = (DATA / "dmon-h100-repeated-headers.log").read_text()
    series = parse_dmon(text, gpu=0, column="sm")
    assert (series.gpu, series.column, series.n, series.samples_skipped) == (0, "sm", 242, 0)
    assert sum(series.values) == 1479
    assert series.mean == pytest.approx(1479 / 242)  # 6.1116
    assert series.values.count(0.0) == 119 and max(series.values) == 19.0
    # samples in log order across the repeated headers: file line L after h header lines is
    # sample L - 1 - h (line 57: the first busy sample, 10; line 90: 19; line 95, after the third
    # header pair: 14; line 246, the last busy one: 4; lines 247-254 idle)
    assert series.values[:52] == [0.0] * 52
    assert (series.values[52], series.values[85], series.values[88], series.values[233]) == (10.0, 19.0, 14.0, 4.0)
    assert series.values[234:] == [0.0] * 8
    mem = parse_dmon(text, gpu=0, column="mem")
    assert (mem.n, sum(mem.values)) == (242, 84)
