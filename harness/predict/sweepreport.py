"""A sweep's README and plots, from its points' JSON (harness.sweep wrote them):

    python -m harness.predict.sweepreport results/cpu/sweep-gpt2

- per point and cell: measured latency and link bytes;
- the cost model (harness.predict.costmodel) fitted on the grid's corners (the lowest and highest
  link rate, prompt and added round trip: measure the extremes, predict the inside) and its
  error on every other point, held out, per point and cell;
- with --predict RUN.json: the model fitted on the whole sweep predicting runs outside it (a
  50-step run from a 10-step sweep), each cell with its error;
- with --repeat-of FOLDER: each cell against the same cell at the same point of another sweep of
  the grid, the largest difference per cell: how far one measurement repeats from run to run;
- plots, PNG beside the README: latency against link rate per mode (log-log; measured points, the
  model's line through the grid), bytes per output token against context length, the measured time
  breakdown of each cell at each point (stacked), and dmon's SM% per mode (GPU sweeps).
Every figure comes from the JSON: the README is regenerated, never edited.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from harness.compute.modes import MODES
from harness.measure.results import SWEEP_INDEX, load_infos, point_files
from harness.predict import costmodel as cm
from harness.report.analysis import TIME_PARTS
from harness.report.cli import report_written
from harness.report.plots import LEGEND_PT, LINE_STYLES, MODE_STYLE, provenance, pyplot, style_legend, ticks_at
from harness.report.tables import markdown_table
from harness.report.units import human_bytes

README = "README.md"


def _rate(p: cm.Point) -> float:
    """A point's link rate for plotting: unshaped at the rate its iperf3 measured."""
    return p.link.nominal_gbps or p.link.goodput_Bps * 8 / 1e9


def _grid_rate(p: cm.Point) -> float:
    """A point's link rate as the grid names it: unshaped is the fastest (each unshaped point
    measures its own iperf3, so their measured rates differ)."""
    return p.link.nominal_gbps or math.inf


def grid(p: cm.Point) -> tuple:
    """A point's place in the grid: link rate, prompt length, added round trip."""
    return _grid_rate(p), p.prompt_len, p.link.rtt_s


def corners(points: list[cm.Point]) -> list[cm.Point]:
    """The points at the grid's extremes: lowest or highest on every axis (link rate, prompt, added
    round trip), every cell of them; an axis the sweep does not vary keeps its one value."""
    ends = [(min(v), max(v)) for v in zip(*{grid(p) for p in points})]
    return [p for p in points if all(x in end for x, end in zip(grid(p), ends))]


def cell_rows(points: list[cm.Point]) -> list[dict]:
    return [{"Point": p.label, "Latency (s)": f"{p.measured.latency_s:.4f}",
             "Link bytes": human_bytes(p.measured.bytes), "Run": Path(p.run.path).name if p.run else ""}
            for p in points]


def repeatability_rows(points: list[cm.Point]) -> list[dict]:
    """The local cells at each prompt length across the sweep's points: the link and the round trip
    do not touch them, so their spread is how far the machine repeats itself from one point's
    process to the next, a floor under any model's error on the cells that compute."""
    rows = []
    for phase in ("prefill", "decode"):
        for prompt in sorted({p.prompt_len for p in points}):
            same = [p.measured.latency_s for p in points
                    if p.mode == "local" and p.phase == phase and p.prompt_len == prompt]
            if len(same) > 1:
                lo, hi = min(same), max(same)
                rows.append({"Cell": f"{phase}-local", "Prompt": prompt, "Points": len(same),
                             "Fastest (s)": f"{lo:.4f}", "Slowest (s)": f"{hi:.4f}",
                             "Slowest ÷ fastest": f"{hi / lo:.2f}"})
    return rows


def summary_rows(ev: cm.Evaluation) -> list[dict]:
    """Per mode and phase, the largest held-out errors: what the targets (10%, 1%) are read against;
    beside each, the largest standard error of a held-out point's own mean (its rounds' spread): an
    error no larger than that is within what the measurement itself can tell."""
    rows = []
    for phase in ("prefill", "decode"):
        for mode in MODES:
            held = [r for r in ev.held_out() if r.point.phase == phase and r.point.mode == mode]
            if not held:
                continue
            lat = max(abs(r.latency_error) for r in held)
            byt = [abs(r.bytes_error) for r in held if r.bytes_error is not None]
            lat_se = _largest_se(held, "latency_se_s", "latency_s")
            byt_se = _largest_se(held, "bytes_se", "bytes") if byt else None
            rows.append({"Phase": phase, "Mode": mode, "Held-out points": len(held),
                         "Worst latency error": f"{lat:.1%}",
                         "Latency's own standard error (largest)": _pct(lat_se, 1),
                         "Worst bytes error": f"{max(byt):.3%}" if byt else "n/a (local)",
                         "Bytes' own standard error (largest)": _pct(byt_se, 3) if byt else "n/a (local)"})
    return rows


