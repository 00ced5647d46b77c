"""The serving benchmark's report: a Markdown table of every mode x clients point, and two plots
against the number of clients, tokens/s and TPOT p99, a line per mode in the suite's style
(harness.report.plots: one colour and marker per mode, log x ticked at the measured N only,
titles naming the model, the card and the commit)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.report.plots import MODE_STYLE, pyplot, style_legend, ticks_at
from harness.report.tables import markdown_table
from harness.report.units import human_bytes
from harness.serve.metrics import Summary

COLUMNS = ["Mode", "Clients", "Tokens/s", "TTFT p50 (ms)", "TTFT p99 (ms)", "TPOT p50 (ms)", "TPOT p99 (ms)",
           "Bytes/token", "Goodput (req/s)", "Finished/unfinished"]


@dataclass(frozen=True)
class ServePoint:
    mode: str          # harness.compute.modes.MODES' name
    clients: int       # N
    summary: Summary


def _mode_rank(mode: str) -> tuple[int, str]:
    # the suite's mode order (MODE_STYLE lists local, naive, sys_simulated); others after
    modes = list(MODE_STYLE)
    return modes.index(mode) if mode in modes else len(modes), mode


def _order(p: ServePoint) -> tuple:
    return *_mode_rank(p.mode), p.clients


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e3:.2f}"


def table_rows(points: list[ServePoint]) -> list[dict]:
    """One row per point, by mode then N."""
    rows = []
    for p in sorted(points, key=_order):
        s = p.summary
        done = f"{s.finished}/{s.unfinished}" + (f" ({s.errors} failed)" if s.errors else "")
        rows.append({
            "Mode": p.mode, "Clients": p.clients,
            "Tokens/s": "n/a" if s.tokens_per_s is None else f"{s.tokens_per_s:,.1f}",
            "TTFT p50 (ms)": _ms(s.ttft_p50_s), "TTFT p99 (ms)": _ms(s.ttft_p99_s),
            "TPOT p50 (ms)": _ms(s.tpot_p50_s), "TPOT p99 (ms)": _ms(s.tpot_p99_s),
            "Bytes/token": human_bytes(s.link_bytes_per_token),
            "Goodput (req/s)": "n/a" if s.goodput_per_s is None else f"{s.goodput_per_s:.2f}",
            "Finished/unfinished": done,
        })
    return rows


def markdown(points: list[ServePoint]) -> str:
    return markdown_table(table_rows(points), COLUMNS)


def _in_ms(figure):
    return lambda s: None if figure(s) is None else figure(s) * 1e3


def plot(points: list[ServePoint], out_dir: Path, model: str, card: str, commit: str) -> list[Path]:
    """serve_tokens_per_s.png and serve_tpot_p99.png in out_dir: the figure against N, a line per
    mode; a point without the figure (no token, no finished request) is left out of its line."""
    plt = pyplot()
    caption = f"{model} on {card}, commit {commit[:7]}"
    modes = sorted({p.mode for p in points}, key=_mode_rank)
    ns = sorted({p.clients for p in points})
    out = []
    for name, title, ylabel, figure in (
            ("serve_tokens_per_s", "Output tokens/s, summed over clients", "tokens/s", lambda s: s.tokens_per_s),
            ("serve_tpot_p99", "TPOT p99", "ms per output token", _in_ms(lambda s: s.tpot_p99_s))):
        fig, ax = plt.subplots(figsize=(6.5, 4.8))
        for mode in modes:
            colour, marker = MODE_STYLE.get(mode, ("#888888", "o"))
            line = sorted((p.clients, figure(p.summary)) for p in points if p.mode == mode)
            line = [(n, v) for n, v in line if v is not None]
            ax.plot([n for n, _ in line], [v for _, v in line], "-", marker=marker, color=colour)
        ax.set(xscale="log", xlabel="clients (N)", ylabel=ylabel, title=f"{title}, against N\n{caption}")
        ax.set_ylim(bottom=0)
        ax.title.set_fontsize(10)
        ticks_at(ax, ns, [str(n) for n in ns])
        style_legend(fig, [m for m in modes if m in MODE_STYLE], [], ncol=3)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = Path(out_dir) / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        out.append(path)
    return out


def points_of(data: dict) -> list[ServePoint]:
    """The clients cases of a pytest-benchmark JSON (benchmarks/test_clients.py's extra_info)."""
    return [ServePoint(b["extra_info"]["mode"], b["extra_info"]["clients"], Summary.from_dict(b["extra_info"]["summary"]))
            for b in data["benchmarks"] if b["name"].startswith("test_clients[")]


def write(json_path: Path, out_dir: Path | None = None) -> list[Path]:
    """clients.md (the table) and the two plots, from a clients run's JSON, beside it by default."""
    import json
    data = json.loads(Path(json_path).read_text())
    points = points_of(data)
    if not points:
        raise ValueError(f"{json_path}: no clients case in it (run pytest benchmarks -k clients --benchmark-json=...)")
    env = data["machine_info"].get("semantic_gap") or {}
    out_dir = Path(out_dir or Path(json_path).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "clients.md"
    table.write_text(f"Generated by `python -m harness.serve.report {Path(json_path).as_posix()}` from the run's "
                     f"JSON (`{' '.join(env.get('command', ['pytest', '...']))}`); do not edit by hand.\n\n"
                     + markdown(points) + "\n")
    card = (env.get("gpu") or {}).get("name") or "CPU"
    model = f"{env.get('model', '?')} ({env.get('dtype', '?')})"
    return [table, *plot(points, out_dir, model, card, data["commit_info"]["id"])]


def main(argv=None) -> int:
    import argparse
    from harness.report.cli import report_written
    p = argparse.ArgumentParser(prog="python -m harness.serve.report", description=write.__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="a clients run's --benchmark-json")
    p.add_argument("--out", type=Path, help="folder for clients.md and the plots [beside the JSON]")
    args = p.parse_args(argv)
    return report_written("harness.serve.report", lambda: write(args.json, args.out))


if __name__ == "__main__":
    import sys
    sys.exit(main())
