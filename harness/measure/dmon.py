"""
Parse and capture `nvidia-smi dmon` logs.

dmon prints a '# gpu ...' header plus a '# Idx ...' units line, repeats them
every so often in long runs, and with `-o D`/`-o T` puts Date/Time columns in
front. So columns are located by name from the latest header, never by fixed
position.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

MISSING = "-"  # dmon prints '-' where a metric is not available for a sample
CAPTURE_HINT = "capture with `nvidia-smi dmon -s u`"

# -----------------------------------------------------------------------------
# parsing


@dataclass(frozen=True)
class DmonSeries:
    gpu: int
    column: str
    values: list[float]  # samples in log order, '-' entries left out
    samples_skipped: int  # how many '-' entries were left out

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> Optional[float]:
        # None rather than 0.0: "no data" must not look like "idle GPU"
        return sum(self.values) / len(self.values) if self.values else None


def _header_fields(line: str) -> Optional[list[str]]:
    """Column names if `line` is a dmon header ('# gpu sm ...', '#Date Time gpu ...'), else None.
    The units line ('# Idx % ...', '#YYYYMMDD HH:MM:SS Idx ...') has no 'gpu' field, so it is rejected."""
    if not line.startswith("#"):
        return None
    fields = [f.lower() for f in line[1:].split()]
    return fields if "gpu" in fields else None


def _parse_value(raw: str, lineno: int) -> Optional[float]:
    if raw == MISSING:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"line {lineno}: value {raw!r} is neither a number nor '-'; "
                         f"is this an unmodified `nvidia-smi dmon` log?") from None


def parse_dmon(text: str, gpu: int = 0, column: str = "sm") -> DmonSeries:
    """Collect `column` for `gpu` from dmon output `text`."""
    column = column.lower()
    header: Optional[list[str]] = None
    values: list[float] = []
    skipped = 0
    gpus_seen: list[int] = []

    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            fields = _header_fields(line)
            if fields is not None:
                if column not in fields:
                    present = " ".join(f for f in fields if f not in ("date", "time", "gpu"))
                    raise ValueError(f"column {column!r} not in dmon header (columns: {present}); "
                                     f"pick one of those, or capture with the `-s` group that has it")
                header = fields
            continue
        if header is None:
            continue  # rows before any header carry no column names to read them by
        row = line.split()
        # a row cut short (capture killed mid-write) can't be matched to columns; drop it
        if len(row) != len(header):
            continue
        try:
            row_gpu = int(row[header.index("gpu")])
        except ValueError:
            continue
        if row_gpu not in gpus_seen:
            gpus_seen.append(row_gpu)
        if row_gpu != gpu:
            continue
        value = _parse_value(row[header.index(column)], lineno)
        if value is None:
            skipped += 1
        else:
            values.append(value)

    if header is None:
        raise ValueError(f"not an nvidia-smi dmon log: no '# gpu ...' header line; {CAPTURE_HINT}")
    if gpu not in gpus_seen:
        present = ", ".join(str(g) for g in gpus_seen) or "none"
        raise ValueError(f"no rows for gpu {gpu} (gpus present: {present}); pass one of those with --gpu")
    return DmonSeries(gpu=gpu, column=column, values=values, samples_skipped=skipped)


# -----------------------------------------------------------------------------
# capture


@dataclass
class DmonMonitor:
    """Runs `nvidia-smi dmon` in the background while a benchmark runs.

    with DmonMonitor(Path("runs/dmon.log")) as mon:
        run_benchmark()
    series = parse_dmon(mon.text)
    """

    log_path: Path
    interval_s: int = 1
    gpu: int = 0
    # e.g. ["ip", "netns", "exec", "ns"] or ["ssh", "host"]: where nvidia-smi should run
    prefix: list[str] = field(default_factory=list)
    text: str = field(default="", init=False)
    _proc: Optional[subprocess.Popen] = field(default=None, init=False, repr=False)
    _log: Optional[IO[bytes]] = field(default=None, init=False, repr=False)

    @staticmethod
    def available(prefix: list[str] = ()) -> bool:
        """True iff nvidia-smi lists GPUs where it would run (prefix: the GPU host's command
        prefix, e.g. `ip netns exec NS` or ssh; empty: this machine)."""
        try:
            r = subprocess.run([*prefix, "nvidia-smi", "-L"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0

    def argv(self) -> list[str]:
        return [*self.prefix, "nvidia-smi", "dmon", "-s", "u",
                "-d", str(self.interval_s), "-i", str(self.gpu)]

    def start(self, timeout_s: float = 3.0) -> "DmonMonitor":
        if self._proc is not None:
            raise RuntimeError("DmonMonitor already started; call stop() first")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        try:
            # stderr goes to the log too: an error message there is better than a silent empty log,
            # and parse_dmon ignores lines that don't fit the header
            self._proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                          stdout=self._log, stderr=subprocess.STDOUT)
        except BaseException:
            self.stop()
            raise
        self._wait_started(timeout_s)
        return self

    def _wait_started(self, timeout_s: float) -> None:
        """Until dmon prints its header: nvidia-smi's start-up (NVML init, device queries) then
        is over and cannot overlap the measured region, where it slowed a call measurably
        (docs/evidence.md). A dmon that fails prints no header; its log says why and parse_dmon
        reports it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._proc.poll() is None:
            if b"# gpu" in self.log_path.read_bytes():
                return
            time.sleep(0.02)

    def stop(self) -> str:
        """Stop our own dmon process (SIGINT, then kill after 5 s) and return the log text. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # lets dmon flush its last line
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path.exists():
            self.text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return self.text

    def __enter__(self) -> "DmonMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