def _largest_se(rows, se: str, mean: str) -> float | None:
    """The largest relative standard error (se / mean) among rows' measured points; None where none has one."""
    vals = [getattr(r.point.measured, se) / getattr(r.point.measured, mean) for r in rows
            if getattr(r.point.measured, se) is not None and getattr(r.point.measured, mean)]
    return max(vals, default=None)


def write(folder: Path, predict: list[Path] = (), repeat_of: Path | None = None) -> list[Path]:
    """The README and plots; predict: runs outside the sweep (another step count, say) that the
    model, fitted on every point of it, predicts, each cell with its error; repeat_of: another
    sweep of the same grid, each cell compared with its measure there (how far a cell repeats)."""
    files = point_files(folder)
    if not files:
        raise ValueError(f"{folder}: no point JSON: run python -m harness.sweep --out {folder} first")
    points = sorted(cm.load_all(files), key=lambda p: (p.phase, p.mode, p.prompt_len, _grid_rate(p)))
    fit_on = corners(points)
    ev = cm.evaluate(points, fit_on, points)
    pngs = plot(folder, points, ev, files)
    lat, byt = ev.worst()
    command = " ".join(["python -m harness.predict.sweepreport", folder.as_posix(),
                        *[f"--predict {r.as_posix()}" for r in predict],
                        *([f"--repeat-of {repeat_of.as_posix()}"] if repeat_of else [])])
    lines = [f"# Sweep `{folder.as_posix()}`", "",
             f"Generated by `{command}` from the {len(files)} point "
             f"JSON files here; do not edit by hand. The sweep's command and each point's status: `{SWEEP_INDEX}`.",
             "", "## Cells, measured", "", md_table(cell_rows(points)), "",
             "## The cost model on this sweep", "",
             f"Fitted on the grid's corners ({len({grid(p) for p in fit_on})} of {len({grid(p) for p in points})} "
             "points: lowest and highest link rate, shortest and longest prompt, least and most round trip "
             "added, where the sweep varies them), predicting every point; held out = not fitted on. Targets: "
             "latency within 10%, bytes within 1%.", "",
             f"Worst held-out error: latency {_pct(lat, 1)}, bytes {_pct(byt, 3)}. Beside each, the largest "
             "standard error of a held-out point's own mean (its rounds' spread / sqrt(rounds)): an error "
             "within about two of those is as close as the point's own rounds agree.", "",
             md_table(summary_rows(ev)) if ev.held_out() else "No point is held out: the grid has only corners.",
             "", md_table(cm.eval_rows(ev)), "", "Components of this fit:", "",
             md_table(cm.component_rows(ev.components), ["Term", "Value", "Unit", "From"]), "",
             *_repeatability(points), *repeated(points, repeat_of),
             *outside(points, predict), "## Plots", "",
             *[f"![{p.stem}]({p.name})" for p in pngs], ""]
    readme = folder / README
    readme.write_text("\n".join(lines))
    return [readme, *pngs]


def _repeatability(points: list[cm.Point]) -> list[str]:
    rows = repeatability_rows(points)
    if not rows:
        return []
    return ["## How far the machine repeats itself", "",
            "The local cells do not use the link: across the points they are the same work, measured in "
            "another process at another time. Their spread bounds how close any model can come to the cells "
            "that compute (local, and sys_simulated, which is mostly compute).", "",
            md_table(rows), ""]


def repeat_rows(points: list[cm.Point], earlier: list[cm.Point]) -> list[dict]:
    """Per cell, the largest difference of its latency and link bytes from the same cell at the same
    point of another run of the grid: the run-to-run spread of one measurement, which no model of
    the link and the workload can undercut."""
    theirs = {(grid(p), p.phase, p.mode): p for p in earlier}
    rows = []
    for phase in ("prefill", "decode"):
        for mode in MODES:
            pairs = [(p, theirs[(grid(p), phase, mode)]) for p in points
                     if p.phase == phase and p.mode == mode and (grid(p), phase, mode) in theirs]
            if not pairs:
                continue
            lat, lat_at = _largest_difference(pairs, "latency_s")
            byt, byt_at = _largest_difference(pairs, "bytes") if MODES[mode].remote else (None, "")
            rows.append({"Phase": phase, "Mode": mode, "Points in both": len(pairs),
                         "Largest latency difference": f"{lat:+.1%}", "At (latency)": lat_at,
                         "Largest bytes difference": "n/a (local)" if byt is None else f"{byt:+.3%}",
                         "At (bytes)": byt_at})
    return rows


