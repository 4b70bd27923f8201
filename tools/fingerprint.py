"""Provenance fingerprint of a notebook's code cells: tools/render.py records it in the notebook's
metadata (`a5_render`), tools/check_notebook.py recomputes it from the saved code cells."""

from __future__ import annotations

import hashlib

KEY = "a5_render"
SEPARATOR = "\n\x1e\n"  # ASCII record separator on a line of its own: cannot occur in cell sources


def fingerprint(nb) -> str:
    """`sha256:<hex>` of the non-blank code cells' sources, each stripped, joined by SEPARATOR."""
    sources = [c.source.strip() for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    return "sha256:" + hashlib.sha256(SEPARATOR.join(sources).encode("utf-8")).hexdigest()
