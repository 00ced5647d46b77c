"""The plan's final table from pytest-benchmark results, as Markdown, CSV and PNG plots.

    python -m harness.report out.json [--out results/]

Each cell's figures come from its extra_info (per measured round), so the table the suite prints
at the end of a run and the one made later from the JSON are the same computation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.measure.results import load_infos
from harness.report.plots import plot, provenance
from harness.report.tables import full_report, table_rows


def write_all(infos: list, out_dir: Path, controls: dict | None = None, env: dict | None = None,
              caption: str = "") -> list[Path]:
    import pandas as pd
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "table.md"
    md.write_text(full_report(infos, controls, env) + "\n")
    csv = out_dir / "table.csv"
    rows = table_rows(infos)
    pd.DataFrame(rows).to_csv(csv, index=False)
    return [md, csv, *plot(rows, out_dir, caption)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json=...)")
    p.add_argument("--out", type=Path, help="folder for table.md, table.csv, *.png [beside the JSON]")
    args = p.parse_args(argv)
    try:
        infos, controls, env = load_infos(args.json)
    except (OSError, ValueError, KeyError) as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(full_report(infos, controls, env))
    for path in write_all(infos, args.out or args.json.parent, controls, env, provenance([args.json])):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