def _largest_difference(pairs: list[tuple[cm.Point, cm.Point]], field: str) -> tuple[float, str]:
    """The largest relative difference of measured `field` over (this, earlier) pairs, and its point."""
    def diff(pair):
        return getattr(pair[0].measured, field) / getattr(pair[1].measured, field) - 1
    worst = max(pairs, key=lambda pair: abs(diff(pair)))
    return diff(worst), worst[0].label.rsplit(" ", 1)[0]


def repeated(points: list[cm.Point], other: Path | None) -> list[str]:
    """README lines: this sweep's cells against another run of the same grid (repeat_rows)."""
    if other is None:
        return []
    files = point_files(other)
    if not files:
        raise ValueError(f"--repeat-of {other}: no point JSON there (a sweep's --out folder)")
    rows = repeat_rows(points, cm.load_all(files))
    if not rows:
        raise ValueError(f"--repeat-of {other}: no point of it is in this sweep's grid")
    mine, theirs = _commits(sorted({Path(p.run.path) for p in points if p.run})), _commits(files)
    same = "the same code" if mine == theirs else "other code: a difference may be the code's"
    return [f"## The same cells in another run: `{other.as_posix()}`", "",
            f"Each cell against the same cell at the same point of that sweep: another process at another "
            f"time, here at {', '.join(mine)}, there at {', '.join(theirs)} ({same}). Where the code is "
            "the same, the difference is the measurement's own reproducibility, under which no model's "
            "held-out error can be expected.", "", md_table(rows), ""]


def _commits(files: list[Path]) -> list[str]:
    """The commits a sweep's point JSONs ran at (pytest-benchmark's commit_info), short."""
    ids = {(json.loads(Path(f).read_text()).get("commit_info") or {}).get("id") or "?" for f in files}
    return sorted(i[:7] for i in ids)


def outside(points: list[cm.Point], runs: list[Path]) -> list[str]:
    """README lines: the model fitted on every point of the sweep, predicting runs it has not seen
    (a 50-step run from a 10-step sweep: how far its per-step terms carry)."""
    if not runs:
        return []
    them = cm.load_all(runs)
    ev = cm.evaluate(points + them, points, them)
    steps = sorted({p.steps for p in them})
    return ["## Runs outside the sweep, predicted", "",
            f"Fitted on every point of this sweep ({len({grid(p) for p in points})} points, decode steps "
            f"{', '.join(str(n) for n in sorted({p.steps for p in points}))}), predicting every cell of "
            f"{', '.join(f'`{r.as_posix()}`' for r in runs)} (decode steps {', '.join(map(str, steps))}). "
            f"Worst error: latency {_pct(ev.worst()[0], 1)}, bytes {_pct(ev.worst()[1], 3)}.", "",
            md_table(cm.eval_rows(ev)), ""]


def md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    return markdown_table(rows, columns or list(rows[0])) if rows else "(none)"


def _pct(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}%}"


def _rate_label(r: float) -> str:
    return "unshaped" if math.isinf(r) else f"{r:g}"


