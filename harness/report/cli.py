"""The report writers' command-line end: what they wrote, or their error as one line."""
from __future__ import annotations

import sys
from typing import Callable, Iterable


def report_written(prog: str, write: Callable[[], Iterable]) -> int:
    """Run write(), printing each file it wrote; an error (a missing or malformed JSON, a folder
    that is not there) is one line naming it, and exit 2."""
    try:
        for path in write():
            print(f"wrote {path}")
    except (OSError, ValueError, KeyError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
