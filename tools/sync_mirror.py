"""Regenerate the py:percent mirror (assignment5.py) from the notebook, the source of truth.

    python tools/sync_mirror.py [--check] [--notebook assignment5.ipynb] [--mirror assignment5.py]

Uses jupytext with the notebook's own jupytext metadata (formats, cell and notebook metadata
filters: cell tags are kept). `--check` writes nothing and exits 1 if the mirror is out of date
(the comparison ignores a `jupytext_version` line).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

import jupytext

REPO = Path(__file__).resolve().parents[1]
VERSION_LINE = re.compile(r"^#\s+jupytext_version:.*$", re.MULTILINE)


def mirror_text(notebook: Path) -> str:
    nb = jupytext.read(notebook)
    return jupytext.writes(nb, fmt="py:percent")


def comparable(text: str) -> str:
    return VERSION_LINE.sub("", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the mirror is out of date; write nothing")
    parser.add_argument("--notebook", type=Path, default=REPO / "assignment5.ipynb")
    parser.add_argument("--mirror", type=Path, default=None, help="default: the notebook's name with .py")
    args = parser.parse_args(argv)
    mirror = args.mirror or args.notebook.with_suffix(".py")

    wanted = mirror_text(args.notebook)
    current = mirror.read_text(encoding="utf-8") if mirror.exists() else ""
    if comparable(current) == comparable(wanted):
        print(f"{mirror.name}: up to date with {args.notebook.name}")
        return 0
    if args.check:
        diff = difflib.unified_diff(
            current.splitlines(), wanted.splitlines(), str(mirror), f"{mirror} (from {args.notebook.name})", lineterm=""
        )
        print(f"{mirror.name}: out of date with {args.notebook.name} (run tools/sync_mirror.py):")
        print("\n".join(list(diff)[:60]))
        return 1
    mirror.write_text(wanted, encoding="utf-8")
    print(f"{mirror.name}: regenerated from {args.notebook.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
