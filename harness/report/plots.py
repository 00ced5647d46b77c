"""The table's bytes and latency as bar charts (PNG, log axes)."""
from __future__ import annotations

from pathlib import Path

from harness.report.units import human_bytes


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    labels = [f"{r['Phase']}\n{r['Mode']}" for r in rows]
    for key, title, ylabel, fmt in (("link_bytes", "Network bytes per round", "bytes (log)", human_bytes),
                                    ("latency_s", "Latency per round", "seconds (log)", lambda v: f"{v:.3g} s")):
        fig, ax = plt.subplots(figsize=(8, 4))
        means = [r[f"{key}_mean"] or 0 for r in rows]
        stds = [r[f"{key}_std"] or 0 for r in rows]
        # a log axis has no 0: local's 0 bytes sit on the floor, labelled with their true value
        floor = 1.0 if key == "link_bytes" else min((m for m in means if m > 0), default=1e-3) / 3
        bars = ax.bar(labels, [max(m, floor) for m in means], yerr=stds, capsize=3,
                      color=["#888" if "local" in l else "#c44" if "naive" in l else "#48c" for l in labels])
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        for bar, m in zip(bars, means):
            ax.annotate(fmt(m), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
