"""
Average one column of an `nvidia-smi dmon` log.

    python parse_dmon.py runs/dmon.log                 # avg sm 2.35 % over 27 samples (gpu 0)
    python parse_dmon.py runs/dmon.log --gpu 1 --column mem --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.measure.dmon import parse_dmon


def fail(msg: str) -> None:
    # one line, so callers (CI, shell scripts) can grep it
    print(f"parse_dmon: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Average one column of an `nvidia-smi dmon` log.")
    ap.add_argument("log", type=Path, help="dmon log, e.g. from `nvidia-smi dmon -s u > dmon.log`")
    ap.add_argument("--gpu", type=int, default=0, help="GPU index (the dmon 'gpu' column)")
    ap.add_argument("--column", default="sm", help="column to average: sm, mem, enc, dec, ...")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    args = ap.parse_args(argv)

    try:
        text = args.log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        fail(f"{args.log}: no such file; pass the path of an `nvidia-smi dmon` log")
    except OSError as e:
        fail(f"{args.log}: cannot read ({e.strerror}); pass a readable `nvidia-smi dmon` log file")
    try:
        s = parse_dmon(text, gpu=args.gpu, column=args.column)
    except ValueError as e:
        fail(f"{args.log}: {e}")
    if s.n == 0:
        # every sample was '-': an average of nothing would read as a real number downstream
        fail(f"{args.log}: column {s.column!r} of gpu {s.gpu} has only '-' values "
             f"({s.samples_skipped} samples); pick a column this GPU reports")

    if args.json:
        print(json.dumps({"gpu": s.gpu, "column": s.column, "mean": s.mean,
                          "n": s.n, "samples_skipped": s.samples_skipped}))
    else:
        print(f"avg {s.column} {s.mean:.2f} % over {s.n} samples (gpu {s.gpu})")


if __name__ == "__main__":
    main()
