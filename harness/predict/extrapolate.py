"""Decode steps a run did not measure, predicted: the cost model (harness.predict.costmodel), fitted on
runs of few decode steps, predicts the same cells at more steps, labelled PREDICTED; the same
procedure run on a model where the longer decode was measured shows the model's error beside.

    python -m harness.predict.extrapolate --fit A.json [--fit B.json ...] --steps 50 \\
        [--check-fit C.json ... --check RUN.json] --out DIR

Why: an 8B naive decode moves 16 GB a step, so on the GPU machine its runs measure 10 steps where
the plan's table has 50 (issue 13, item 6). Writes DIR/README.md; every figure comes from the JSON.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from harness.predict import costmodel as cm
from harness.predict.heldout import grid
from harness.predict.sweepreport import md_table
from harness.report.cli import report_written
from harness.report.units import human_bytes

README = "README.md"


def at_steps(points: list[cm.Point], steps: int) -> list[cm.Point]:
    """The decode cells of points at another step count, nothing measured (prefill does not change)."""
    return [replace(p, steps=steps, measured=None) for p in points if p.phase == "decode"]


def anchored_s(c: cm.Components, p: cm.Point, steps: int) -> float:
    """p's measured latency times the model's ratio of `steps` to p's own steps: the model's shape
    carried from a measured point, so that its misfit there does not carry along."""
    (q,) = at_steps([p], steps)
    return p.measured.latency_s * cm.predict(c, q).latency_s / cm.predict(c, p).latency_s


def predicted_rows(c: cm.Components, points: list[cm.Point], steps: int) -> list[dict]:
    """Per decode cell: what was measured, the model at the measured steps (in-sample), and at `steps`
    from the model alone and anchored on the measured point."""
    rows = []
    for p, q in zip([p for p in points if p.phase == "decode"], at_steps(points, steps)):
        fitted, pred = cm.predict(c, p), cm.predict(c, q)
        rows.append({"Cell": p.label, "Steps measured": p.steps,
                     "Latency measured (s)": f"{p.measured.latency_s:.4f}",
                     "Model at those steps (s)": f"{fitted.latency_s:.4f}",
                     "In-sample error": f"{fitted.latency_s / p.measured.latency_s - 1:+.1%}",
                     f"PREDICTED, {steps} steps, model (s)": f"{pred.latency_s:.4f}",
                     f"PREDICTED, {steps} steps, anchored (s)": f"{anchored_s(c, p, steps):.4f}",
                     "Bytes measured": human_bytes(p.measured.bytes),
                     f"PREDICTED bytes, {steps} steps": human_bytes(pred.bytes)})
    return rows


def _cell(p: cm.Point) -> tuple:
    """A cell at a place in the grid, whatever its step count."""
    return p.model, p.mode, p.phase, *grid(p)


def check_lines(fit_on: list[Path], runs: list[Path]) -> list[str]:
    """The procedure on runs whose long decode was measured: fitted on fit_on, predicting the runs'
    decode cells, by the model alone and anchored on fit_on's point of the same cell and link."""
    if not runs:
        return ["No check run given: the model's error at this step count is not shown here.", ""]
    base, them = cm.load_all(fit_on), cm.load_all(runs)
    ev = cm.evaluate(base + them, base, lambda p: p.phase == "decode" and any(p is q for q in them))
    rows = cm.eval_rows(ev)
    for row, r in zip(rows, ev.rows):
        same = [b for b in base if _cell(b) == _cell(r.point)]
        anchored = anchored_s(ev.components, same[0], r.point.steps) if same else None
        row["Anchored (s)"] = "n/a (no fitted point of this cell and link)" if anchored is None else (
            f"{anchored:.4f} ({anchored / r.point.measured.latency_s - 1:+.1%})")
    lat, byt = ev.worst()
    return [f"Fitted the same way on {', '.join(f'`{r.as_posix()}`' for r in fit_on)} (decode steps "
            f"{', '.join(str(n) for n in sorted({p.steps for p in base}))}), predicting the decode cells of "
            f"{', '.join(f'`{r.as_posix()}`' for r in runs)} (decode steps "
            f"{', '.join(str(n) for n in sorted({p.steps for p in them}))}), all measured. "
            f"Worst error of the model alone: latency {lat:.1%}, bytes {byt:.3%} (magnitudes; targets 10% and 1%); "
            "the anchored figure and its error are in the last column.", "",
            md_table(rows), ""]


def write(fit_on: list[Path], steps: int, out: Path, check_fit: list[Path] = (), check: list[Path] = ()) -> list[Path]:
    points = cm.load_all(fit_on)
    if not any(p.phase == "decode" for p in points):
        raise ValueError(f"{', '.join(map(str, fit_on))}: no decode cell to extrapolate")
    c = cm.fit(points)
    gpus = sorted({p.run.gpu or p.run.device for p in points})
    command = " ".join(["python -m harness.predict.extrapolate", *[f"--fit {f.as_posix()}" for f in fit_on],
                        f"--steps {steps}", *[f"--check-fit {f.as_posix()}" for f in check_fit],
                        *[f"--check {f.as_posix()}" for f in check], f"--out {out.as_posix()}"])
    lines = [f"# PREDICTED: {', '.join(sorted({p.model for p in points}))} decode at {steps} steps "
             f"on {', '.join(gpus)}", "",
             f"Generated by `{command}` from the JSON named; do not edit by hand.", "",
             f"**PREDICTED, not measured** where a column says so: the cost model fitted on every cell of the "
             f"runs below (measured at {', '.join(str(n) for n in sorted({p.steps for p in points}))} decode "
             "steps) predicts the same cells, link and prompt at the step count the plan's table uses.", "",
             md_table(predicted_rows(c, points, steps)), "",
             "## The same procedure where every step was measured", "",
             *check_lines(list(check_fit), list(check)),
             "## Components of the fit", "",
             md_table(cm.component_rows(c), ["Term", "Value", "Unit", "From"]), ""]
    out.mkdir(parents=True, exist_ok=True)
    readme = out / README
    readme.write_text("\n".join(lines))
    return [readme]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.predict.extrapolate", description=__doc__.splitlines()[0])
    p.add_argument("--fit", type=Path, action="append", required=True, metavar="RUN.json",
                   help="a run whose cells the model is fitted on (repeatable: e.g. one per link rate)")
    p.add_argument("--steps", type=int, required=True, help="the decode steps to predict")
    p.add_argument("--check-fit", type=Path, action="append", default=[], metavar="RUN.json",
                   help="for the check: a run of another model, fitted on as --fit is (repeatable; COMMIT:PATH for "
                        "a run a later commit removed: results/history.toml)")
    p.add_argument("--check", type=Path, action="append", default=[], metavar="RUN.json",
                   help="for the check: a run of that model with --steps measured, which the check predicts")
    p.add_argument("--out", type=Path, required=True, help="the folder for README.md")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps {args.steps}: give the decode steps to predict, >= 1")
    if bool(args.check) != bool(args.check_fit):
        p.error("--check and --check-fit go together: the check fits on --check-fit and predicts --check")
    return report_written("extrapolate", lambda: write(args.fit, args.steps, args.out, args.check_fit, args.check))


if __name__ == "__main__":
    sys.exit(main())
