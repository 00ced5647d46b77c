"""The README's generated blocks: each one's figures come from a committed run's JSON, never typed.

    python -m harness.report.readme [README.md] [--check]

A block starts with a marker that names its JSON and ends with the end marker:

    <!-- table: results/h200/gpt2-100gbit/gpt2.json -->
    ...generated...
    <!-- end table -->

and is replaced by that run's six-row table, captioned with the model, the card and the commit.
tests/test_front_door.py fails where the README differs from what this writes.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

from harness.measure.results import load_infos
from harness.report.tables import markdown_table, table_rows

BLOCK = re.compile(r"(<!-- table: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def table_block(json_path: Path, shown: str) -> str:
    """A run's six-row table under a line saying what ran, where and at which commit; shown: the
    JSON's path as the README names it (its folder's table.md is linked relative to that)."""
    data = json.loads(json_path.read_text())
    env = data["machine_info"]["semantic_gap"]
    card = (env.get("gpu") or {}).get("name") or f"no GPU ({data['machine_info'].get('cpu', {}).get('brand_raw', 'CPU')})"
    infos, _, _ = load_infos(json_path)
    steps = f"prefill of {env['prompt_len']} tokens, decode = prefill + {env['steps']} steps"
    caption = (f"{env['model']} ({env['dtype']}, engine {env['engine']}), {card}, link {env['link']}; {steps}; commit "
               f"{data['commit_info']['id'][:7]}; `{shlex.join(env['command'])}` "
               f"([all of it]({Path(shown).parent.as_posix()}/table.md)):")
    return f"{caption}\n\n{markdown_table(table_rows(infos))}\n"


def render(text: str, root: Path) -> str:
    """text with every block regenerated from its JSON (paths relative to root)."""
    return BLOCK.sub(lambda m: m.group(1) + table_block(root / m.group("path"), m.group("path")) + m.group(4), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.report.readme", description=__doc__.splitlines()[0])
    p.add_argument("readme", type=Path, nargs="?", default=Path("README.md"))
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README differs")
    args = p.parse_args(argv)
    try:
        text = args.readme.read_text()
        new = render(text, args.readme.resolve().parent)
    except (OSError, ValueError, KeyError) as e:
        print(f"readme: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.readme}: {'up to date' if new == text else 'differs: run python -m harness.report.readme'}")
        return 0 if new == text else 1
    args.readme.write_text(new)
    print(f"wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
