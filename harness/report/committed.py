"""Results that a later commit removed from results/, read where git keeps them.

`COMMIT:PATH` (git's own revision:path syntax, e.g. 170332f:results/cpu/sweep-gpt2-rtt-v6) names a
file or a folder as it was committed at COMMIT. results/ holds only current runs; a report that
compares with a replaced set (a sweep's --repeat-of, an extrapolation's --check-fit) names it so,
and its command keeps regenerating the same page after the set is gone. results/history.toml names
the commit that removed each set.
"""
from __future__ import annotations

import io
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REF = re.compile(r"^([0-9a-f]{7,40}):(.+)$")  # COMMIT:PATH, PATH relative to the repository's root


def local(path: Path | str) -> Path:
    """path's files on this disk: a plain path as it is; COMMIT:PATH extracted from git, once per
    commit and path, into a folder under the system's temporary directory."""
    m = REF.match(Path(path).as_posix())
    if not m:
        return Path(path)
    commit, inside = m.groups()
    dest = Path(tempfile.gettempdir()) / "semantic-gap-committed" / commit
    if not (dest / inside).exists():
        tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "--", inside],
                             capture_output=True)
        if tar.returncode != 0:
            raise ValueError(f"{path}: git has no {inside} at {commit} (in a shallow clone, fetch the "
                             "history first: git fetch --unshallow)")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            archive.extractall(dest, filter="data")
    return dest / inside
