"""Plots a paper can use: the run's bytes and latency as bar charts, and the style every plot of
the suite shares (one colour and marker per mode, one line style per series within it, titles
naming the model, the card and the commit, legends readable at a column's width)."""
from __future__ import annotations

import json
from pathlib import Path

from harness.report.units import human_bytes

# a mode keeps its colour and marker in every plot; a second series of one mode (another prompt
# length, another link) its line style, so that series never hide one another where they coincide
MODE_STYLE = {"local": ("#555555", "o"), "naive": ("#c0392b", "s"), "sys_simulated": ("#2e6fbf", "^")}
LINE_STYLES = ("-", "--", ":", "-.")
LEGEND_PT = 8


def provenance(json_paths) -> str:
    """'model (dtype) on CARD, commit abc1234' from runs' JSON files (commits joined where they differ)."""
    return provenance_of(json.loads(Path(path).read_text()) for path in json_paths)


def provenance_of(runs) -> str:
    """provenance() of runs' JSON already read."""
    seen = {}
    for data in runs:
        env = data["machine_info"]["semantic_gap"]
        card = (env.get("gpu") or {}).get("name") or "CPU"
        seen.setdefault((env["model"], env["dtype"], card), set()).add(data["commit_info"]["id"][:7])
    return "; ".join(f"{m} ({d}) on {c}, commit {', '.join(sorted(ids))}" for (m, d, c), ids in seen.items())


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(rows: list[dict], out_dir: Path, caption: str = "") -> list[Path]:
    """The table's bytes and latency per cell, log axes; caption: the run's provenance()."""
    plt = pyplot()
    paths = []
    labels = [f"{r['Phase']}\n{r['Mode']}" for r in rows]
    colours = [MODE_STYLE.get(r["Mode"], ("#888888", "o"))[0] for r in rows]
    for key, title, ylabel, fmt in (("link_bytes", "Network bytes per round", "bytes (log)", human_bytes),
                                    ("latency_s", "Latency per round", "seconds (log)", lambda v: f"{v:.3g} s")):
        fig, ax = plt.subplots(figsize=(8, 4))
        means = [r[f"{key}_mean"] or 0 for r in rows]
        stds = [r[f"{key}_std"] or 0 for r in rows]
        # a log axis has no 0: local's 0 bytes sit on the floor, labelled with their true value
        floor = 1.0 if key == "link_bytes" else min((m for m in means if m > 0), default=1e-3) / 3
        bars = ax.bar(labels, [max(m, floor) for m in means], yerr=stds, capsize=3, color=colours)
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        for bar, m in zip(bars, means):
            ax.annotate(fmt(m), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=LEGEND_PT)
        ax.set_title(f"{title}\n{caption}" if caption else title, fontsize=10)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def ticks_at(ax, values: list[float], labels: list[str]) -> None:
    """A log x axis ticked at the measured values only: no minor labels to collide."""
    from matplotlib.ticker import NullFormatter, NullLocator
    ax.set_xticks(values, labels)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def style_legend(fig, modes: list[str], series: list[str], ncol: int = 5) -> None:
    """One legend below the axes: the modes by colour and marker, the series (each a label) by
    line style; ncol entries a row, so that it fits the figure's width."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=MODE_STYLE[m][0], marker=MODE_STYLE[m][1], linestyle="", label=m)
               for m in modes]
    handles += [Line2D([], [], color="black", linestyle=LINE_STYLES[i % len(LINE_STYLES)], label=s)
                for i, s in enumerate(series)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), ncol), fontsize=LEGEND_PT, frameon=False)
