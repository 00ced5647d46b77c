"""The plan's testbed projected, with how far the projection is checked (issues 13 and 27).

The plan's six-row table for Llama-2-7B, Llama-3-8B and Llama-3-70B shapes in fp16 on a GPU host
with an A100 80GB SXM and a 25 GbE NIC, from the cost model (harness.predict.costmodel) fitted on
calibration runs of this suite.

    python -m harness.predict.project --calibration results/h200/llama-1b-100gbit/llama-1b.json \\
        [--calibration ...] [--check RUN.json] --out results/projected/

The first --calibration gives every per-call cost and rate; compute comes from the calibration of
the target's family nearest in layers (costmodel/family.py); each further calibration is fitted
too, and the tables show the latency its components would give beside. --check: a run measured but
fitted on by nothing, which the procedure predicts with its own GPU's parameters in place of the
A100's (projcheck.py); its errors open the page of the same model. Every figure is generated from
the JSONs and the constants in plantestbed.py (public specifications, each with its source); the
files name the command that made them. No A100 was measured: every page's first line says so."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.predict import projcheck as pc
from harness.predict.plantestbed import TARGETS, fits, target_shape
from harness.predict.projcalib import calibration_page
from harness.predict.projpages import checks_for, model_page
from harness.report.cli import report_written

__all__ = ["TARGETS", "command_of", "fits", "main", "target_shape", "write"]


def command_of(calibrations: list[str], out: Path, check: str | None = None) -> str:
    return ("python -m harness.predict.project " + " ".join(f"--calibration {c}" for c in calibrations)
            + (f" --check {check}" if check else "") + f" --out {out.as_posix().rstrip('/')}/")


def write(calibrations: list[str], out: Path, check: str | None = None) -> list[Path]:
    command = command_of(calibrations, out, check)
    calibs = [pc.calibration(c) for c in calibrations]
    ck = pc.checks(calibs, pc.calibration(check) if check else None)
    if check and not any(checks_for(t, ck) for t in TARGETS):
        raise ValueError(f"--check {check}: its model's shape is none of the targets': no page would show it")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in TARGETS:
        f = out / f"{t.slug}.md"
        f.write_text(model_page(t, ck, command))
        written.append(f)
    f = out / "calibration.md"
    f.write_text(calibration_page(ck, command))
    return written + [f]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.predict.project", description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", action="append", required=True,
                    help="a pytest-benchmark JSON of this suite on a GPU (repeatable; the first is primary)")
    ap.add_argument("--check", default=None, metavar="RUN.json",
                    help="a run of a target's model that no calibration is: the procedure predicts it")
    ap.add_argument("--out", type=Path, default=Path("results/projected"), help="folder for the tables")
    args = ap.parse_args(argv)
    return report_written("project", lambda: write(args.calibration, args.out, args.check))


if __name__ == "__main__":
    sys.exit(main())
