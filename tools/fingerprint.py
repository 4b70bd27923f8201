"""Provenance fingerprint of a notebook's code cells.

The notebook's last code cell computes the same hash from IPython's input history
(`In[1:-1]`: every code cell as it was actually executed, except that last cell), so a
committed notebook whose code was edited after its run no longer matches its printed line.
"""

from __future__ import annotations

import hashlib
import re

SEPARATOR = "\n\x1e\n"  # ASCII record separator on a line of its own: cannot occur in cell sources
LINE_RE = re.compile(r"Provenance fingerprint: sha256:([0-9a-f]{64}) over (\d+) executed code cells")


def notebook_fingerprint(code_sources: list[str]) -> str:
    """sha256 hex of the code-cell sources, each stripped, joined by SEPARATOR."""
    joined = SEPARATOR.join(source.strip() for source in code_sources)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def fingerprint_line(code_sources: list[str]) -> str:
    """The exact line the notebook's last cell prints."""
    return f"Provenance fingerprint: sha256:{notebook_fingerprint(code_sources)} over {len(code_sources)} executed code cells"
