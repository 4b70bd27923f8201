"""Strip run-time noise from a notebook, keeping its outputs and execution counts.

    python tools/clean_notebook.py assignment5.ipynb [--check]

Removes notebook- and cell-level `papermill` metadata, `execution` timing and `ExecuteTime`,
saved widget state (`widgets`), the `collapsed`/`scrolled` UI state, and widget-view outputs
(the mime bundle entry; an output left with nothing else is dropped). Keeps the render's record
(`a5_render`, tools/render.py) and the metadata that folds support cells (`cellView`, `jupyter`:
tools/check_notebook.py requires them). Idempotent; writes with nbformat (indent 1, as Jupyter does).
`--check` changes nothing and exits 1 if it would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOK_KEYS = ("papermill", "widgets")
CELL_KEYS = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


def clean(nb) -> list[str]:
    """Clean the notebook in place; return what was removed (empty: already clean)."""
    removed = [f"notebook metadata `{key}`" for key in NOTEBOOK_KEYS if nb.metadata.pop(key, None) is not None]
    for i, cell in enumerate(nb.cells):
        removed += [f"cell {i} metadata `{key}`" for key in CELL_KEYS if cell.metadata.pop(key, None) is not None]
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            data = output.get("data")
            if data is not None and any(mime in data for mime in WIDGET_MIMES):
                for mime in WIDGET_MIMES:
                    data.pop(mime, None)
                removed.append(f"cell {i} widget output")
                if not data:
                    continue
            kept.append(output)
        cell.outputs = kept
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the notebook is not clean; write nothing")
    args = parser.parse_args(argv)
    before = args.notebook.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    removed = clean(nb)
    after = nbformat.writes(nb)
    if not after.endswith("\n"):
        after += "\n"
    if after == before:
        print(f"{args.notebook}: clean")
        return 0
    what = ", ".join(removed) or "formatting (not nbformat's indent-1 JSON)"
    if args.check:
        print(f"{args.notebook}: not clean: {what} (run tools/clean_notebook.py {args.notebook})")
        return 1
    args.notebook.write_text(after, encoding="utf-8")
    print(f"{args.notebook}: removed {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