def plot(folder: Path, points: list[cm.Point], ev: cm.Evaluation, files: list[Path]) -> list[Path]:
    """The sweep's plots, each titled with the model, card and commit: latency against link rate
    (ticked at the grid's rates; a colour and marker per mode, a line style per prompt length,
    measured as markers, the cost model as lines), bytes per output token against prompt length,
    the time breakdown, and GPU utilization."""
    plt = pyplot()
    predicted = {id(r.point): r.prediction for r in ev.rows}
    caption = provenance(files)
    prompts = sorted({p.prompt_len for p in points})
    modes = [m for m in MODES if any(p.mode == m for p in points)]
    out = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, phase in zip(axes, ("prefill", "decode")):
        rates = {}
        for mode in modes:
            colour, marker = MODE_STYLE[mode]
            for k, n in enumerate(prompts):
                sel = sorted((p for p in points if p.phase == phase and p.mode == mode and p.prompt_len == n),
                             key=_rate)
                if not sel:
                    continue
                x = [_rate(p) for p in sel]
                rates |= {_grid_rate(p): _rate(p) for p in sel}
                ax.plot(x, [predicted[id(p)].latency_s for p in sel], LINE_STYLES[k % len(LINE_STYLES)],
                        color=colour, alpha=0.7)
                ax.plot(x, [p.measured.latency_s for p in sel], marker, color=colour,
                        markerfacecolor=colour if k == 0 else "white")
        ax.set(xscale="log", yscale="log", xlabel="link rate (Gbit/s; unshaped at its iperf3 rate)",
               ylabel="latency per round (s)", title=phase)
        grid_rates = sorted(rates)
        ticks_at(ax, [rates[r] for r in grid_rates], [_rate_label(r) for r in grid_rates])
    fig.suptitle(f"Latency: measured (markers), cost model (lines). {caption}", fontsize=10)
    style_legend(fig, modes, [f"{n}-token prompt" for n in prompts], ncol=6)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out.append(_save(fig, folder / "latency_vs_link.png", tight=False))

    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    grid_rates = sorted({_grid_rate(p) for p in points})
    remote = [m for m in modes if MODES[m].remote]
    for mode in remote:
        colour, marker = MODE_STYLE[mode]
        for k, r in enumerate(grid_rates):
            sel = sorted((p for p in points if p.phase == "decode" and p.mode == mode and _grid_rate(p) == r),
                         key=lambda p: p.prompt_len)
            if sel:
                ax.plot([p.prompt_len for p in sel], [p.measured.bytes / (p.steps + 1) for p in sel],
                        LINE_STYLES[k % len(LINE_STYLES)], marker=marker, color=colour)
    ax.set(yscale="log", xlabel="prompt length (tokens)", ylabel="link bytes per output token",
           title=f"Decode: bytes per output token\n{caption}")
    ax.title.set_fontsize(10)
    ax.set_xticks(prompts, [str(n) for n in prompts])
    style_legend(fig, remote, [_rate_label(r) + ("" if math.isinf(r) else " Gbit/s") for r in grid_rates], ncol=3)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    out.append(_save(fig, folder / "bytes_per_token_vs_context.png", tight=False))

    labelled = [(f"{f.stem} {i.phase}-{i.mode}", i) for f in files for i in load_infos(f)[0]]
    infos = [i for _, i in labelled]
    labels = [name for name, _ in labelled]
    fig, ax = plt.subplots(figsize=(max(8, len(infos) * 0.25), 5))
    bottom = [0.0] * len(infos)
    for part in TIME_PARTS:
        v = [(i.summary.time.get(part) or 0.0) / i.summary.latency_s.mean for i in infos]
        ax.bar(range(len(infos)), v, bottom=bottom, label=part.removesuffix("_s"))
        bottom = [b + x for b, x in zip(bottom, v)]
    ax.set_xticks(range(len(infos)), labels, rotation=90, fontsize=5)
    ax.set(ylabel="share of the round", title=f"Measured time breakdown per cell and point\n{caption}")
    ax.legend(fontsize=LEGEND_PT - 1, ncol=2)
    out.append(_save(fig, folder / "time_breakdown.png"))

    sm = {mode: [v for v in (i.summary.sm_pct[0] for i in infos if i.mode == mode) if v is not None]
          for mode in MODES}
    if any(sm.values()):  # no GPU (a CPU sweep): no utilization to draw
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for k, (mode, values) in enumerate(sm.items()):
            if values:
                ax.bar(k, sum(values) / len(values), color=MODE_STYLE[mode][0], label=f"{mode} ({len(values)} cells)")
        ax.set(ylabel="dmon SM % (mean over cells)", title=f"GPU utilization per mode\n{caption}")
        ax.title.set_fontsize(10)
        ax.legend(fontsize=LEGEND_PT)
        out.append(_save(fig, folder / "utilization.png"))
    return out


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=150)
    pyplot().close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.predict.sweepreport", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="the sweep's --out folder")
    p.add_argument("--predict", type=Path, action="append", default=[], metavar="RUN.json",
                   help="a run outside the sweep (e.g. all 50 decode steps) for the model fitted on the "
                        "whole sweep to predict, cell by cell (repeatable)")
    p.add_argument("--repeat-of", type=Path, metavar="FOLDER",
                   help="another sweep of the same grid: each cell's difference from its measure there")
    args = p.parse_args(argv)
    return report_written("sweepreport", lambda: write(args.folder, args.predict, args.repeat_of))


if __name__ == "__main__":
    sys.exit(main())
